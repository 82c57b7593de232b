"""Capacity planning: the USL fit against published results, and levels, knee and sustainable
rate from real step runs against a built-in target with a fixed pool of workers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import loadpilot as lp
from loadpilot.analysis.planning import Capacity, Level, parse_slo
from tests.conftest import busy, get

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow


def golden(name: str) -> pl.DataFrame:
    """Published datasets with published fits (provenance: tests/data/README.md)."""
    return pl.read_csv(Path(__file__).parent / "data" / name)


def test_usl_fit_matches_the_r_package_on_specsdm91() -> None:
    # Published by R's `usl` package (its own tests use a relative tolerance of 1e-4).
    d = golden("r_usl_specsdm91.csv")
    fit = lp.fit_usl(d["load"].to_list(), d["throughput"].to_list())
    assert fit.peak == pytest.approx(96.51956, rel=1e-4)
    assert fit.optimal == pytest.approx(36.06401, rel=1e-4)
    assert fit.limit == pytest.approx(3245.589, rel=1e-4)
    assert fit.sigma == pytest.approx(0.0277285, rel=1e-4)
    assert fit.kappa == pytest.approx(0.0001044, rel=1e-3)  # printed to 4 significant digits
    assert fit.lam == pytest.approx(89.9952330, rel=1e-4)
    assert fit.residual_se == pytest.approx(82.8, rel=1e-3)
    assert fit.peak_throughput == pytest.approx(float(fit.predict(fit.peak)))


def test_usl_fit_matches_the_r_package_on_the_raytracer_rows_1_to_6() -> None:
    d = golden("r_usl_raytracer.csv").head(6)
    fit = lp.fit_usl(d["processors"].to_list(), d["throughput"].to_list())
    assert fit.sigma == pytest.approx(0.02444, rel=1e-3)
    assert fit.kappa == pytest.approx(0.00163, rel=5e-3)
    assert fit.lam == pytest.approx(20.85605, rel=1e-4)


def test_usl_fit_recovers_known_coefficients_and_rejects_bad_input() -> None:
    n = [1, 2, 4, 8, 16, 32, 64]
    truth = lp.USL(sigma=0.05, kappa=0.002, lam=100.0, points=0, residual_se=0, r2=1)
    fit = lp.fit_usl(n, truth.predict(n).tolist())
    assert (fit.sigma, fit.kappa, fit.lam) == pytest.approx((0.05, 0.002, 100.0), rel=1e-6)
    assert fit.peak == pytest.approx(math.sqrt(0.95 / 0.002), rel=1e-6)
    # Linear scaling: no contention, no coherency, an unbounded peak.
    linear = lp.fit_usl([1, 2, 3, 4], [10, 20, 30, 40])
    assert linear.sigma == pytest.approx(0, abs=1e-9) and math.isinf(linear.peak)
    for bad in (([1, 2], [1, 2]), ([0, 1, 2], [1, 2, 3]), ([1, 2, 3], [1, -2, 3])):
        with pytest.raises(ValueError):
            lp.fit_usl(*bad)


def test_slo_text_is_parsed_with_clear_errors() -> None:
    rules = parse_slo("p99 < 50ms and errors < 0.1%")
    assert [(r.metric, r.op, r.value) for r in rules] == [
        ("p99", "<", 50.0),
        ("error_rate", "<", 0.001),
    ]
    with pytest.raises(lp.PlanError, match="p98"):
        parse_slo("p98 < 5ms")
    with pytest.raises(lp.PlanError, match="empty SLO"):
        parse_slo(" ")


@pytest.fixture(scope="module")
def step_run(tmp_path_factory: pytest.TempPathFactory) -> lp.LoadedRun:
    """Offered 100..600 rps in 2 s steps at a target with 4 workers and 10 ms per request:
    it saturates near 4 / 10 ms = 400 rps (a little less, timers being late)."""
    out = tmp_path_factory.mktemp("cap") / "step"
    with lp.start_target(delay_ms=10, concurrency=4) as t:
        plan = lp.Plan(
            name="steps",
            target=t.url,
            load=lp.OpenLoad(stages=[lp.Step(from_=100, to=600, steps=6, duration_s=12)]),
            tasks=[get("home", "/")],
        )
        lp.run(plan, out)
    return lp.load_run(out)


def saturation(run: lp.LoadedRun) -> float:
    """The rate at which the target's 4 workers are all busy, from the service time the run
    measured at its lowest step (10 ms asked, a little more as timers are late): derived from
    this run on this machine, not assumed."""
    low = lp.capacity(run).levels[0]
    service_ms = run.histogram(service=True, start=low.start_s + 1, end=low.end_s).percentile(50)
    assert service_ms is not None and service_ms >= 10
    return 4 / (service_ms / 1000)


def levels_around(rate: float) -> set[float]:
    """The offered levels (100..600) on either side of ``rate``."""
    below = max((lv for lv in (100, 200, 300, 400, 500, 600) if lv <= rate), default=100)
    return {float(below), float(below + 100)}


def test_capacity_measures_each_step_and_finds_the_knee(step_run: lp.LoadedRun) -> None:
    cap = lp.capacity(step_run)
    assert [lv.offered for lv in cap.levels] == [100, 200, 300, 400, 500, 600]
    assert all(lv.complete for lv in cap.levels)
    low = cap.levels[0]
    assert low.achieved_rps == pytest.approx(100, rel=0.05)
    # A quarter of the workers busy: little queueing on top of the service time.
    svc = step_run.histogram(service=True, start=low.start_s + 1, end=low.end_s).percentile(50)
    assert low.p99_ms is not None and svc is not None and low.p99_ms < 3 * svc
    # Percentiles per level are exact: they equal the histogram of that window.
    h = step_run.histogram(start=low.start_s + 1, end=low.end_s)
    assert low.p99_ms == h.percentile(99) and low.requests == h.count
    knee = cap.knee()
    # The first level the target cannot keep up with: just past its saturation.
    sat = saturation(step_run)
    assert knee is not None and knee.offered in levels_around(sat) | {
        max(levels_around(sat)) + 100
    }, (sat, cap.frame)
    assert knee.offered > sat * 0.9, (sat, cap.frame)
    top = cap.levels[-1]
    assert top.p99_ms is not None and top.p99_ms > 10 * low.p99_ms
    assert set(cap.frame.columns) >= {"offered", "achieved_rps", "p99_ms", "error_rate"}


def test_max_sustainable_rps_gives_the_rate_with_its_evidence(step_run: lp.LoadedRun) -> None:
    s = lp.max_sustainable_rps(step_run, slo="p99 < 50ms and errors < 0.1%")
    sat = saturation(step_run)
    # At or just below the saturation this run measured (never above it by more than noise).
    assert float(s) <= sat * 1.1 and float(s) >= min(levels_around(sat)) - 100, (sat, str(s))
    assert s.level is not None and s.level.offered == float(s)
    assert s.level.p99_ms is not None and s.level.p99_ms < 50
    assert s.failed is not None and s.failed.offered == float(s) + 100
    assert "p99" in s.reason and f"{float(s):g} rps met" in str(s)
    # An SLO nothing meets says so. A loose one is still bounded by the rate the target kept
    # up with: beyond its ~400/s, throughput no longer follows the offered rate.
    none = lp.max_sustainable_rps(step_run, slo="p50 < 1us")
    assert float(none) == 0 and none.level is None and "p50" in str(none)
    loose = lp.max_sustainable_rps(step_run, slo="p99 < 100s")
    assert float(loose) <= sat * 1.1 and "achieved" in loose.reason, str(loose)


def _level(offered: float, p99: float, achieved: float | None = None, **kw: Any) -> Level:
    return Level(
        index=int(offered), start_s=offered / 100, end_s=offered / 100 + 1, offered=float(offered),
        complete=True, requests=int(offered), errors=0, error_rate=0.0, missed=0,
        achieved_rps=float(offered if achieved is None else achieved), concurrency=1.0, p50_ms=10.0,
        p90_ms=11.0, p99_ms=p99, p999_ms=p99, max_ms=p99, mean_ms=10.0, **kw,
    )  # fmt: skip


def test_one_level_that_blipped_is_neither_the_knee_nor_the_end_of_the_sustainable_rate() -> None:
    # 200/s blipped (one busy second: p99 36 ms against 12); 300/s was fine again; the target
    # saturates at 400/s and stays saturated.
    levels = [
        _level(100, 12.0), _level(200, 36.0), _level(300, 12.5),
        _level(400, 300.0, achieved=361), _level(500, 1000.0, achieved=360),
    ]  # fmt: skip
    cap = Capacity(None, levels, "open", 0.95)  # type: ignore[arg-type]
    knee = cap.knee()
    assert knee is not None and knee.offered == 400
    s = cap.sustainable("p99 < 30ms")
    assert (float(s), s.failed and s.failed.offered) == (300, 400), str(s)
    # Judged on each level's interval: one that straddles the limit is not counted as met.
    straddles = _level(300, 28.0, ci={"p99": (20.0, 45.0)})
    unsure = Capacity(None, [levels[0], straddles, *levels[3:]], "open", 0.95)  # type: ignore[arg-type]
    assert float(unsure.sustainable("p99 < 30ms")) == 100
    # A level whose whole interval lies above the knee's bound is the knee; one whose interval
    # reaches down to the base's range is not (its point alone would have been).
    wide = _level(300, 40.0, ci={"p99": (12.0, 45.0)})
    rises = Capacity(None, [levels[0], wide, *levels[3:]], "open", 0.95)  # type: ignore[arg-type]
    assert rises.knee() is not None and rises.knee().offered == 400  # type: ignore[union-attr]
    high = _level(300, 40.0, ci={"p99": (30.0, 45.0)})
    early = Capacity(None, [levels[0], high, *levels[3:]], "open", 0.95)  # type: ignore[arg-type]
    assert early.knee() is not None and early.knee().offered == 300  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def busy_step_run(tmp_path_factory: pytest.TempPathFactory) -> lp.LoadedRun:
    """The step run again, 3 s a step, with a busy process competing for the machine's CPUs."""
    out = tmp_path_factory.mktemp("cap") / "busy"
    burn = busy(60)
    try:
        with lp.start_target(delay_ms=10, concurrency=4) as t:
            plan = lp.Plan(
                name="busy-steps",
                target=t.url,
                load=lp.OpenLoad(stages=[lp.Step(from_=100, to=600, steps=6, duration_s=18)]),
                tasks=[get("home", "/")],
            )
            lp.run(plan, out)
    finally:
        burn.kill()
        burn.wait(10)
    return lp.load_run(out)


