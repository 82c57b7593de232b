"""The capacity search: the highest rate at which the system meets an SLO, found by running
levels of an open model the tool chooses.

Levels grow geometrically (``growth``×) from ``start_rate`` until one fails, then the gap between
the highest level that met the SLO and the lowest that failed is bisected until it is within
``tolerance`` of the former; the answer is then confirmed by a longer run. Each level is an
ordinary run (its own directory under the search's), judged on its seconds after ``settle_s``:
each SLO clause on its 95% confidence interval (the block bootstrap ``compare`` uses, percentiles
exact from the level's histograms). A level whose interval straddles a limit runs again, its
seconds judged together, until ``max_level_s``; still undecided, it counts as not met. A level
whose run is not ``valid`` (``suspect`` or ``invalid``: it may have measured the load generator,
docs/validity.md) is refused and stops the search: the generator, not the system, was the
limit.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from loadpilot.analysis.comparing import intervals
from loadpilot.analysis.planning import _shown, judge_clauses, parse_slo
from loadpilot.errors import PlanError
from loadpilot.launch import start
from loadpilot.plan import Plan
from loadpilot.profiles import constant
from loadpilot.running import store as _store
from loadpilot.running.runs import Run, RunResult
from loadpilot.scenarios.scenario import Scenario, VUser
from loadpilot.thresholds import Threshold

if TYPE_CHECKING:
    import altair as alt

    from loadpilot.cluster.coordinator import Agents

State = Literal["met", "failed", "uncertain", "invalid"]
Limit = Literal["system", "generator", "max_rate", "below_start", "interrupted"]

#: The metrics an SLO of the search may name (a confidence interval exists for each).
SLO_METRICS = ("p50", "p90", "p99", "p999", "mean", "error_rate")


@dataclass(frozen=True)
class SearchLevel:
    """One rate the search ran, and how it judged it."""

    index: int
    rate: float
    phase: Literal["grow", "bisect", "confirm"]
    state: State
    why: str
    seconds: float
    """Seconds judged (after each run's settling second), over every run of the level."""
    achieved_rps: float
    """Iterations that ended per second, what ``rate`` counts (for tasks of one request,
    requests per second)."""
    figures: dict[str, tuple[float, float, float]]
    """Per SLO metric: ``(point, low, high)``, the 95% interval."""
    validity: str
    """The worst validity verdict of the level's runs."""
    runs: list[str] = field(default_factory=list)
    """The level's run directories (more than one when it ran longer)."""


@dataclass
class CapacitySearch:
    """What :func:`find_capacity` found: ``rate`` (the highest rate shown to meet the SLO,
    confirmed by a longer run; 0 if none), between ``low`` and ``high`` (the lowest rate shown to
    fail it; None when none did), why the search stopped (``limit``), and the evidence, one
    entry per level (``levels``, ``evidence`` as a frame)."""

    slo: str
    tolerance: float
    rate: float
    low: float
    high: float | None
    limit: Limit
    levels: list[SearchLevel]
    path: Path
    message: str

    @property
    def evidence(self) -> pl.DataFrame:
        """One row per level run: its rate, phase, state, why, seconds judged, achieved rate,
        each SLO metric with its interval, validity and run directories."""
        rows: list[dict[str, Any]] = []
        for lv in self.levels:
            row: dict[str, Any] = {
                "index": lv.index, "rate": lv.rate, "phase": lv.phase, "state": lv.state,
                "seconds": lv.seconds, "achieved_rps": lv.achieved_rps, "validity": lv.validity,
            }  # fmt: skip
            for m, (p, lo, hi) in lv.figures.items():
                row[m], row[f"{m}_low"], row[f"{m}_high"] = p, lo, hi
            row["why"] = lv.why
            row["runs"] = ", ".join(lv.runs)
            rows.append(row)
        return pl.DataFrame(rows, infer_schema_length=None)

    def chart(self) -> alt.LayerChart | alt.FacetChart:
        """Each level's first SLO latency (point and interval) against its rate, coloured by its
        state; the SLO's limit and the answer as rules."""
        import altair as alt

        rules = parse_slo(self.slo)
        lat = next((r for r in rules if r.metric != "error_rate"), rules[0])
        m = lat.metric
        scale = 100.0 if m == "error_rate" else 1.0
        unit = "%" if m == "error_rate" else "ms"
        data = pl.DataFrame(
            [
                {
                    "rate": lv.rate,
                    "state": lv.state,
                    "phase": lv.phase,
                    "level": lv.index,
                    "value": lv.figures[m][0] * scale,
                    "low": lv.figures[m][1] * scale,
                    "high": lv.figures[m][2] * scale,
                }  # fmt: skip
                for lv in self.levels
                if m in lv.figures and not math.isnan(lv.figures[m][0])
            ],
            schema={
                "rate": pl.Float64,
                "state": pl.String,
                "phase": pl.String,
                "level": pl.Int64,
                "value": pl.Float64,
                "low": pl.Float64,
                "high": pl.Float64,
            },  # fmt: skip
        )
        colour = alt.Color(
            "state:N",
            scale=alt.Scale(
                domain=["met", "uncertain", "failed", "invalid"],
                range=["#2e7d32", "#f9a825", "#c62828", "#6a1b9a"],
            ),
        )
        x = alt.X("rate:Q", title="offered rate (requests/s)", scale=alt.Scale(type="log"))
        y = alt.Y("value:Q", title=f"{m} ({unit})", scale=alt.Scale(type="log"))
        base = alt.Chart(data)
        points = base.mark_point(filled=True, size=70).encode(
            x=x,
            y=y,
            color=colour,
            tooltip=["level", "rate", "phase", "state", "value", "low", "high"],
        )
        bars = base.mark_rule().encode(x=x, y="low:Q", y2="high:Q", color=colour)
        limit = (
            alt.Chart(pl.DataFrame({"v": [lat.value * scale]}))
            .mark_rule(strokeDash=[4, 4], color="#555")
            .encode(y="v:Q")
        )
        layers = [bars, points, limit]
        if self.rate > 0:
            layers.append(
                alt.Chart(pl.DataFrame({"r": [self.rate]}))
                .mark_rule(color="#1565c0")
                .encode(x="r:Q")
            )
        return alt.layer(*layers).properties(
            title=f"capacity: {self.rate:g} requests/s for {self.slo}", width=640, height=320
        )

    def report(self, path: str | Path) -> Path:
        """One self-contained HTML file: the answer, the chart, the levels."""
        from loadpilot.analysis.reporting import _banner, _Page

        page = _Page()
        state = {"system": "pass", "max_rate": "pass", "generator": "invalid"}.get(
            self.limit, "fail"
        )
        page.add(
            _banner(
                state, f"{self.rate:g}/s", f"LoadPilot capacity search: {self.slo}",
                f"{len(self.levels)} levels · directory {html.escape(str(self.path))}",
                [self.message],
            )
        )  # fmt: skip
        if self.levels:
            page.chart(self.chart())
        head = ["level", "rate", "phase", "state", "seconds", "achieved/s", "validity", "why"]
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(c))}</td>"
                for c in (
                    lv.index,
                    f"{lv.rate:g}",
                    lv.phase,
                    lv.state,
                    f"{lv.seconds:g}",
                    f"{lv.achieved_rps:,.1f}",
                    lv.validity,
                    lv.why,
                )
            )  # fmt: skip
            + "</tr>"
            for lv in self.levels
        )
        page.add(
            "<h2>Levels</h2><table><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in head)
            + f"</tr></thead><tbody>{rows}</tbody></table>"
        )
        out = Path(path)
        out.write_text(page.html(f"capacity: {self.slo}"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "slo": self.slo, "tolerance": self.tolerance, "rate": self.rate, "low": self.low,
            "high": self.high, "limit": self.limit, "message": self.message,
            "levels": [asdict(lv) for lv in self.levels],
        }  # fmt: skip

    def __str__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        return f"<p><strong>{html.escape(self.message)}</strong></p>" + self.evidence._repr_html_()


class _Interrupted(Exception):
    pass


def _judge(
    runs: list[RunResult], rate: float, rules: list[Threshold], settle_s: float, follow: float
) -> tuple[State, str, float, float, dict[str, tuple[float, float, float]], str]:
    """A level's state over the seconds of its runs (each after ``settle_s``, without its last
    second, which holds the drain): ``(state, why, seconds, achieved, figures, validity)``."""
    hists, requests, errors, iterations = [], [], [], []
    seconds = 0.0
    worst = "valid"
    order = {"valid": 0, "suspect": 1, "invalid": 2}
    doubts: list[str] = []
    for run in runs:
        s = run.summary()
        if s.validity is not None and order[s.validity.verdict] > order[worst]:
            worst = s.validity.verdict
        if s.validity is not None:
            doubts += [r.text for r in s.validity.reasons if r.level != "info"]
        m = run.metrics
        per = (
            m.group_by("elapsed_s")
            .agg(
                pl.col("interval_s").first(),
                pl.col("requests").sum(),
                pl.col("errors").sum(),
                # What the offered rate counts (a task of two requests: one iteration).
                _store.ITERATIONS.sum().alias("iterations"),
            )
            .sort("elapsed_s")
        )
        end = s.planned_duration_s
        keep = per.filter(
            (pl.col("elapsed_s") >= settle_s - 1e-6)
            & (pl.col("elapsed_s") + pl.col("interval_s") <= end + 1e-6)
            & (pl.col("interval_s") >= 0.999)
        )
        counts = {float(t): (r, e, i) for t, _, r, e, i in keep.iter_rows()}
        for t, h in run.interval_histograms():
            if t in counts:
                hists.append(h)
                requests.append(float(counts[t][0]))
                errors.append(float(counts[t][1]))
                iterations.append(float(counts[t][2]))
                seconds += 1.0
    if worst != "valid":
        # Suspect or invalid: what it measured may be the generator's; it is not judged.
        why = f"{worst}: " + ("; ".join(dict.fromkeys(doubts)) or "the run measured the generator")
        return "invalid", why, seconds, 0.0, {}, worst
    achieved = sum(iterations) / seconds if seconds else 0.0
    if not hists:
        return "failed", "no whole second to judge", seconds, achieved, {}, worst
    metrics = sorted({r.metric for r in rules} | {"p99"}, key=SLO_METRICS.index)
    figures = intervals(hists, requests, errors, metrics)
    failures, unsure = judge_clauses(rules, dict(figures))
    # Poisson arrivals bring their own noise: a count over these seconds strays by its square
    # root, so a level falls short only past three of those (uniform arrivals are exact).
    poisson = getattr(runs[0].plan.load, "arrivals", "uniform") == "poisson"
    slack = 3 * math.sqrt(rate / seconds) if poisson and seconds else 0.0
    if achieved < follow * rate - slack:
        failures.append(f"achieved {achieved:,.1f}/s < {follow:.0%} of {rate:g}/s")
    if failures:
        return "failed", "; ".join(failures), seconds, achieved, figures, worst
    if unsure:
        return "uncertain", "; ".join(unsure), seconds, achieved, figures, worst
    return (
        "met",
        "met: " + ", ".join(f"{r.metric} {_shown(r.metric, figures[r.metric][0])}" for r in rules),
        seconds,
        achieved,
        figures,
        worst,
    )


def _default_dir(name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
    return Path("runs") / f"{stamp}-capacity-{slug}"


def find_capacity(
    what: Plan | Scenario | type[VUser],
    *,
    target: str | None = None,
    slo: str = "p99 < 50ms and errors < 0.1%",
    tolerance: float = 0.05,
    start_rate: float = 10.0,
    max_rate: float = 100_000.0,
    level_s: float = 10.0,
    max_level_s: float = 30.0,
    confirm_s: float | None = None,
    growth: float = 2.0,
    settle_s: float = 1.0,
    follow: float = 0.95,
    out: str | Path | None = None,
    agents: int | Agents | None = None,
    on_level: Callable[[SearchLevel], None] | None = None,
) -> CapacitySearch:
    """Finds the highest rate at which ``what`` (a scenario, its class, or a plan) meets ``slo``
    (``"p99 < 50ms and errors < 0.1%"``) against ``target``, to within ``tolerance`` (a share
    of the rate): open-model levels of ``level_s`` seconds the tool chooses (see the module's
    text), each an ordinary run directory under ``out``; the answer confirmed by a run of
    ``confirm_s`` (3 × ``level_s``). ``agents`` spreads each level over agents.
    ``on_level(level)`` is called as each level is judged. Ctrl-C keeps the levels done and
    returns the best bound so far (``limit == "interrupted"``)."""
    rules = parse_slo(slo)
    bad = [r.metric for r in rules if r.metric not in SLO_METRICS]
    if bad:
        raise PlanError(f"SLO {slo!r}: the search judges {', '.join(SLO_METRICS)}, not {bad[0]}")
    if not 0 < tolerance < 1:
        raise PlanError(f"tolerance {tolerance}: a share of the rate between 0 and 1 (0.05: 5%)")
    if not 0 < start_rate <= max_rate:
        raise PlanError(
            f"max rate {max_rate:g}/s is below the first level ({start_rate:g}/s): raise it, "
            "or lower the start rate"
        )
    if growth <= 1:
        raise PlanError(f"growth {growth}: each level must be more than the last (2: doubling)")
    if level_s < settle_s + 2:
        raise PlanError(
            f"a level of {level_s:g} s leaves too little to judge after {settle_s:g} s to "
            f"settle: give at least {settle_s + 2:g} s"
        )
    confirm = confirm_s if confirm_s is not None else 3 * level_s
    name = what.name if isinstance(what, Plan | Scenario) else getattr(what, "__name__", "scenario")
    root = Path(out) if out is not None else _default_dir(name)
    if root.exists() and any(root.iterdir()):
        raise PlanError(f"{root}: already holds files; choose another directory for the search")
    root.mkdir(parents=True, exist_ok=True)
    levels: list[SearchLevel] = []

    def run_level(
        rate: float, seconds: float, phase: Literal["grow", "bisect", "confirm"]
    ) -> SearchLevel:
        runs: list[RunResult] = []
        while True:
            label = f"{len(levels) + 1:02d}-{rate:g}rps" + (f"-{len(runs) + 1}" if runs else "")
            profile = constant(rps=rate, duration=f"{seconds}s")
            r: Run | None = None
            try:
                r = start(what, root / label, target=target, profile=profile, agents=agents)
                r.wait()
            except KeyboardInterrupt:
                # The level cut short stays on disk, stopped; it is not judged.
                if r is not None and not r.done:
                    r.stop()
                raise _Interrupted from None
            assert r is not None
            runs.append(r)
            state, why, secs, achieved, figures, validity = _judge(
                runs, rate, rules, settle_s, follow
            )
            if (
                state != "uncertain"
                or phase == "confirm"
                or sum(x.summary().duration_s for x in runs) + seconds > max_level_s + 1e-9
            ):
                break
        if state == "uncertain":
            why += f" (still undecided after {secs:g} s: not shown to meet the SLO)"
        lv = SearchLevel(
            index=len(levels) + 1, rate=rate, phase=phase, state=state, why=why, seconds=secs,
            achieved_rps=achieved, figures=figures, validity=validity,
            runs=[str(x.path) for x in runs],
        )  # fmt: skip
        levels.append(lv)
        if on_level is not None:
            on_level(lv)
        return lv

    low: float = 0.0
    high: float | None = None
    limit: Limit = "system"
    rate = start_rate
    try:
        # Grow until a level fails.
        while True:
            lv = run_level(rate, level_s, "grow")
            if lv.state == "invalid":
                limit = "generator"
                break
            if lv.state == "met":
                low = rate
                if rate >= max_rate:
                    limit = "max_rate"
                    break
                rate = min(rate * growth, max_rate)
            else:
                high = rate
                break
        if limit == "system" and low == 0:
            limit = "below_start"
        # Bisect, then confirm (a confirmation that fails reopens the gap below it).
        for _attempt in range(3):
            if limit != "system" or high is None:
                break
            while high - low > tolerance * low:
                mid = round((low + high) / 2, 1)
                lv = run_level(mid, level_s, "bisect")
                if lv.state == "invalid":
                    limit = "generator"
                    break
                if lv.state == "met":
                    low = mid
                else:
                    high = mid
            if limit != "system":
                break
            lv = run_level(low, confirm, "confirm")
            if lv.state == "invalid":
                limit = "generator"
                break
            if lv.state == "met":
                break
            high = low
            below = [x.rate for x in levels if x.state == "met" and x.rate < low]
            low = max(below) if below else 0.0
            if low == 0:
                limit = "below_start"
                break
    except (_Interrupted, KeyboardInterrupt):
        limit = "interrupted"
    confirmed = any(x.phase == "confirm" and x.state == "met" and x.rate == low for x in levels)
    answer = 0.0 if limit == "below_start" else low
    message = _message(slo, answer, low, high, limit, start_rate, max_rate, levels)
    if limit == "system" and not confirmed:
        message += " (the longer confirming runs did not agree: not confirmed)"
    result = CapacitySearch(slo, tolerance, answer, low, high, limit, levels, root, message)
    (root / "capacity.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _message(
    slo: str,
    answer: float,
    low: float,
    high: float | None,
    limit: Limit,
    start_rate: float,
    max_rate: float,
    levels: list[SearchLevel],
) -> str:
    if limit == "below_start":
        return (
            f"capacity below {start_rate:g} requests/s: the first level did not meet {slo!r} "
            f"({levels[0].why if levels else 'no level ran'}); lower the start rate"
        )
    if limit == "max_rate":
        return (
            f"capacity at least {max_rate:g} requests/s (the max rate) for {slo!r}: raise "
            "--max-rate to look further"
        )
    if limit == "generator":
        bad = next(x for x in reversed(levels) if x.state == "invalid")
        return (
            f"the load generator, not the system, was the limit at {bad.rate:g} requests/s "
            f"({bad.why}); capacity at least {low:g} requests/s for {slo!r}: add agents "
            "(--agents N) or give the generator its own CPUs"
        )
    if limit == "interrupted":
        above = f", below {high:g}" if high is not None else ""
        return f"interrupted: {slo!r} met at {low:g} requests/s{above} so far"
    return (
        f"capacity {answer:g} requests/s for {slo!r}: met at {low:g}/s, failed at "
        f"{high:g}/s, {len(levels)} levels"
    )
