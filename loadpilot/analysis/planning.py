"""Capacity planning from a step or ramp run: throughput and latency against offered load, the
knee, the highest offered rate that met an SLO for a whole step, and a Universal Scalability Law
fit of throughput against concurrency."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import numpy.typing as npt
import polars as pl

from loadpilot.analysis.comparing import intervals
from loadpilot.errors import PlanError
from loadpilot.plan import Stage
from loadpilot.profiles import shape
from loadpilot.running import store as _store
from loadpilot.running.runs import RunResult
from loadpilot.thresholds import _OPS, LATENCY, Threshold, parse_cli

# --------------------------------------------------------------------------------------------
# Universal Scalability Law


@dataclass(frozen=True)
class USL:
    """X(N) = λN / (1 + σ(N−1) + κN(N−1)): ``sigma`` (contention), ``kappa`` (coherency),
    ``lam`` (throughput of one unit of concurrency), fitted by least squares on the throughput
    scale with ``0 <= sigma, kappa <= 1`` and ``lam >= 0``."""

    sigma: float
    kappa: float
    lam: float
    points: int
    residual_se: float
    """Residual standard error, on ``points - 3`` degrees of freedom."""
    r2: float

    @property
    def peak(self) -> float:
        """N* = sqrt((1−σ)/κ): the concurrency of the highest throughput (inf when κ = 0)."""
        return math.sqrt((1 - self.sigma) / self.kappa) if self.kappa > 0 else math.inf

    @property
    def peak_throughput(self) -> float:
        """X(N*), or the asymptote λ/σ when κ = 0."""
        return float(self.predict(self.peak)) if math.isfinite(self.peak) else self.limit

    @property
    def limit(self) -> float:
        """λ/σ: the ceiling contention alone allows (Amdahl)."""
        return self.lam / self.sigma if self.sigma > 0 else math.inf

    @property
    def optimal(self) -> float:
        """1/σ: the concurrency beyond which contention dominates ("optimal scalability")."""
        return 1 / self.sigma if self.sigma > 0 else math.inf

    def predict(
        self, n: float | Sequence[float] | npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        n_arr = np.asarray(n, dtype=np.float64)
        return _usl(n_arr, self.sigma, self.kappa, self.lam)

    def __str__(self) -> str:
        return (
            f"USL σ={self.sigma:.6g} κ={self.kappa:.6g} λ={self.lam:.6g}: "
            f"peak at N*={self.peak:.4g} ({self.peak_throughput:.4g}/s); "
            f"residual SE {self.residual_se:.4g}, R² {self.r2:.4f}"
        )


def _usl(
    n: npt.NDArray[np.float64], sigma: float, kappa: float, lam: float
) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))
    return out


def fit_usl(
    concurrency: Sequence[float] | npt.NDArray[np.float64],
    throughput: Sequence[float] | npt.NDArray[np.float64],
) -> USL:
    """Fits the Universal Scalability Law to ``(concurrency, throughput)`` points (at least 3,
    concurrency >= 1) by bounded Levenberg–Marquardt least squares on the throughput scale,
    started from the linearised fit. Matches R's ``usl`` package (``nls``) on its published
    datasets to 1e-4 relative."""
    n = np.asarray(concurrency, dtype=np.float64)
    x = np.asarray(throughput, dtype=np.float64)
    if n.shape != x.shape or n.ndim != 1:
        raise ValueError("concurrency and throughput must be sequences of the same length")
    if len(n) < 3:
        raise ValueError(f"a USL fit needs at least 3 points, got {len(n)}")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(x))):
        raise ValueError("concurrency and throughput must be finite numbers")
    if np.any(n < 1) or np.any(x <= 0):
        raise ValueError("concurrency must be >= 1 and throughput > 0")

    # Start: λ from the best throughput per unit of concurrency at the lowest load, then σ and κ
    # from the linear form N·λ/X − 1 = σ(N−1) + κN(N−1).
    lam = float(np.max(x[n == n.min()] / n.min()))
    design = np.column_stack([n - 1, n * (n - 1)])
    target = n * lam / x - 1
    coef = np.linalg.lstsq(design, target, rcond=None)[0] if np.any(n > 1) else np.zeros(2)
    p = np.array([np.clip(coef[0], 0, 1), np.clip(coef[1], 0, 1), lam])

    def residuals(q: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return x - _usl(n, q[0], q[1], q[2])

    def jacobian(q: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        s, k, lm = q
        d = 1 + s * (n - 1) + k * n * (n - 1)
        # d(residual)/dq = -d(model)/dq
        return np.column_stack([lm * n * (n - 1) / d**2, lm * n * n * (n - 1) / d**2, -n / d])

    lower, upper = np.array([0.0, 0.0, 0.0]), np.array([1.0, 1.0, np.inf])
    damping = 1e-3
    sse = float(residuals(p) @ residuals(p))
    for _ in range(2000):
        r, j = residuals(p), jacobian(p)
        jtj, jtr = j.T @ j, j.T @ r
        scale = np.diag(jtj).copy()
        scale[scale == 0] = 1.0
        improved = False
        while damping < 1e16:
            step = np.linalg.solve(jtj + damping * np.diag(scale), -jtr)
            trial = np.clip(p + step, lower, upper)
            rt = residuals(trial)
            trial_sse = float(rt @ rt)
            if trial_sse < sse:
                converged = (sse - trial_sse) <= 1e-15 * max(sse, 1e-300) or np.all(
                    np.abs(trial - p) <= 1e-12 * (np.abs(p) + 1e-12)
                )
                p, sse, damping, improved = trial, trial_sse, max(damping / 10, 1e-12), True
                break
            damping *= 10
        if not improved or converged:
            break

    dof = len(n) - 3
    total = float(((x - x.mean()) ** 2).sum())
    return USL(
        sigma=float(p[0]),
        kappa=float(p[1]),
        lam=float(p[2]),
        points=len(n),
        residual_se=math.sqrt(sse / dof) if dof > 0 else math.nan,
        r2=1 - sse / total if total > 0 else math.nan,
    )


# --------------------------------------------------------------------------------------------
# Levels of a step or ramp run


@dataclass(frozen=True)
class Level:
    """One plateau of offered load (a step, a constant stage, or a window of a ramp) and what
    the run measured over its full intervals (after ``settle_s``)."""

    index: int
    start_s: float
    end_s: float
    offered: float
    """Requests per second offered (open model) or virtual users (closed model)."""
    complete: bool
    """The run covered the whole level (a stopped run's last level may be partial)."""
    requests: int
    errors: int
    error_rate: float
    missed: int
    achieved_rps: float
    """Iterations that ended per second, what ``offered`` counts (for tasks of one request,
    requests per second)."""
    concurrency: float
    """Closed model: the users; open model: mean requests in flight (Little's law, X·R)."""
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per metric (``p50``..``p999``, ``mean``, ``error_rate``), its 95% confidence interval
    ``(low, high)`` from a block bootstrap over the level's seconds (as ``compare`` judges runs);
    a level of one second has its point as both bounds."""

    def bounds(self, metric: str) -> tuple[float, float] | None:
        """The metric's confidence interval, or its point twice; None without data."""
        if metric in self.ci and not any(math.isnan(x) for x in self.ci[metric]):
            return self.ci[metric]
        v = _level_value(self, metric)
        return None if v is None else (v, v)


def _segments(stages: Sequence[Stage], window_s: float) -> list[tuple[float, float, float]]:
    """(start_s, end_s, level) plateaus of a profile, from the engine's own pieces (a step's
    plateaus, a spike's three parts); ramps are cut into windows at their mid value."""
    out: list[tuple[float, float, float]] = []
    for t0, t1, a, b in shape(stages).segments():
        if a == b:
            out.append((t0, t1, a))
            continue
        pieces = max(1, round((t1 - t0) / window_s))
        width = (t1 - t0) / pieces
        for i in range(pieces):
            mid = (i + 0.5) / pieces
            out.append((t0 + i * width, t0 + (i + 1) * width, a + (b - a) * mid))
    return out


# --------------------------------------------------------------------------------------------
# SLOs


_SLO_ALIASES = {"errors": "error_rate", "error": "error_rate", "p99.9": "p999"}


def parse_slo(text: str) -> list[Threshold]:
    """``"p99 < 50ms and errors < 0.1%"``: clauses joined by ``and`` or commas, each a metric
    (``p50``..``p999``, ``max``, ``mean``, ``errors``/``error_rate``), a comparison and a
    value."""
    clauses = [c.strip() for c in re.split(r"\band\b|,|&&", text) if c.strip()]
    if not clauses:
        raise PlanError(f"empty SLO {text!r} (write it like 'p99 < 50ms and errors < 0.1%')")
    out = []
    for c in clauses:
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(.*)$", c)
        name = m.group(1) if m else c
        rest = m.group(2) if m else ""
        metric = _SLO_ALIASES.get(name, name)
        if metric == "rps":
            raise PlanError(f"SLO clause {c!r}: the rate is what capacity planning finds")
        try:
            out.append(parse_cli(f"{metric}{rest}"))
        except PlanError as e:
            raise PlanError(f"SLO {text!r}: {e}") from None
    return out


def _level_value(level: Level, metric: str) -> float | None:
    if metric == "error_rate":
        return level.error_rate
    if metric in LATENCY and metric != "p95":
        v: float | None = getattr(level, f"{metric}_ms")
        return v
    raise PlanError(f"capacity SLOs take p50, p90, p99, p999, max, mean or errors, not {metric}")


@dataclass(frozen=True)
class Sustainable:
    """The highest offered rate that met the SLO for a whole level, with its evidence.
    ``float(result)`` is the rate (0 when no level met it)."""

    rps: float
    slo: str
    level: Level | None
    """The level that set the figure."""
    failed: Level | None
    """The first level above it that did not meet the SLO (None: none did)."""
    reason: str
    """Why ``failed`` failed, or why nothing passed."""

    def __float__(self) -> float:
        return self.rps

    def __str__(self) -> str:
        if self.level is None:
            return f"no level met {self.slo!r}: {self.reason}"
        lv = self.level
        head = (
            f"{self.rps:g} rps met {self.slo!r} for a whole level "
            f"({lv.start_s:g}-{lv.end_s:g} s: achieved {lv.achieved_rps:.1f} rps, "
            f"p99 {_fmt_ms(lv.p99_ms)}, errors {lv.error_rate * 100:.3g}%)"
        )
        if self.failed is not None:
            head += f"; {self.failed.offered:g} rps did not: {self.reason}"
        return head


def judge_clauses(
    rules: Sequence[Threshold], figures: dict[str, tuple[float, float, float] | None]
) -> tuple[list[str], list[str]]:
    """Each SLO clause judged on its metric's ``(point, low, high)`` (``None``: no data): the
    clauses the whole interval fails, and those whose interval straddles the limit, each as a
    line that says why. A NaN interval is the point alone."""
    failures, unsure = [], []
    for r in rules:
        f = figures.get(r.metric)
        if f is None or math.isnan(f[0]):
            failures.append(f"{r.metric} no data")
            continue
        point, low, high = f
        bounds = (point, point) if math.isnan(low) else (low, high)
        ok = [_OPS[r.op](x, r.value) for x in bounds]
        need = f"needs {r.op} {r.text.lstrip('<>= ').strip()}"
        if not any(ok):
            failures.append(f"{r.metric} {_shown(r.metric, point)} ({need})")
        elif not all(ok):
            unsure.append(
                f"{r.metric} {_shown(r.metric, point)}, interval {_shown(r.metric, bounds[0])}–"
                f"{_shown(r.metric, bounds[1])} ({need})"
            )
    return failures, unsure


def _shown(metric: str, v: float) -> str:
    return f"{v * 100:.3g}%" if metric == "error_rate" else f"{v:.2f} ms"


def _fmt_ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f} ms"


