"""Locust's ``--csv PREFIX`` files from a LoadPilot run: ``PREFIX_stats.csv``,
``PREFIX_stats_history.csv``, ``PREFIX_failures.csv`` and ``PREFIX_exceptions.csv``, with
Locust's columns, so what reads Locust's CSV keeps working.

Response times are the service time (from the instant a request was sent), Locust's meaning;
the percentiles come from the run's exact histograms, unrounded. A request that got no answer
counts in ``Request Count`` and ``Failure Count`` as under Locust; an exception in a task is in
the exceptions file, not a request failure.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadpilot import _engine
from loadpilot.running.runs import RunResult
from loadpilot.summary import Summary

#: Locust's percentile columns.
PERCENTILES = (50, 66, 75, 80, 90, 95, 98, 99, 99.9, 99.99, 100)
_METHOD = re.compile(r"^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS|TRACE|CONNECT) (.+)$")


def _pct_name(p: float) -> str:
    return f"{p:g}%"


def _split(name: str, methods: Mapping[str, str]) -> tuple[str, str]:
    """Locust's Type and Name columns of a LoadPilot request name."""
    m = _METHOD.match(name)
    if m is not None:
        return m.group(1), m.group(2)
    return methods.get(name, ""), name


def _counts(stats: Any) -> tuple[int, int]:
    """(requests, failures: the errors of requests, not a task's exceptions)."""
    failures = sum(n for k, n in stats.errors_by_kind.items() if k != "exception")
    return stats.requests, failures


def _figures(h: _engine.Histogram) -> list[str]:
    if h.count == 0:
        return ["0"] * 4 + ["N/A"] * len(PERCENTILES)
    p50 = h.percentile(50)
    head = [p50, h.mean, h.min, h.max]
    return [f"{v:.3f}" if v is not None else "0" for v in head] + [
        f"{v:.3f}" if (v := h.percentile(p)) is not None else "N/A" for p in PERCENTILES
    ]


@dataclass
class Row:
    """Locust's figures of one request name (or of all: ``Aggregated``)."""

    kind: str
    name: str
    requests: int
    failures: int
    size: int
    latency: _engine.Histogram
    """Service time, Locust's meaning."""
    corrected_p99: float | None
    """LoadPilot's p99 measured from the instant each request was due."""


def rows(run: RunResult, summary: Summary, methods: Mapping[str, str]) -> list[Row]:
    """A row per request name, in the order they were first seen, then ``Aggregated``."""
    by_name: dict[str, list[Any]] = {}
    for r in summary.requests:
        by_name.setdefault(r.name, []).append(r)
    out = []
    for name, entries in by_name.items():
        n = failed = size = 0
        for e in entries:
            cn, cf = _counts(e)
            n, failed, size = n + cn, failed + cf, size + e.bytes_in
        kind, shown = _split(name, methods)
        out.append(
            Row(kind, shown, n, failed, size, run.histogram(request=name, service=True),
                run.histogram(request=name).percentile(99))
        )  # fmt: skip
    out.append(
        Row("", "Aggregated", sum(r.requests for r in out), sum(r.failures for r in out),
            sum(r.size for r in out), run.histogram(service=True),
            summary.overall.latency_ms.p99)
    )  # fmt: skip
    return out


def table(found: list[Row], seconds: float) -> str:
    """Locust's end-of-run table (response times in ms, service time) with LoadPilot's
    corrected p99 beside it."""
    head = (
        f"{'Type':<8}{'Name':<32}{'# reqs':>9}{'# fails':>16}{'Avg':>8}{'Min':>8}{'Max':>8}"
        f"{'Med':>8}{'p95':>8}{'p99':>8}{'req/s':>10}{'corrected p99':>15}"
    )
    lines = [head, "-" * len(head)]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}" if v >= 10 else f"{v:.2f}"

    for r in found:
        h = r.latency
        share = f"{r.failures}({r.failures / r.requests:.2%})" if r.requests else "0(0.00%)"
        if r.name == "Aggregated":
            lines.append("-" * len(head))
        lines.append(
            f"{r.kind:<8}{r.name[:31]:<32}{r.requests:>9}{share:>16}{ms(h.mean):>8}{ms(h.min):>8}"
            f"{ms(h.max):>8}{ms(h.percentile(50)):>8}{ms(h.percentile(95)):>8}"
            f"{ms(h.percentile(99)):>8}{r.requests / seconds:>10.1f}{ms(r.corrected_p99):>15}"
        )
    return "\n".join(lines)


