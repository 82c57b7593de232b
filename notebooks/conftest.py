"""Stored figures stay true to the code that makes them.

nbval compares a checked cell's output exactly, so the cells whose figures come from a live run
(latencies, rates: they vary a little from run to run) are not compared, and their stored
outputs could go on showing what an older engine measured. A cell tagged ``figures`` is held to
what it prints now instead: the same text with every number within the cell's tolerance of the
stored one. The tolerance is the cell's ``figures`` metadata, ``{"rel": 0.1, "abs": 0.5}``: a
number passes when it is within ``abs`` or within ``rel`` of the stored value, whichever is the
wider. Numbers are compared in order; the words around them must match exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Generator
from typing import Any

import pytest

NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def text_of(outputs: list[Any]) -> str:
    """What a cell printed and returned, as text."""
    parts = []
    for o in outputs:
        if o.get("output_type") == "stream":
            parts.append("".join(o.get("text", "")))
        elif "data" in o and "text/plain" in o["data"]:
            parts.append("".join(o["data"]["text/plain"]))
    return "".join(parts)


def numbers(text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in NUMBER.findall(text)]


def differences(stored: str, now: str, rel: float, abs_: float) -> list[str]:
    """Why ``now`` does not match ``stored`` within the tolerance (empty: it does)."""
    if NUMBER.sub("#", stored).split() != NUMBER.sub("#", now).split():
        return [f"the text differs:\n--- stored\n{stored}\n--- now\n{now}"]
    out = []
    for a, b in zip(numbers(stored), numbers(now), strict=True):
        if not math.isclose(a, b, rel_tol=rel, abs_tol=abs_):
            out.append(f"stored {a:g}, now {b:g} (tolerance {rel:.0%} or {abs_:g})")
    return out


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    result = yield
    cell = getattr(item, "cell", None)
    if cell is not None and "figures" in cell.metadata.get("tags", []):
        tolerance = cell.metadata.get("figures", {})
        stored = text_of(cell.outputs)
        now = text_of(getattr(item, "test_outputs", None) or [])
        why = differences(stored, now, tolerance.get("rel", 0.0), tolerance.get("abs", 0.0))
        if why:
            pytest.fail(
                "stored figures no longer match what the cell prints (re-execute the notebook, "
                "or explain the change):\n" + "\n".join(why),
                pytrace=False,
            )
    return result
