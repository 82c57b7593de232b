"""Thresholds: pass/fail criteria on a run's whole-run figures, for CI gates.

Written as ``{"p99": "< 25ms", "error_rate": "< 0.1%", "rps": "> 900"}``, per task with the
task's name in front (``"browse.p99": "< 20ms"``), per request with the request's name in front
(``"item.p99": "< 20ms"``, ``"checkout.error_rate": "< 1%"``), or on the command line as
``p99<25ms``.
Latency figures come from the merged histograms, so a threshold on p99 is on the exact p99.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
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
    """One criterion: ``metric op value`` for the whole run, one task (``task``) or one
    request name (``request``). Latency values are in milliseconds, ``error_rate`` is a
    fraction, ``rps`` per second."""

    metric: str
    op: str
    value: float
    task: str | None = None
    text: str = ""
    request: str | None = None

    @property
    def name(self) -> str:
        scope = self.task or self.request
        return f"{scope}.{self.metric}" if scope else self.metric


@dataclass(frozen=True)
class Verdict:
    threshold: Threshold
    actual: float | None
    passed: bool

    @property
    def measured(self) -> str:
        """The measured value as the verdict shows it (``30.000 ms``, ``2.5%``, ``no data``)."""
        return "no data" if self.actual is None else _show(self.threshold.metric, self.actual)

    @property
    def detail(self) -> str:
        """The threshold and the measured value, without the verdict's word."""
        return f"{self.threshold.name} {self.threshold.text.strip()}  (actual {self.measured})"

    def __str__(self) -> str:
        return f"{'pass' if self.passed else 'FAIL'}  {self.detail}"


def _show(metric: str, v: float) -> str:
    if metric == "error_rate":
        return f"{v * 100:.3g}%"
    if metric == "rps":
        return f"{v:.1f}/s"
    return f"{v:.3f} ms"


def parse(
    name: str,
    expr: str,
    tasks: list[str] | None = None,
    requests: list[str] | None = None,
) -> Threshold:
    """One threshold from its name (``p99``, ``browse.p99`` for a task, ``item.p99`` for a
    request name) and expression (``< 25ms``). ``tasks``: the scenario's task names (what is
    not one is a request name); ``requests``: every request name it can send, when they are
    all known (no Python task), to refuse a name it never sends."""
    scope, _, metric = name.rpartition(".")
    if metric not in METRICS:
        raise PlanError(
            f"unknown threshold metric {metric!r} in {name!r}; known: {', '.join(METRICS)}"
        )
    task = request = None
    if scope and tasks is not None and scope in tasks:
        task = scope
    elif scope and tasks is not None:
        if requests is not None and scope not in requests:
            raise PlanError(
                f"threshold {name!r} names no task and no request; tasks: {', '.join(tasks)}; "
                f"requests: {', '.join(requests)}"
            )
        request = scope
    elif scope:
        task = scope
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
    return Threshold(metric=metric, op=op, value=value, task=task, text=text, request=request)


def parse_all(
    spec: Mapping[str, str], tasks: list[str] | None = None, requests: list[str] | None = None
) -> list[Threshold]:
    return [parse(name, expr, tasks, requests) for name, expr in spec.items()]


def parse_cli(
    text: str, tasks: list[str] | None = None, requests: list[str] | None = None
) -> Threshold:
    """``p99<25ms``, ``browse.p99 <= 20ms`` or ``GET /items/{{id}}.p99<20ms``, as given to
    ``--threshold``."""
    m = re.match(r"^\s*([^<>]+?)\s*((?:<=|>=|<|>).*)$", text)
    if not m:
        raise PlanError(f"invalid --threshold {text!r} (write it like 'p99<25ms')")
    return parse(m.group(1), m.group(2), tasks, requests)


def _actual(stats: Stats, metric: str) -> float | None:
    if metric == "error_rate":
        return stats.error_rate
    if metric == "rps":
        return stats.achieved_rps
    value: float | None = getattr(stats.latency_ms, metric)
    return value


def _together(summary: Summary, name: str, metric: str) -> Stats | None:
    """The figures of a request name that several tasks send: counts and rates add up;
    latency percentiles cannot be added from a summary, so a latency threshold on such a name
    reads as no data (give the requests names of their own)."""
    found = [r for r in summary.requests if r.name == name]
    if metric in LATENCY:
        return None
    requests = sum(r.requests for r in found)
    errors = sum(r.errors for r in found)
    return found[0].model_copy(
        update={
            "requests": requests,
            "errors": errors,
            "error_rate": errors / requests if requests else 0.0,
            "achieved_rps": sum(r.achieved_rps for r in found),
        }
    )


def evaluate(summary: Summary, thresholds: list[Threshold]) -> list[Verdict]:
    """Each threshold against the run's figures. A latency threshold with no answered request
    to measure fails: a run that measured nothing has not shown it is fast."""
    out = []
    for t in thresholds:
        stats: Stats | None = summary.overall
        scope = t.task or t.request
        if scope is not None and any(task.name == scope for task in summary.tasks):
            stats = summary.task(scope)
        elif scope is not None:
            # A request name never sent has shown nothing: no data, a failed threshold.
            stats = next((r for r in summary.requests if r.name == scope), None)
            if sum(r.name == scope for r in summary.requests) > 1:
                stats = _together(summary, scope, t.metric)
        actual = None if stats is None else _actual(stats, t.metric)
        passed = actual is not None and _OPS[t.op](actual, t.value)
        out.append(Verdict(t, actual, passed))
    return out


def unjudged(stats: Stats, verdicts: Sequence[Verdict], ended: str) -> list[str]:
    """Why ``stats`` (the run's or a task's) fail whatever the thresholds say: requests that
    failed or never came back when no error-rate threshold judged them, and due requests
    never sent (unless a feeder ran out: ``ended == "exhausted"``). Empty: nothing failed."""
    why = []
    judged = any(v.threshold.metric == "error_rate" for v in verdicts)
    if (stats.errors or stats.cancelled) and not judged:
        kinds = [f"{k} {n}" for k, n in stats.errors_by_kind.items() if n]
        if stats.cancelled:
            kinds.append(f"cancelled {stats.cancelled}")
        why.append("requests failed: " + ", ".join(kinds))
    if stats.unsent and ended != "exhausted":
        why.append(
            f"{stats.unsent:,} requests were due and never sent: the generator fell behind "
            "(more connections, or a lower rate)"
        )
    return why
