"""Thresholds: pass/fail criteria on a run's whole-run figures, for CI gates.

Written as ``{"p99": "< 25ms", "error_rate": "< 0.1%", "rps": "> 900"}``, per task with the
task's name in front (``"browse.p99": "< 20ms"``), or on the command line as ``p99<25ms``.
Latency figures come from the merged histograms, so a threshold on p99 is on the exact p99.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from loadpilot.errors import PlanError
from loadpilot.summary import Stats, Summary

LATENCY = ("p50", "p90", "p95", "p99", "p999", "max", "mean")
METRICS = (*LATENCY, "error_rate", "rps")

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_EXPR = re.compile(r"^\s*(<=|>=|<|>)\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|%)?\s*$")
_UNIT_MS = {None: 1.0, "us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Threshold:
    """One criterion: ``metric op value`` for the whole run (``task is None``) or one task.
    Latency values are in milliseconds, ``error_rate`` is a fraction, ``rps`` per second."""

    metric: str
    op: str
    value: float
    task: str | None = None
    text: str = ""

    @property
    def name(self) -> str:
        return f"{self.task}.{self.metric}" if self.task else self.metric


@dataclass(frozen=True)
class Verdict:
    threshold: Threshold
    actual: float | None
    passed: bool

    def __str__(self) -> str:
        mark = "pass" if self.passed else "FAIL"
        actual = "no data" if self.actual is None else _show(self.threshold.metric, self.actual)
        return f"{mark}  {self.threshold.name} {self.threshold.text.strip()}  (actual {actual})"


def _show(metric: str, v: float) -> str:
    if metric == "error_rate":
        return f"{v * 100:.3g}%"
    if metric == "rps":
        return f"{v:.1f}/s"
    return f"{v:.3f} ms"


def parse(name: str, expr: str, tasks: list[str] | None = None) -> Threshold:
    """One threshold from its name (``p99`` or ``browse.p99``) and expression (``< 25ms``)."""
    task, _, metric = name.rpartition(".")
    if metric not in METRICS:
        raise PlanError(
            f"unknown threshold metric {metric!r} in {name!r}; known: {', '.join(METRICS)}"
        )
    if task and tasks is not None and task not in tasks:
        raise PlanError(f"threshold {name!r} names no task; tasks: {', '.join(tasks)}")
    m = _EXPR.match(expr)
    if not m:
        raise PlanError(f"invalid threshold {name}: {expr!r} (write it like '< 25ms' or '< 0.1%')")
    op, number, unit = m.group(1), float(m.group(2)), m.group(3)
    if metric in LATENCY:
        if unit == "%":
            raise PlanError(f"invalid threshold {name}: {expr!r} (a latency takes us, ms or s)")
        value = number * _UNIT_MS[unit]
    elif metric == "error_rate":
        if unit not in (None, "%"):
            raise PlanError(
                f"invalid threshold {name}: {expr!r} (an error rate takes % or a fraction)"
            )
        value = number / 100 if unit == "%" else number
    else:
        if unit is not None:
            raise PlanError(f"invalid threshold {name}: {expr!r} (a rate is a plain number)")
        value = number
    # One spelling whichever way it was written ("<25ms", "< 25ms"): "< 25ms".
    text = f"{op} {m.group(2)}{unit or ''}"
    return Threshold(metric=metric, op=op, value=value, task=task or None, text=text)


def parse_all(spec: Mapping[str, str], tasks: list[str] | None = None) -> list[Threshold]:
    return [parse(name, expr, tasks) for name, expr in spec.items()]


def parse_cli(text: str, tasks: list[str] | None = None) -> Threshold:
    """``p99<25ms`` or ``browse.p99 <= 20ms``, as given to ``--threshold``."""
    m = re.match(r"^\s*([A-Za-z0-9_.:/-]+)\s*((?:<=|>=|<|>).*)$", text)
    if not m:
        raise PlanError(f"invalid --threshold {text!r} (write it like 'p99<25ms')")
    return parse(m.group(1), m.group(2), tasks)


def _actual(stats: Stats, metric: str) -> float | None:
    if metric == "error_rate":
        return stats.error_rate
    if metric == "rps":
        return stats.achieved_rps
    value: float | None = getattr(stats.latency_ms, metric)
    return value


def evaluate(summary: Summary, thresholds: list[Threshold]) -> list[Verdict]:
    """Each threshold against the run's figures. A latency threshold with no answered request
    to measure fails: a run that measured nothing has not shown it is fast."""
    out = []
    for t in thresholds:
        stats: Stats = summary.overall if t.task is None else summary.task(t.task)
        actual = _actual(stats, t.metric)
        passed = actual is not None and _OPS[t.op](actual, t.value)
        out.append(Verdict(t, actual, passed))
    return out
