"""Comparing two runs: every latency percentile and the error rate side by side, each change with
a confidence interval from a block bootstrap over the runs' intervals, and a verdict.

The requests of one second are not independent (a slow second is slow for all of them), so the
bootstrap resamples whole intervals, in blocks of consecutive intervals (a circular block
bootstrap), adds the drawn intervals' histograms and reads each percentile from the sum: the
same arithmetic as the run's own figures, never an average of percentiles. The verdict follows
criterion.rs: a change is *regressed* or *improved* only when its whole confidence interval lies
beyond the noise threshold, else *no significant change*.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from loadpilot import _engine
from loadpilot.running.runs import RunResult, load_run

Verdict = Literal["regressed", "improved", "no significant change", "not judged", "not compared"]

#: The metrics compared, in order: latency percentiles (ms), the maximum, the mean, and the
#: error rate (a share of requests; its change is absolute, in percentage points). The maximum
#: is one request: its change is shown but not judged, since no resampling gives a valid
#: confidence interval for a sample's maximum (its resamples can never exceed it).
METRICS: tuple[str, ...] = ("p50", "p90", "p99", "p999", "max", "mean", "error_rate")

_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
_CHUNK = 128  # resamples summed at once: bounds memory to _CHUNK x buckets


@dataclass(frozen=True)
class Change:
    """One metric of one task (or of one request name of a task, ``request``): both values,
    the change, its confidence interval, the verdict.
    ``change``, ``low`` and ``high`` are relative (0.1 = +10%) for latency and absolute (a
    difference of shares: 0.001 = +0.1 percentage points) for ``error_rate``."""

    task: str
    metric: str
    baseline: float | None
    candidate: float | None
    change: float | None
    low: float | None
    high: float | None
    verdict: Verdict
    request: str | None = None

    @property
    def relative(self) -> bool:
        return self.metric != "error_rate"

    def describe(self) -> str:
        """E.g. ``"p99 regressed +18.2% (95% CI +12.0%..+25.1%)"``."""
        fmt = _pct if self.relative else _pp
        where = "" if self.task == "all" else f"{self.task} "
        if self.request is not None:
            where = f"{self.task} {self.request!r} "
        if self.change is None:
            return f"{where}{self.metric}: not compared (no data)"
        if self.low is None or self.high is None:
            return f"{where}{self.metric} {fmt(self.change)} ({self.verdict})"
        return (
            f"{where}{self.metric} {self.verdict} {fmt(self.change)} "
            f"(CI {fmt(self.low)}..{fmt(self.high)})"
        )


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _pp(x: float) -> str:
    return f"{x * 100:+.3f} pp"


@dataclass
class _Sample:
    """One run's intervals for one task selection: bucket values (ms), a count matrix (interval
    x bucket), and per-interval requests and errors."""

    values: npt.NDArray[np.float64]
    counts: npt.NDArray[np.float64]
    requests: npt.NDArray[np.float64]
    errors: npt.NDArray[np.float64]

    @staticmethod
    def of(
        histograms: Sequence[_engine.Histogram],
        requests: Sequence[float],
        errors: Sequence[float],
    ) -> _Sample:
        columns: dict[float, int] = {}
        rows: list[tuple[list[float], list[int]]] = []
        for h in histograms:
            vals, cnts = h.buckets()
            rows.append((vals, cnts))
            for v in vals:
                columns.setdefault(v, 0)
        values = np.array(sorted(columns), dtype=np.float64)
        index = {v: i for i, v in enumerate(values.tolist())}
        counts = np.zeros((len(rows), len(values)), dtype=np.float64)
        for r, (vals, cnts) in enumerate(rows):
            counts[r, [index[v] for v in vals]] = cnts
        return _Sample(
            values,
            counts,
            np.asarray(requests, dtype=np.float64),
            np.asarray(errors, dtype=np.float64),
        )


def _percentile(
    cum: npt.NDArray[np.float64], values: npt.NDArray[np.float64], p: float
) -> npt.NDArray[np.float64]:
    """Row-wise percentile from cumulative bucket counts, as Java HdrHistogram reads it: the
    value of the first bucket whose cumulative count reaches ``ceil(p'/100 * total)`` (at
    least 1), ``p'`` the float just below ``p``."""
    total = cum[:, -1] if cum.shape[1] else np.zeros(len(cum))
    # The same float arithmetic as the engine's (Java's), so the figures equal the run's own.
    below = max(0.0, float(np.nextafter(p, -np.inf)))
    rank = np.maximum(1.0, np.ceil((below / 100.0) * total))
    idx = np.argmax(cum >= rank[:, None], axis=1) if cum.shape[1] else np.zeros(len(cum), int)
    out = values[idx].astype(np.float64) if len(values) else np.full(len(cum), np.nan)
    out[total == 0] = np.nan
    return out


