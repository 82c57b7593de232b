"""Altair charts fed from Polars: the percentile spectrum, latency over time (corrected and
service time), achieved vs target rate, errors by kind, and capacity curves. Each function
returns a chart to show in a notebook, save, or put in a report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import altair as alt
import polars as pl

from loadpilot.analysis.series import latency_points, per_second
from loadpilot.analysis.spectra import spectrum
from loadpilot.running import store as _store
from loadpilot.running.runs import RunResult, load_run

if TYPE_CHECKING:
    from loadpilot.analysis.planning import Capacity

WIDTH = 640

#: Tick positions of 1/(1−p) and their labels as percentiles.
_TICKS = [1, 2, 10, 100, 1_000, 10_000, 100_000, 1_000_000]
_LABEL = "datum.value <= 1 ? '0%' : format(100 - 100 / datum.value, '.5~f') + '%'"


def _run(r: RunResult | str | Path) -> RunResult:
    return r if isinstance(r, RunResult) else load_run(r)


def spectrum_chart(
    runs: RunResult | str | Path | Sequence[RunResult | str | Path] | pl.DataFrame,
    *,
    task: str | Sequence[str] | None = None,
    service: bool = False,
    labels: Sequence[str] | None = None,
    title: str = "Latency by percentile",
) -> alt.Chart:
    """Latency (y) at each percentile (x, on a log 1/(1−p) axis, so p90, p99, p99.9 ... are
    evenly spaced up to the maximum), one line per run. Takes runs or a frame from
    :func:`loadpilot.spectrum`."""
    frame = (
        runs
        if isinstance(runs, pl.DataFrame)
        else spectrum(runs, task=task, service=service, labels=labels)
    )
    top = float(frame["inverse"].max() or 10.0) if len(frame) else 10.0  # type: ignore[arg-type]
    ticks = [t for t in _TICKS if t <= top * 1.0001] or [1]
    chart: alt.Chart = (
        alt.Chart(frame)
        .mark_line(point=alt.OverlayMarkDef(size=12), interpolate="step-after")
        .encode(
            x=alt.X(
                "inverse:Q",
                scale=alt.Scale(type="log", domain=[1, max(10.0, top)]),
                axis=alt.Axis(values=ticks, labelExpr=_LABEL, title="percentile"),
            ),
            y=alt.Y("latency_ms:Q", title="latency (ms)"),
            color=alt.Color("run:N", title="run"),
            tooltip=[
                "run",
                alt.Tooltip("percentile:Q", format=".4f"),
                alt.Tooltip("latency_ms:Q", format=".3f"),
                "count",
            ],
        )
        .properties(title=title, width=WIDTH, height=260)
    )
    return chart


def latency_chart(run: RunResult | str | Path, *, title: str | None = None) -> alt.Chart:
    """p50, p99 and max of corrected latency per second, with service-time p50 and p99 dashed:
    where the two part, requests waited to be sent (coordinated omission, made visible). Per
    second and for all tasks together, each point exact from the second's histograms."""
    r = _run(run)
    lat = dict(r.interval_histograms())
    svc = dict(r.interval_histograms(service=True)) if r.has_service else {}
    rows = [
        {"elapsed_s": t, "series": name, "ms": v,
         "time": "service" if name.startswith("service") else "corrected"}
        for t0, h in lat.items()
        for t, name, v in latency_points(t0, h, svc.get(t0))
    ]  # fmt: skip
    frame = pl.DataFrame(
        rows,
        schema={"elapsed_s": pl.Float64, "series": pl.String, "ms": pl.Float64, "time": pl.String},
    )
    chart: alt.Chart = (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("elapsed_s:Q", title="seconds"),
            y=alt.Y("ms:Q", title="latency (ms)", scale=alt.Scale(type="symlog")),
            color=alt.Color(
                "series:N",
                title="latency",
                sort=["p50", "p99", "max", "service p50", "service p99"],
            ),
            # A stroke in the legend, so its dash shows (a point would hide it).
            strokeDash=alt.StrokeDash(
                "time:N",
                title="measured from",
                sort=["corrected", "service"],
                legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=2, symbolSize=400),
            ),
            tooltip=["elapsed_s", "series", alt.Tooltip("ms:Q", format=".3f")],
        )
        .properties(
            title=title or "Latency per second: corrected (from when due) and service time",
            width=WIDTH,
            height=240,
        )
    )
    return chart


def target_band(chart: alt.Chart) -> alt.Chart:
    """``chart`` drawn as a target under what was achieved: a broad pale band, so a line that
    agrees with it shows on it rather than hidden under it (the rate chart, the dashboard)."""
    band: alt.Chart = chart.mark_line(strokeWidth=7, opacity=0.35)
    return band


