"""Per-second series of a run, as charts and the live dashboard draw them: Polars only (no
Altair), so a dashboard can draw its frames while a run goes without loading a charting
library."""

from __future__ import annotations

import polars as pl

from loadpilot import _engine
from loadpilot.running import store as _store


def per_second(m: pl.DataFrame) -> pl.DataFrame:
    """Interval rows of all tasks together, one row per second: counts and rates summed, gauges
    (in flight, active users) at their highest; ``target_rps`` null in a closed model;
    ``achieved_ips``, iterations that ended per second, is what ``target_rps`` is held to. The
    rows of request names are left out (their tasks' rows count them)."""
    return (
        _store.task_rows(m)
        .group_by("elapsed_s")
        .agg(
            pl.col("requests").sum(),
            pl.col("errors").sum(),
            pl.col("achieved_rps").sum(),
            _store.ACHIEVED_IPS.sum().alias("achieved_ips"),
            pl.when(pl.col("target_rps").is_null().all())
            .then(None)
            .otherwise(pl.col("target_rps").sum())
            .alias("target_rps"),
            pl.col("in_flight").max(),
            pl.col("missed").sum(),
            pl.col("active_users").max(),
            *(pl.col(f"errors_{k}").sum() for k in _store.ERROR_KINDS),
        )
        .sort("elapsed_s")
    )


def latency_points(
    t: float, h: _engine.Histogram, service: _engine.Histogram | None
) -> list[tuple[float, str, float]]:
    """One second's points of the latency chart: corrected p50, p99 and max, service-time p50
    and p99, as ``(elapsed_s, series, ms)``."""
    points = (
        ("p50", h.percentile(50)),
        ("p99", h.percentile(99)),
        ("max", h.max),
        ("service p50", service.percentile(50) if service else None),
        ("service p99", service.percentile(99) if service else None),
    )
    return [(t, name, v) for name, v in points if v is not None]