# --------------------------------------------------------------------------------------------
# The analysis


class Capacity:
    """Levels of offered load and what each achieved; see :func:`capacity`."""

    def __init__(self, run: RunResult, levels: list[Level], model: str, follow: float) -> None:
        self.run = run
        self.levels = levels
        self.model = model
        self.follow = follow

    @property
    def frame(self) -> pl.DataFrame:
        rows = [{k: v for k, v in asdict(lv).items() if k != "ci"} for lv in self.levels]
        return pl.DataFrame(
            rows,
            schema={
                "index": pl.Int64,
                "start_s": pl.Float64,
                "end_s": pl.Float64,
                "offered": pl.Float64,
                "complete": pl.Boolean,
                "requests": pl.Int64,
                "errors": pl.Int64,
                "error_rate": pl.Float64,
                "missed": pl.Int64,
                "achieved_rps": pl.Float64,
                "concurrency": pl.Float64,
                "p50_ms": pl.Float64,
                "p90_ms": pl.Float64,
                "p99_ms": pl.Float64,
                "p999_ms": pl.Float64,
                "max_ms": pl.Float64,
                "mean_ms": pl.Float64,
            },
        )

    def _follows(self, lv: Level) -> bool:
        # Closed model: offered is users, so any throughput "follows".
        return self.model == "closed" or lv.achieved_rps >= self.follow * lv.offered

    def knee(self, *, latency_factor: float = 2.0, percentile: str = "p99") -> Level | None:
        """The first complete level from which on throughput no longer follows the offered rate
        (achieved below ``follow`` × offered, open model) or the ``percentile`` latency stays
        above ``latency_factor`` × its value at the lowest loaded level: judged on the lower
        bound of each level's confidence interval, and only where every higher level agrees, so
        one level that blipped (a second of a busy machine) is not a knee. None: no knee seen."""
        levels = [lv for lv in self.levels if lv.complete and lv.requests > 0]
        if not levels:
            return None
        base = _level_value(levels[0], percentile)

        def saturated(lv: Level) -> bool:
            if not self._follows(lv):
                return True
            b = lv.bounds(percentile)
            return base is not None and b is not None and b[0] > latency_factor * base

        for i, lv in enumerate(levels[1:], start=1):
            if all(saturated(x) for x in levels[i:]):
                return lv
        return None

    def _judged(self, lv: Level, rules: list[Threshold]) -> tuple[str, list[str]]:
        """``met``, ``uncertain`` (an interval straddles a limit) or ``failed``, and why."""
        figures: dict[str, tuple[float, float, float] | None] = {}
        for r in rules:
            b, point = lv.bounds(r.metric), _level_value(lv, r.metric)
            figures[r.metric] = None if b is None or point is None else (point, *b)
        failures, unsure = judge_clauses(rules, figures)
        if not self._follows(lv):
            failures.append(f"achieved {lv.achieved_rps:.1f} rps < {self.follow:.0%} of offered")
        if failures:
            return "failed", failures
        return ("uncertain", unsure) if unsure else ("met", [])

    def sustainable(self, slo: str) -> Sustainable:
        """The highest offered rate that met ``slo`` (e.g. ``"p99 < 50ms and errors <
        0.1%"``) over a whole level, below the first level from which on every level failed it
        (throughput following the offered rate counts, open model). Each level is judged on
        its confidence interval: it failed when the interval lies beyond a limit, met it when
        the interval lies within; a level whose interval straddles a limit is not counted as
        met. A level that failed and was followed by one that met it (a blip) does not end
        the search."""
        rules = parse_slo(slo)
        levels = [lv for lv in self.levels if lv.complete and lv.offered > 0]
        judged = [self._judged(lv, rules) for lv in levels]
        end = len(levels)
        for i in range(len(levels)):
            if all(state == "failed" for state, _ in judged[i:]):
                end = i
                break
        met = [
            lv for lv, (state, _) in zip(levels[:end], judged[:end], strict=True) if state == "met"
        ]
        best = met[-1] if met else None
        rps = best.offered if best is not None else 0.0
        if end < len(levels):
            return Sustainable(rps, slo, best, levels[end], "; ".join(judged[end][1]))
        if best is None:
            unsure = [w for state, why in judged if state == "uncertain" for w in why]
            why = "; ".join(unsure) if unsure else "the run has no complete level with load"
            return Sustainable(0.0, slo, None, None, why)
        return Sustainable(best.offered, slo, best, None, "every complete level met it")

    def usl(self) -> USL:
        """A USL fit of achieved throughput against concurrency over the complete levels
        (users in a closed model; mean requests in flight in an open one)."""
        pts = [lv for lv in self.levels if lv.complete and lv.requests > 0 and lv.concurrency >= 1]
        return fit_usl([lv.concurrency for lv in pts], [lv.achieved_rps for lv in pts])

    def __repr__(self) -> str:
        return f"<Capacity {len(self.levels)} levels of {self.run.plan.name!r}>"