def rate_chart(run: RunResult | str | Path, *, title: str | None = None) -> alt.LayerChart:
    """Iterations per second, achieved against the profile's target rate (open model; for tasks
    of one request, requests per second): the target a broad pale band under the achieved
    line, so both show where they agree."""
    r = _run(run)
    per = per_second(r.metrics).filter(pl.col("elapsed_s") < r.plan.duration_s)
    x = alt.X("elapsed_s:Q", title="seconds")
    y = alt.Y("value:Q", title="iterations per second")
    colour = alt.Color(
        "variable:N", title="rate", scale=alt.Scale(domain=["target", "achieved"],
                                                    range=["#f58518", "#4c78a8"])
    )  # fmt: skip
    layers = []
    if r.plan.load.model == "open":
        target = per.select("elapsed_s", pl.col("target_rps").alias("value")).with_columns(
            pl.lit("target").alias("variable")
        )
        layers.append(
            target_band(alt.Chart(target)).encode(
                x=x, y=y, color=colour, tooltip=["elapsed_s", alt.Tooltip("value:Q", format=".1f")]
            )
        )
    achieved = per.select("elapsed_s", pl.col("achieved_ips").alias("value")).with_columns(
        pl.lit("achieved").alias("variable")
    )
    layers.append(
        alt.Chart(achieved)
        .mark_line(point=True, strokeWidth=2)
        .encode(x=x, y=y, color=colour, tooltip=["elapsed_s", alt.Tooltip("value:Q", format=".1f")])
    )
    chart = alt.layer(*layers).properties(
        title=title or ("Achieved vs target rate" if len(layers) == 2 else "Achieved rate"),
        width=WIDTH,
        height=200,
    )
    assert isinstance(chart, alt.LayerChart)
    return chart


def users_chart(run: RunResult | str | Path, *, title: str | None = None) -> alt.Chart:
    """Active virtual users per second (a closed model's load)."""
    r = _run(run)
    per = per_second(r.metrics).filter(pl.col("elapsed_s") < r.plan.duration_s)
    chart: alt.Chart = (
        alt.Chart(per.select("elapsed_s", "active_users"))
        .mark_line(point=True, interpolate="step-after")
        .encode(
            x=alt.X("elapsed_s:Q", title="seconds"),
            y=alt.Y("active_users:Q", title="active users"),
            tooltip=["elapsed_s", "active_users"],
        )
        .properties(title=title or "Virtual users", width=WIDTH, height=160)
    )
    return chart


def error_bars(
    per: pl.DataFrame,
    *,
    title: str,
    width: int = WIDTH,
    height: int = 120,
    domain: tuple[float, float] | None = None,
) -> alt.Chart:
    """Failed requests per second stacked by kind, one bar per second, from per-second rows
    with ``elapsed_s`` and ``errors_<kind>`` columns."""
    kinds = _store.ERROR_KINDS
    frame = (
        per.unpivot(index="elapsed_s", on=[f"errors_{k}" for k in kinds])
        .with_columns(
            pl.col("variable").str.strip_prefix("errors_").alias("kind"),
            pl.col("value").cast(pl.Float64),
        )
        .with_columns(pl.col("kind").replace_strict(kinds, list(range(len(kinds)))).alias("order"))
        .sort("elapsed_s", "order")
        .with_columns(pl.col("value").cum_sum().over("elapsed_s").alias("top"))
        .with_columns(
            (pl.col("top") - pl.col("value")).alias("bottom"),
            (pl.col("elapsed_s") + 1).alias("until"),
        )
        .filter(pl.col("value") > 0)
        .select("elapsed_s", "until", "kind", "value", "bottom", "top")
    )
    x_scale = alt.Scale(domain=list(domain)) if domain else alt.Undefined
    chart: alt.Chart = (
        alt.Chart(frame)
        .mark_rect()
        .encode(
            x=alt.X("elapsed_s:Q", title="seconds", scale=x_scale),
            x2="until:Q",
            y=alt.Y("top:Q", title="failed requests/s"),
            y2="bottom:Q",
            color=alt.Color("kind:N", title="error kind", sort=kinds),
            tooltip=["elapsed_s", "kind", "value"],
        )
        .properties(title=title, width=width, height=height)
    )
    return chart


def errors_chart(run: RunResult | str | Path, *, title: str | None = None) -> alt.Chart:
    """Failed requests per second, stacked by kind (connect, timeout, status, check, ...)."""
    r = _run(run)
    return error_bars(per_second(r.metrics), title=title or "Errors per second by kind")


def capacity_chart(cap: Capacity) -> alt.VConcatChart:
    """Throughput against offered load (with the line where they would be equal) and p50/p99
    against offered load, one point per complete level; the knee marked when there is one."""
    f = cap.frame.filter(pl.col("complete"))
    x_title = "offered (requests/s)" if cap.model == "open" else "virtual users"
    x = alt.X("offered:Q", title=x_title)
    through = (
        alt.Chart(f)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("achieved_rps:Q", title="achieved requests/s"),
            tooltip=["offered", alt.Tooltip("achieved_rps:Q", format=".1f"), "error_rate"],
        )
    )
    layers: list[alt.Chart] = [through]
    if cap.model == "open":
        ideal = alt.Chart(f).mark_line(strokeDash=[4, 4], color="gray").encode(x=x, y="offered:Q")
        layers.insert(0, ideal)
    lat = f.unpivot(index="offered", on=["p50_ms", "p99_ms"]).drop_nulls("value")
    latency = (
        alt.Chart(lat)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("value:Q", title="latency (ms)", scale=alt.Scale(type="symlog")),
            color=alt.Color("variable:N", title=""),
            tooltip=["offered", "variable", alt.Tooltip("value:Q", format=".2f")],
        )
    )
    knee = cap.knee()
    lat_layers: list[alt.Chart] = [latency]
    if knee is not None:
        rule = (
            alt.Chart(pl.DataFrame({"offered": [knee.offered]}))
            .mark_rule(color="firebrick", strokeDash=[2, 2])
            .encode(x="offered:Q")
        )
        layers.append(rule)
        lat_layers.append(rule)
    top = alt.layer(*layers).properties(title="Throughput vs offered load", width=WIDTH, height=220)
    bottom = alt.layer(*lat_layers).properties(
        title="Latency vs offered load (exact per level)", width=WIDTH, height=220
    )
    return alt.vconcat(top, bottom)