def test_the_knee_and_the_sustainable_rate_hold_with_a_busy_process_on_the_machine(
    busy_step_run: lp.LoadedRun,
) -> None:
    cap = lp.capacity(busy_step_run)
    assert all("p99" in lv.ci for lv in cap.levels), "two seconds a level: each has an interval"
    sat = saturation(busy_step_run)
    knee = cap.knee()
    assert knee is not None and knee.offered in levels_around(sat) | {
        max(levels_around(sat)) + 100
    }, (sat, cap.frame)
    s = lp.max_sustainable_rps(busy_step_run, slo="p99 < 50ms and errors < 0.1%")
    assert float(s) <= sat * 1.1 and float(s) >= min(levels_around(sat)) - 100, (sat, str(s))


def test_a_closed_model_step_run_gives_usl_points(tmp_path: Path) -> None:
    with lp.start_target(delay_ms=5, concurrency=4) as t:
        plan = lp.Plan(
            name="users",
            target=t.url,
            load=lp.ClosedLoad(stages=[lp.Step(from_=2, to=8, steps=4, duration_s=8)]),
            tasks=[get("home", "/")],
        )
        run = lp.run(plan, tmp_path / "closed")
    cap = lp.capacity(run)
    assert [lv.concurrency for lv in cap.levels] == [2, 4, 6, 8]
    two, four, eight = (cap.levels[i].achieved_rps for i in (0, 1, 3))
    assert four == pytest.approx(2 * two, rel=0.2)  # below the 4 workers: scales
    assert eight == pytest.approx(four, rel=0.15)  # beyond: flat
    fit = cap.usl()
    assert fit.peak_throughput == pytest.approx(max(four, eight), rel=0.2), str(fit)
    assert fit.lam == pytest.approx(two / 2, rel=0.2)


