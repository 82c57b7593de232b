"""HdrHistogram interval logs written by any tool (jHiccup, wrk2, YCSB, Cassandra, services
instrumented with HdrHistogram), read with the analysis surface of a run: the interval frame,
``histogram(task=..., start=..., end=...)``, spectra, ``lp.compare`` against another log or a
run. Every encoding (V0, V1, V2, compressed or not) is read, each histogram in its writer's own
layout; ``#[StartTime:`` and ``#[BaseTime:`` are honoured; counts and percentiles are Java
HdrHistogram's on the same file.
"""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path

import polars as pl

from loadpilot import _engine
from loadpilot.errors import LoadPilotError
from loadpilot.plan import Plan
from loadpilot.running.runs import RunResult
from loadpilot.summary import Percentiles, Summary

#: The task name of histograms a log gives no tag.
UNTAGGED = "untagged"


class LoadedLog(RunResult):
    """An interval log read for analysis. Its tags are its tasks (``untagged`` for
    histograms without one); ``elapsed_s`` is seconds after the log's start time; values are
    reported in milliseconds whatever ``unit`` the log recorded them in. A log holds latency
    only: no plan, no errors, no service time."""

    has_service = False

    def __init__(self, path: str | Path, unit: str = "us") -> None:
        self.path = Path(path)
        self.unit = unit
        start, lines = _engine.read_log(self.path, unit)
        #: The log's start time (``#[StartTime:``), seconds since the epoch (0 if it has none).
        self.start_time = start
        self._intervals = [
            (tag or UNTAGGED, offset, absolute, length, h)
            for tag, offset, absolute, length, h in lines
        ]
        self._tasks = list(dict.fromkeys(t for t, *_ in self._intervals))
        self._metrics = self._frame()

    @property
    def plan(self) -> Plan:
        raise LoadPilotError(
            f"{self.path}: a foreign interval log has no plan (capacity planning and reports "
            "need a LoadPilot run)"
        )

    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    @property
    def metrics(self) -> pl.DataFrame:
        """One row per (interval, tag): when, how long, how many values, their percentiles."""
        return self._metrics

    @property
    def _rows(self) -> pl.DataFrame:
        return self._metrics

    def _frame(self) -> pl.DataFrame:
        rows = []
        for tag, offset, absolute, length, h in self._intervals:
            rows.append(
                {
                    "time": _dt.datetime.fromtimestamp(absolute, _dt.UTC),
                    "elapsed_s": offset,
                    "interval_s": length,
                    "task": tag,
                    "request": None,
                    "requests": h.count,
                    "errors": 0,
                    "p50_ms": h.percentile(50),
                    "p90_ms": h.percentile(90),
                    "p99_ms": h.percentile(99),
                    "p999_ms": h.percentile(99.9),
                    "max_ms": h.max,
                    "mean_ms": h.mean,
                }
            )
        schema: dict[str, pl.DataType] = {
            "time": pl.Datetime("us", "UTC"),
            "elapsed_s": pl.Float64(),
            "interval_s": pl.Float64(),
            "task": pl.String(),
            "request": pl.String(),
            "requests": pl.UInt64(),
            "errors": pl.UInt64(),
            **{c: pl.Float64() for c in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")},
            "mean_ms": pl.Float64(),
        }
        return pl.DataFrame(rows, schema=schema, orient="row")

    def _logged(
        self, service: bool, requests: bool = False
    ) -> list[tuple[str | None, float, _engine.Histogram]]:
        if requests:
            return []  # an interval log is one log: its tags are its tasks
        if service:
            raise LoadPilotError(f"{self.path}: an interval log holds one latency, no service time")
        return [(tag, offset, h) for tag, offset, _absolute, _length, h in self._intervals]

    def summary(self) -> Summary:
        """Counts and percentiles per tag and overall (``model`` is ``log``)."""
        span = self._span()

        def stats(task: str | None) -> dict[str, object]:
            h = self.histogram(task)
            return {
                "requests": h.count,
                "errors": 0,
                "errors_by_kind": {},
                "error_rate": 0.0,
                "missed": 0,
                "bytes_in": 0,
                "achieved_rps": h.count / span if span else 0.0,
                "latency_ms": _percentiles(h),
                "service_ms": Percentiles(),
            }

        return Summary.model_validate(
            {
                "name": self.path.name,
                "started_at": self.start_time,
                "duration_s": span,
                "planned_duration_s": span,
                "ended": "completed",
                "model": "log",
                "target_requests": None,
                "overall": stats(None),
                "tasks": [{"name": t, "path": "log", **stats(t)} for t in self._tasks],
            }
        )

    def _span(self) -> float:
        if not self._intervals:
            return 0.0
        first = min(o for _, o, *_ in self._intervals)
        last = max(o + length for _, o, _, length, _ in self._intervals)
        return max(0.0, last - first)

    def __repr__(self) -> str:
        return f"<LoadedLog {str(self.path)!r}: {len(self._intervals)} intervals, {self.tasks}>"

    def _repr_html_(self) -> str:
        s = self.summary()
        return (
            f"<div><strong>{html.escape(self.path.name)}</strong> · interval log · "
            f"{len(self._intervals)} intervals over {s.duration_s:,.1f} s · values in "
            f"{html.escape(self.unit)}</div>" + s.html()
        )


def _percentiles(h: _engine.Histogram) -> Percentiles:
    return Percentiles(
        p50=h.percentile(50),
        p90=h.percentile(90),
        p95=h.percentile(95),
        p99=h.percentile(99),
        p999=h.percentile(99.9),
        max=h.max,
        mean=h.mean,
        min=h.min,
    )


def load_hlog(path: str | Path, unit: str = "us") -> LoadedLog:
    """Reads an HdrHistogram interval log written by any tool, whose values are in ``unit``
    (``ns``, ``us`` or ``ms``; jHiccup and most JVM tools write nanoseconds, wrk2 and
    LoadPilot microseconds), for analysis as a run: ``metrics``, ``histogram(...)``,
    ``lp.spectrum``, ``lp.compare``, ``export``."""
    if unit not in ("ns", "us", "ms"):
        raise ValueError(f"unit is 'ns', 'us' or 'ms', not {unit!r}")
    return LoadedLog(path, unit)