def write(run: RunResult, summary: Summary, prefix: str, methods: Mapping[str, str]) -> list[Path]:
    """Writes the four files; returns their paths. ``methods``: the HTTP method of each
    request name that does not say it (``name=``)."""
    written = []
    seconds = max(summary.duration_s, 1e-9)
    by_name: dict[str, list[Any]] = {}
    for r in summary.requests:
        by_name.setdefault(r.name, []).append(r)
    path = Path(f"{prefix}_stats.csv")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "Type",
                "Name",
                "Request Count",
                "Failure Count",
                "Median Response Time",
                "Average Response Time",
                "Min Response Time",
                "Max Response Time",
                "Average Content Size",
                "Requests/s",
                "Failures/s",
                *(_pct_name(p) for p in PERCENTILES),
            ]
        )
        for row in rows(run, summary, methods):
            fig = _figures(row.latency)
            n = row.requests
            w.writerow(
                [row.kind, row.name, n, row.failures, *fig[:4],
                 f"{row.size / n:.1f}" if n else "0", f"{n / seconds:.3f}",
                 f"{row.failures / seconds:.3f}", *fig[4:]]
            )  # fmt: skip
    written.append(path)

    path = Path(f"{prefix}_failures.csv")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        # Locust 2.x's columns; LoadPilot keeps no instant per failure message.
        w.writerow(["Method", "Name", "Error", "Occurrences", "First Seen", "Last Seen"])
        messages: dict[str, int] = {}
        for fc in summary.failures:
            messages[fc.request] = messages.get(fc.request, 0) + fc.count
            kind, shown = _split(fc.request, methods)
            w.writerow([kind, shown, fc.message, fc.count, "", ""])
        for name, entries in by_name.items():
            kind, shown = _split(name, methods)
            counted: dict[str, int] = {}
            for e in entries:
                for k, n in e.errors_by_kind.items():
                    if n and k != "exception":
                        counted[k] = counted.get(k, 0) + n
            # Failures with a message (checks, statuses) are listed above; the rest by kind.
            judged = counted.pop("check", 0) + counted.pop("status", 0) - messages.get(name, 0)
            if judged > 0:
                counted["check or status (message not kept)"] = judged
            for k, n in counted.items():
                if n > 0:
                    w.writerow([kind, shown, f"{k} error", n, "", ""])
    written.append(path)

    path = Path(f"{prefix}_exceptions.csv")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Count", "Message", "Traceback", "Nodes"])
        for t in summary.tasks:
            raised = t.errors_by_kind.get("exception", 0)
            if raised:
                w.writerow([raised, f"task {t.name} raised (tracebacks on stderr)", "", "local"])
    written.append(path)

    written.append(_history(run, Path(f"{prefix}_stats_history.csv")))
    return written


def _history(run: RunResult, path: Path) -> Path:
    """One ``Aggregated`` row a second, as Locust writes by default."""
    import polars as pl

    m = run.metrics
    per_second = (
        m.group_by("elapsed_s")
        .agg(
            pl.col("time").first(),
            pl.col("requests").sum(),
            pl.col("errors").sum(),
            pl.col("errors_exception").sum(),
            pl.col("bytes_in").sum(),
            pl.col("interval_s").max(),
            pl.col("active_users").max(),
        )
        .sort("elapsed_s")
    )
    windows = dict(run.interval_histograms(service=True))
    total = _engine.Histogram(run.unit)
    total_n = total_f = total_bytes = 0
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s",
             *(_pct_name(p) for p in PERCENTILES), "Total Request Count",
             "Total Failure Count", "Total Median Response Time", "Total Average Response Time",
             "Total Min Response Time", "Total Max Response Time", "Total Average Content Size"]
        )  # fmt: skip
        for row in per_second.iter_rows(named=True):
            h = windows.get(row["elapsed_s"], _engine.Histogram(run.unit))
            total.add(h)
            n = row["requests"]
            failed = row["errors"] - row["errors_exception"]
            total_n, total_f = total_n + n, total_f + failed
            total_bytes += row["bytes_in"]
            span = row["interval_s"] or 1.0
            fig = _figures(h)
            tot = _figures(total)
            w.writerow(
                [int(row["time"].timestamp()), row["active_users"], "", "Aggregated",
                 f"{n / span:.3f}", f"{failed / span:.3f}", *fig[4:], total_n, total_f,
                 *tot[:4], f"{total_bytes / total_n:.1f}" if total_n else "0"]
            )  # fmt: skip
    return path