def capacity(
    run: RunResult,
    *,
    window_s: float = 5.0,
    settle_s: float = 1.0,
    follow: float = 0.95,
) -> Capacity:
    """Cuts ``run`` into levels of offered load from its plan (each step, constant stage or
    spike phase; ramps in windows of ``window_s``) and measures each over its full intervals,
    skipping the first ``settle_s`` seconds of each (and the run's last second when its level
    has others: it also holds what completed while the run drained), with exact percentiles
    from the added histograms. ``follow`` is the share of the offered rate the achieved rate
    must reach for a level to count as sustained (open model)."""
    if window_s <= 0 or settle_s < 0 or not 0 < follow <= 1:
        raise ValueError("window_s must be > 0, settle_s >= 0 and follow in (0, 1]")
    model = run.plan.load.model
    m = run.metrics
    per = (
        m.group_by("elapsed_s")
        .agg(
            pl.col("interval_s").first(),
            pl.col("requests").sum(),
            pl.col("errors").sum(),
            pl.col("missed").sum(),
            pl.col("in_flight").max(),
            # What the offered rate counts (a task of two requests: one iteration).
            _store.ITERATIONS.sum().alias("iterations"),
        )
        .sort("elapsed_s")
    )
    covered = float((per["elapsed_s"] + per["interval_s"]).to_numpy().max()) if len(per) else 0.0
    # The run's last second also holds what completed while the run drained after its planned
    # end (an overloaded server may answer for seconds more): a level leaves it out when it
    # has other seconds to go by.
    last_second = float(per["elapsed_s"].max()) if len(per) else -1.0  # type: ignore[arg-type]
    levels: list[Level] = []
    for i, (a, b, offered) in enumerate(_segments(run.plan.load.stages, window_s)):
        lo = a + min(settle_s, (b - a) / 2)
        rows = per.filter(
            (pl.col("elapsed_s") >= lo - 1e-6)
            & (pl.col("elapsed_s") + pl.col("interval_s") <= b + 1e-6)
        )
        if len(rows) > 1:
            rows = rows.filter(pl.col("elapsed_s") != last_second)
        seconds = float(rows["interval_s"].sum()) if len(rows) else 0.0
        requests = int(rows["requests"].sum()) if len(rows) else 0
        errors = int(rows["errors"].sum()) if len(rows) else 0
        last = float(rows["elapsed_s"].max()) if len(rows) else 0.0  # type: ignore[arg-type]
        h = run.histogram(start=lo - 1e-6, end=last + 1e-6) if len(rows) else None
        iterations = int(rows["iterations"].sum()) if len(rows) else 0
        achieved = iterations / seconds if seconds else 0.0
        mean = h.mean if h is not None else None
        if model == "closed":
            conc = offered
        else:
            # Requests in flight, on average: each request's own latency (Little's law).
            conc = (requests / seconds if seconds else 0.0) * (mean or 0.0) / 1000.0
        ci: dict[str, tuple[float, float]] = {}
        if len(rows) >= 2:
            counts = {
                float(t): (float(r), float(e))
                for t, r, e in rows.select("elapsed_s", "requests", "errors").iter_rows()
            }
            seconds_h = [
                (counts[t], h)
                for t, h in run.interval_histograms(start=lo - 1e-6, end=last + 1e-6)
                if t in counts
            ]
            if len(seconds_h) >= 2:
                figures = intervals(
                    [h for _, h in seconds_h],
                    [c[0] for c, _ in seconds_h],
                    [c[1] for c, _ in seconds_h],
                )
                ci = {m: (low, high) for m, (_, low, high) in figures.items()}
        levels.append(
            Level(
                ci=ci,
                index=i,
                start_s=a,
                end_s=b,
                offered=offered,
                complete=covered >= b - 1e-6 and seconds > 0,
                requests=requests,
                errors=errors,
                error_rate=errors / requests if requests else 0.0,
                missed=int(rows["missed"].sum()) if len(rows) else 0,
                achieved_rps=achieved,
                concurrency=conc,
                p50_ms=h.percentile(50) if h else None,
                p90_ms=h.percentile(90) if h else None,
                p99_ms=h.percentile(99) if h else None,
                p999_ms=h.percentile(99.9) if h else None,
                max_ms=h.max if h else None,
                mean_ms=mean,
            )
        )
    return Capacity(run, levels, model, follow)


def max_sustainable_rps(
    run: RunResult, slo: str = "p99 < 50ms and errors < 0.1%", **options: float
) -> Sustainable:
    """The highest offered rate of ``run`` (a step or ramp run) that met ``slo`` for a whole
    level; ``float()`` of the result is the number, the rest is the evidence. ``options`` go
    to :func:`capacity`."""
    return capacity(run, **options).sustainable(slo)
