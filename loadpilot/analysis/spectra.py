"""Looking at latency properly: percentile spectra, exact percentiles of windows, and exports for
other tools (CSV/Parquet interval rows, HdrHistogram ``.hgrm`` percentile distributions)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from loadpilot import _engine
from loadpilot.errors import RunDirError
from loadpilot.running.runs import RunResult, load_run


def _as_run(run: RunResult | str | Path) -> RunResult:
    return run if isinstance(run, RunResult) else load_run(run)


def _name(run: RunResult) -> str:
    return run.path.name or str(run.path)


def spectrum(
    runs: RunResult | str | Path | Sequence[RunResult | str | Path],
    *,
    task: str | Sequence[str] | None = None,
    service: bool = False,
    start: float | None = None,
    end: float | None = None,
    ticks: int = 5,
    labels: Sequence[str] | None = None,
) -> pl.DataFrame:
    """The percentile spectrum of one run or several: one row per (run, percentile) with
    ``latency_ms`` and ``inverse`` = 1/(1−p), the x of a spectrum chart on a log axis (the
    100th percentile, the maximum, is placed one tick beyond the last finite one). Optionally of
    one task or a list, a window of seconds, or service time."""
    items = [runs] if isinstance(runs, RunResult | str | Path) else list(runs)
    resolved = [_as_run(r) for r in items]
    names = list(labels) if labels is not None else [_name(r) for r in resolved]
    if len(names) != len(resolved):
        raise ValueError("one label per run")
    frames = []
    for name, run in zip(names, resolved, strict=True):
        h = run.histogram(task, service=service, start=start, end=end)
        frames.append(spectrum_of(h, ticks=ticks).with_columns(pl.lit(name).alias("run")))
    if not frames:
        return spectrum_of(_engine.Histogram()).with_columns(pl.lit("").alias("run"))
    return pl.concat(frames).select("run", "percentile", "inverse", "latency_ms", "count")


def spectrum_of(h: _engine.Histogram, *, ticks: int = 5) -> pl.DataFrame:
    """The percentile spectrum of one histogram (see :func:`spectrum`)."""
    rows = h.quantiles(ticks) if h.count else []
    finite = [1 / (1 - q) for _, q, _ in rows if q < 1.0]
    top = max(finite, default=1.0) * 10 ** (1 / ticks) if finite else 1.0
    return pl.DataFrame(
        {
            "percentile": [q * 100 for _, q, _ in rows],
            "inverse": [1 / (1 - q) if q < 1.0 else top for _, q, _ in rows],
            "latency_ms": [v for v, _, _ in rows],
            "count": [c for _, _, c in rows],
        },
        schema={
            "percentile": pl.Float64,
            "inverse": pl.Float64,
            "latency_ms": pl.Float64,
            "count": pl.Int64,
        },
    )


def hgrm(h: _engine.Histogram, *, ticks: int = 5) -> str:
    """The percentile distribution in HdrHistogram's text form (``.hgrm``, values in
    milliseconds), as its ``outputPercentileDistribution`` prints it and its plotter reads it."""
    lines = [f"{'Value':>12} {'Percentile':>14} {'TotalCount':>10} {'1/(1-Percentile)':>14}", ""]
    for value, q, total in h.quantiles(ticks) if h.count else []:
        if q < 1.0:
            lines.append(f"{value:12.3f} {q:2.12f} {total:10d} {1 / (1 - q):14.2f}")
        else:
            lines.append(f"{value:12.3f} {q:2.12f} {total:10d}")
    mean, sd, mx = h.mean or 0.0, h.stdev or 0.0, h.max or 0.0
    lines.append(f"#[Mean    = {mean:12.3f}, StdDeviation   = {sd:12.3f}]")
    lines.append(f"#[Max     = {mx:12.3f}, Total count    = {h.count:12d}]")
    buckets, sub_buckets = h.layout
    lines.append(f"#[Buckets = {buckets:12d}, SubBuckets     = {sub_buckets:12d}]")
    return "\n".join(lines) + "\n"


def export(
    run: RunResult | str | Path,
    out: str | Path,
    *,
    formats: Sequence[str] = ("csv", "parquet", "hgrm"),
) -> list[Path]:
    """Writes ``run``'s results for other tools into directory ``out``: ``metrics.csv`` and
    ``metrics.parquet`` (the interval rows: the tasks', and the request names' with their name in
    ``request``), and ``latency.hgrm``/``service.hgrm`` (whole run) plus ``latency-<task>.hgrm``
    per task and ``latency-<task>--<request>.hgrm`` per request name (characters other than
    letters, digits and ``-_.`` written as ``_``). The ``.hlog`` files in the run directory are
    standard already. Returns the files written."""
    r = _as_run(run)
    unknown = [f for f in formats if f not in ("csv", "parquet", "hgrm")]
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; formats: csv, parquet, hgrm")
    dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise RunDirError(f"{dest}: exists and is not a directory; export writes a directory")
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    m = r._rows
    if "csv" in formats:
        path = dest / "metrics.csv"
        m.with_columns(pl.col("time").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")).write_csv(path)
        written.append(path)
    if "parquet" in formats:
        path = dest / "metrics.parquet"
        m.write_parquet(path)
        written.append(path)
    if "hgrm" in formats:
        for service in (False, True) if r.has_service else (False,):
            path = dest / ("service.hgrm" if service else "latency.hgrm")
            path.write_text(hgrm(r.histogram(service=service)))
            written.append(path)

        def safe(name: str) -> str:
            return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)

        for name in r.tasks:
            path = dest / f"latency-{safe(name)}.hgrm"
            path.write_text(hgrm(r.histogram(name)))
            written.append(path)
        for task, request in r.requests:
            stem = f"latency-{safe(task)}--{safe(request)}"
            path, n = dest / f"{stem}.hgrm", 1
            while path in written:  # two names written alike
                n += 1
                path = dest / f"{stem}-{n}.hgrm"
            path.write_text(hgrm(r.histogram(task, request=request)))
            written.append(path)
    return written