def _statistics(
    metrics: Sequence[str],
    summed: npt.NDArray[np.float64],
    values: npt.NDArray[np.float64],
    requests: npt.NDArray[np.float64],
    errors: npt.NDArray[np.float64],
) -> dict[str, npt.NDArray[np.float64]]:
    """Each metric of each row of summed histograms (rows x buckets)."""
    out: dict[str, npt.NDArray[np.float64]] = {}
    cum = np.cumsum(summed, axis=1)
    total = summed.sum(axis=1)
    for metric in metrics:
        if metric in _PERCENTILES:
            out[metric] = _percentile(cum, values, _PERCENTILES[metric])
        elif metric == "max":
            nonzero = summed > 0
            last = summed.shape[1] - 1 - np.argmax(nonzero[:, ::-1], axis=1)
            v = values[last].astype(np.float64) if len(values) else np.full(len(summed), np.nan)
            v[~nonzero.any(axis=1)] = np.nan
            out[metric] = v
        elif metric == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                out[metric] = np.where(total > 0, summed @ values / total, np.nan)
        elif metric == "error_rate":
            with np.errstate(invalid="ignore", divide="ignore"):
                out[metric] = np.where(requests > 0, errors / requests, np.nan)
        else:
            raise ValueError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
    return out


def _block_weights(
    n: int, resamples: int, rng: np.random.Generator, block: int | None
) -> npt.NDArray[np.float64]:
    """How often each of ``n`` intervals is drawn in each resample (resamples x n): blocks of
    ``block`` consecutive intervals from random starts, wrapping round."""
    length = min(block or 1, n)
    blocks = math.ceil(n / length)
    starts = rng.integers(0, n, size=(resamples, blocks))
    picks = (starts[:, :, None] + np.arange(length)[None, None, :]) % n
    picks = picks.reshape(resamples, -1)[:, :n]
    flat = (np.arange(resamples)[:, None] * n + picks).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def _block_length(sample: _Sample) -> int:
    """A block length for the circular block bootstrap from how much each interval's mean
    latency follows the one before (lag-1 autocorrelation ρ): Politis and White's rule for an
    AR(1) series, (2ρ/(1−ρ²))^(2/3)·n^(1/3), between 1 and n/3. Independent intervals give 1."""
    total = sample.counts.sum(axis=1)
    keep = total > 0
    n = int(keep.sum())
    if n < 6:
        return 1
    level = np.log((sample.counts[keep] @ sample.values) / total[keep])
    d = level - level.mean()
    denom = float(d @ d)
    if denom <= 0:
        return 1
    rho = float(np.clip((d[1:] @ d[:-1]) / denom, 0.0, 0.95))
    if rho <= 0:
        return 1
    length = (2 * rho / (1 - rho * rho)) ** (2 / 3) * n ** (1 / 3)
    return int(np.clip(round(length), 1, max(1, n // 3)))


def _bootstrap(
    sample: _Sample,
    metrics: Sequence[str],
    resamples: int,
    rng: np.random.Generator,
    block: int | None,
) -> tuple[dict[str, float], dict[str, npt.NDArray[np.float64]]]:
    """The point estimate and ``resamples`` bootstrap replicates of every metric."""
    whole = sample.counts.sum(axis=0, keepdims=True)
    req = np.array([sample.requests.sum()])
    err = np.array([sample.errors.sum()])
    point = {
        m: float(v[0]) for m, v in _statistics(metrics, whole, sample.values, req, err).items()
    }
    reps: dict[str, list[npt.NDArray[np.float64]]] = {m: [] for m in metrics}
    n_lat, n_err = len(sample.counts), len(sample.requests)
    if block is None:
        block = _block_length(sample)
    w_lat = _block_weights(n_lat, resamples, rng, block) if n_lat else None
    w_err = _block_weights(n_err, resamples, rng, block) if n_err else None
    for lo in range(0, resamples, _CHUNK):
        hi = min(resamples, lo + _CHUNK)
        if w_lat is not None:
            summed = w_lat[lo:hi] @ sample.counts
        else:
            summed = np.zeros((hi - lo, len(sample.values)))
        if w_err is not None:
            r, e = w_err[lo:hi] @ sample.requests, w_err[lo:hi] @ sample.errors
        else:
            r = e = np.zeros(hi - lo)
        for m, v in _statistics(metrics, summed, sample.values, r, e).items():
            reps[m].append(v)
    return point, {m: np.concatenate(v) for m, v in reps.items()}


def intervals(
    histograms: Sequence[_engine.Histogram],
    requests: Sequence[float],
    errors: Sequence[float],
    metrics: Sequence[str] = ("p50", "p90", "p99", "p999", "mean", "error_rate"),
    *,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float, float]]:
    """Each metric of one sample of intervals (their histograms, requests and errors) as
    ``(point, low, high)``: the point from all the intervals added up, the confidence interval
    from the same block bootstrap ``compare`` uses. NaN where nothing was recorded."""
    sample = _Sample.of(histograms, requests, errors)
    point, reps = _bootstrap(sample, metrics, resamples, np.random.default_rng(seed), None)
    tail = (1.0 - confidence) / 2.0
    out: dict[str, tuple[float, float, float]] = {}
    for m in metrics:
        r = reps[m][np.isfinite(reps[m])]
        if len(r) == 0:
            out[m] = (point[m], math.nan, math.nan)
            continue
        low, high = (float(x) for x in np.quantile(r, [tail, 1.0 - tail]))
        out[m] = (point[m], low, high)
    return out


def _judge(
    task: str,
    metric: str,
    base: tuple[float, npt.NDArray[np.float64]],
    cand: tuple[float, npt.NDArray[np.float64]],
    confidence: float,
    noise: float,
) -> Change:
    (b, b_reps), (c, c_reps) = base, cand
    relative = metric != "error_rate"
    if math.isnan(b) or math.isnan(c) or (relative and b <= 0):
        return Change(task, metric, _num(b), _num(c), None, None, None, "not compared")
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = c_reps / b_reps - 1.0 if relative else c_reps - b_reps
    diffs = diffs[np.isfinite(diffs)]
    change = c / b - 1.0 if relative else c - b
    if metric == "max":
        return Change(task, metric, b, c, change, None, None, "not judged")
    if len(diffs) == 0:
        return Change(task, metric, b, c, change, None, None, "not compared")
    tail = (1.0 - confidence) / 2.0
    low, high = (float(x) for x in np.quantile(diffs, [tail, 1.0 - tail]))
    verdict: Verdict = "no significant change"
    if low > noise:
        verdict = "regressed"
    elif high < -noise:
        verdict = "improved"
    return Change(task, metric, b, c, change, low, high, verdict)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


class Comparison:
    """The outcome of :func:`compare`: one :class:`Change` per (task, metric), the whole run
    under the task name ``"all"``. Renders as a table in a notebook."""

    def __init__(
        self,
        baseline: str,
        candidate: str,
        changes: list[Change],
        *,
        confidence: float,
        noise: float,
        error_noise: float,
        resamples: int,
        seed: int,
    ) -> None:
        self.baseline = baseline
        self.candidate = candidate
        self.changes = changes
        self.confidence = confidence
        self.noise = noise
        self.error_noise = error_noise
        self.resamples = resamples
        self.seed = seed

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "regressed"]

    @property
    def improvements(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "improved"]

    @property
    def regressed(self) -> bool:
        """True when any metric of any task regressed: what ``loadpilot compare`` fails on."""
        return bool(self.regressions)

    def change(self, metric: str, task: str = "all", request: str | None = None) -> Change:
        """The change of ``metric`` for the whole run, one task, or one request name of a task
        (``request``; ``task`` may be left out when one task sends it)."""
        for c in self.changes:
            if (
                c.metric == metric
                and c.request == request
                and (c.task == task or (request is not None and task == "all"))
            ):
                return c
        what = f"request {request!r}" if request is not None else f"task {task!r}"
        raise KeyError(f"no change of {metric!r} for {what}")

    def verdict(self) -> str:
        """One line: the regressions (or improvements), else that nothing changed
        significantly. E.g. ``"p99 regressed +18.2% (95% CI +12.0%..+25.1%)"``."""
        level = f"{self.confidence * 100:g}% CI"
        found = self.regressions or self.improvements
        if not found:
            return f"no significant change ({level}, noise threshold ±{self.noise * 100:g}%)"
        # The whole run's changes first; per-task ones only when the whole shows none, and per
        # request only when no task shows one.
        main = (
            [c for c in found if c.task == "all"]
            or [c for c in found if c.request is None]
            or found
        )
        shown = main[:4]
        text = "; ".join(c.describe().replace("(CI", f"({level}") for c in shown)
        more = len(found) - len(shown)
        return text + (f"; and {more} more (see the table)" if more else "")

    @property
    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            [asdict(c) for c in self.changes],
            schema={
                "task": pl.String,
                "metric": pl.String,
                "baseline": pl.Float64,
                "candidate": pl.Float64,
                "change": pl.Float64,
                "low": pl.Float64,
                "high": pl.Float64,
                "verdict": pl.String,
                "request": pl.String,
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "confidence": self.confidence,
            "noise": self.noise,
            "error_noise": self.error_noise,
            "resamples": self.resamples,
            "seed": self.seed,
            "regressed": self.regressed,
            "verdict": self.verdict(),
            "changes": [asdict(c) for c in self.changes],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def _cells(self, c: Change) -> list[str]:
        def value(v: float | None) -> str:
            if v is None:
                return "–"
            return f"{v * 100:.3f}%" if not c.relative else f"{v:,.2f}"

        fmt = _pct if c.relative else _pp
        change = "–" if c.change is None else fmt(c.change)
        ci = "–" if c.low is None or c.high is None else f"{fmt(c.low)} .. {fmt(c.high)}"
        return [
            c.task,
            c.request or "",
            c.metric,
            value(c.baseline),
            value(c.candidate),
            change,
            ci,
            c.verdict,
        ]

    _HEAD = ["task", "request", "metric", "baseline", "candidate", "change", "CI", "verdict"]

    def table(self) -> str:
        """A plain-text table (latency in ms)."""
        rows = [self._HEAD, *(self._cells(c) for c in self.changes)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEAD))]
        lines = [
            "  ".join(
                cell.ljust(w) if i in (0, 1, 2, 7) else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
            for r in rows
        ]
        return "\n".join(
            [f"baseline:  {self.baseline}", f"candidate: {self.candidate}", *lines, self.verdict()]
        )

    def html(self) -> str:
        """The comparison as an HTML table (what a notebook shows and reports embed)."""
        rows = []
        for c in self.changes:
            cells = "".join(f"<td>{html.escape(x)}</td>" for x in self._cells(c))
            cls = c.verdict.replace(" ", "-")
            rows.append(f'<tr class="{cls}">{cells}</tr>')
        head = "".join(f"<th>{h}</th>" for h in self._HEAD)
        return (
            f"<p>Baseline <code>{html.escape(self.baseline)}</code> vs candidate "
            f"<code>{html.escape(self.candidate)}</code>: "
            f"<strong>{html.escape(self.verdict())}</strong>. Latency in ms; "
            f"{self.confidence * 100:g}% confidence intervals from a block bootstrap over "
            f"intervals ({self.resamples} resamples, seed {self.seed}).</p>"
            f'<table class="lp-compare"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
        )

    def _repr_html_(self) -> str:
        style = (
            "<style>.lp-compare tr.regressed td{background:#fde2e2}"
            ".lp-compare tr.improved td{background:#e5f5e5}</style>"
        )
        return style + self.html()

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"<Comparison {self.verdict()}>"


def _material(
    run: RunResult,
    task: str | None,
    start: float | None,
    end: float | None,
    service: bool,
    request: str | None = None,
) -> _Sample:
    # Every interval in one layout (3 digits from 1, what `histogram()` adds into), so a
    # foreign log's coarser buckets read as its own whole-log figures do.
    hists = [
        _engine.Histogram(h.unit) + h
        for _, h in run.interval_histograms(
            task, request=request, service=service, start=start, end=end
        )
    ]
    m = run.metrics if request is None else run.request_metrics
    if request is not None:
        m = m.filter(pl.col("request") == request)
    if task is not None:
        m = m.filter(pl.col("task") == task)
    if start is not None:
        m = m.filter(pl.col("elapsed_s") >= start)
    if end is not None:
        m = m.filter(pl.col("elapsed_s") < end)
    per = m.group_by("elapsed_s").agg(pl.col("requests").sum(), pl.col("errors").sum())
    per = per.sort("elapsed_s")
    return _Sample.of(hists, per["requests"].to_list(), per["errors"].to_list())


def _label(run: RunResult) -> str:
    return str(run.path)


def compare(
    baseline: RunResult | str | Path,
    candidate: RunResult | str | Path,
    *,
    metrics: Sequence[str] = METRICS,
    confidence: float = 0.95,
    noise: float = 0.02,
    error_noise: float = 0.001,
    resamples: int = 1000,
    seed: int = 0,
    start: float | None = None,
    end: float | None = None,
    service: bool = False,
    block: int | None = None,
) -> Comparison:
    """Compares ``candidate`` with ``baseline`` (runs, or run directories), per task present in
    both, per request name of a task present in both (``Change.request``), and for all tasks
    together (task ``"all"``).

    Each metric gets a confidence interval (``confidence``) for its change from a seeded block
    bootstrap over intervals (``resamples`` draws, blocks of ``block`` consecutive intervals,
    default about n^(1/3)). A latency metric regressed when the whole interval of its relative
    change is above ``noise`` (default +2%), improved when below ``-noise``; the error rate
    likewise against ``error_noise`` in absolute terms (default 0.1 percentage points).
    ``start``/``end`` (seconds into each run) compare a window, e.g. the steady state after a
    ramp; ``service=True`` compares service time instead of corrected latency."""
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if noise < 0 or error_noise < 0:
        raise ValueError("noise thresholds must be >= 0")
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, got {resamples}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; metrics: {', '.join(METRICS)}")
    base = baseline if isinstance(baseline, RunResult) else load_run(baseline)
    cand = candidate if isinstance(candidate, RunResult) else load_run(candidate)
    base_tasks = base.tasks
    cand_tasks = set(cand.tasks)
    shared = [t for t in base_tasks if t in cand_tasks]
    groups: list[tuple[str | None, str | None]] = [(None, None)]
    if len(shared) > 1 or len(base_tasks) > 1 or len(cand_tasks) > 1:
        groups += [(t, None) for t in shared]
    cand_requests = set(cand.requests)
    groups += [r for r in base.requests if r in cand_requests and r[0] in shared]
    rng = np.random.default_rng(seed)
    changes: list[Change] = []
    for task, request in groups:
        b_point, b_reps = _bootstrap(
            _material(base, task, start, end, service, request), metrics, resamples, rng, block
        )
        c_point, c_reps = _bootstrap(
            _material(cand, task, start, end, service, request), metrics, resamples, rng, block
        )
        for m in metrics:
            change = _judge(
                task or "all",
                m,
                (b_point[m], b_reps[m]),
                (c_point[m], c_reps[m]),
                confidence,
                error_noise if m == "error_rate" else noise,
            )
            changes.append(dataclasses.replace(change, request=request))
    return Comparison(
        _label(base),
        _label(cand),
        changes,
        confidence=confidence,
        noise=noise,
        error_noise=error_noise,
        resamples=resamples,
        seed=seed,
    )


def compare_samples(
    baseline: Sequence[_engine.Histogram],
    candidate: Sequence[_engine.Histogram],
    *,
    metrics: Sequence[str] = ("p50", "p90", "p99", "p999", "mean"),
    confidence: float = 0.95,
    noise: float = 0.02,
    resamples: int = 1000,
    seed: int = 0,
    block: int | None = None,
) -> Comparison:
    """Compares two sequences of per-interval histograms (no run directory needed): the same
    statistics as :func:`compare`, for latency metrics only."""
    rng = np.random.default_rng(seed)
    zeros_b, zeros_c = [0.0] * len(baseline), [0.0] * len(candidate)
    b_point, b_reps = _bootstrap(
        _Sample.of(baseline, zeros_b, zeros_b), metrics, resamples, rng, block
    )
    c_point, c_reps = _bootstrap(
        _Sample.of(candidate, zeros_c, zeros_c), metrics, resamples, rng, block
    )
    changes = [
        _judge("all", m, (b_point[m], b_reps[m]), (c_point[m], c_reps[m]), confidence, noise)
        for m in metrics
    ]
    return Comparison(
        "baseline",
        "candidate",
        changes,
        confidence=confidence,
        noise=noise,
        error_noise=0.0,
        resamples=resamples,
        seed=seed,
    )