def test_a_step_run_report_shows_capacity_and_renders_offline(
    browser: Any, step_run: lp.LoadedRun, tmp_path: Path
) -> None:
    from tests.test_report import render_offline

    page = step_run.report(tmp_path / "cap.html")
    text = page.read_text()
    assert "<h2>Capacity</h2>" in text and "Knee at " in text
    seen = render_offline(browser, page)
    assert seen["refused"] == [] and seen["errors"] == [] and seen["failed"] == 0, seen
    # spectrum, rate, latency, capacity (nothing failed: a sentence, not an errors chart)
    assert seen["charts"] == 4 and all(n > 0 for n in seen["marks"]), seen
    assert "No request failed" in text
    # The two-panel capacity chart spans the page like the single ones.
    assert all(w > 0.85 for w in seen["widths"]), seen


def test_a_task_of_two_requests_is_held_to_its_rate_in_iterations(tmp_path: Path) -> None:
    """The offered rate counts iterations: a task of two requests against a server of 200
    requests a second keeps up to 100 iterations a second, not 200. Achieved rates are
    iterations per second wherever they are held to the offered one (the levels, the knee, the
    dashboards' rate)."""
    from loadpilot.analysis.series import per_second

    @lp.scenario(profile=lp.hold(40, "4s") + lp.hold(80, "4s") + lp.hold(160, "4s"))
    class TwoSteps(lp.VUser):
        @lp.task
        def buy(self) -> None:
            self.client.get("/", name="look")
            self.client.get("/json", name="pay")

    with lp.start_target(delay_ms=10, concurrency=2) as target:  # 200 requests/s at most
        run = lp.run(TwoSteps, tmp_path / "run", target=target.url)
    cap = lp.capacity(run)
    low, mid, high = cap.levels
    assert low.achieved_rps == pytest.approx(40, rel=0.05), cap.frame
    assert mid.achieved_rps == pytest.approx(80, rel=0.05), cap.frame
    # 320 requests a second offered to a server of 200: about 100 iterations a second.
    assert high.achieved_rps < 0.8 * 160, cap.frame
    knee = cap.knee()
    assert knee is not None and knee.offered == 160, cap.frame
    per = per_second(run.metrics).filter(pl.col("elapsed_s").is_between(1, 3))
    assert per["achieved_ips"].to_list() == pytest.approx([40.0] * 3, abs=2), per
    assert per["achieved_rps"].to_list() == pytest.approx([80.0] * 3, abs=4), per
