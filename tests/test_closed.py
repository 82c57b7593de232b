"""The closed model: virtual users looping with think time, ramped up and down."""

from __future__ import annotations

import statistics
from pathlib import Path

import polars as pl
import pytest

import loadpilot as lp
from tests.conftest import Recorder, get

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow


def test_users_loop_with_think_time(target: lp.TargetServer, out: Path) -> None:
    plan = lp.Plan(
        target=target.url,
        load=lp.ClosedLoad(stages=[lp.Constant(rate=10, duration_s=3)], think_s=0.1),
        tasks=[get("a", weight=2), get("b")],
    )

    run = lp.run(plan, out)
    s = run.summary()

    # 10 users, each one iteration per think time plus the request: never more than that,
    # and, with the request's measured time, not much less (timers may be late a little).
    mean_s = (s.overall.latency_ms.mean or 0) / 1000
    most = 10 * (3 / 0.1 + 1)
    expected = 10 * 3 / (0.1 + mean_s)
    assert 0.8 * expected <= s.overall.requests <= most, (s.overall.requests, expected)
    assert abs(s.task("a").requests - 2 * s.task("b").requests) <= 2
    assert s.model == "closed" and s.target_requests is None
    assert run.metrics["active_users"].max() == 10


def test_a_user_ramp_starts_users_in_order(target: lp.TargetServer, out: Path) -> None:
    plan = lp.Plan(
        target=target.url,
        load=lp.ClosedLoad(
            stages=[lp.Ramp(from_=0, to=20, duration_s=4), lp.Constant(rate=20, duration_s=1)],
            think_s=0.05,
        ),
        tasks=[get("x")],
    )

    m = lp.run(plan, out).metrics.sort("elapsed_s")

    m = m.filter(pl.col("elapsed_s") < 5)
    active = m["active_users"].to_list()
    # Users start as the ramp asks: about 5 more each second (not all at once).
    assert active == sorted(active), active
    assert active[0] < 10 and active[-1] == 20, active
    rates = m["achieved_rps"].to_list()
    assert rates[0] < rates[2] < rates[4], rates


def _gaps(arrivals: list[tuple[float, str]]) -> list[float]:
    times = [t for t, _ in arrivals]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_a_think_time_between_two_bounds_is_drawn_for_each_wait(recorder: Recorder) -> None:
    # One user: the gaps the server sees between its requests are its waits plus a request.
    profile = lp.users(1, "3s", think=("50ms", "150ms"))
    assert profile.describe() == "1 users for 3s, 0.05-0.15s think time"
    lp.run(lp.Plan(target=recorder.url, load=profile.to_load(), tasks=[get("x")]))
    gaps = _gaps(recorder.arrivals)
    assert 20 <= len(gaps) <= 45, gaps
    assert min(gaps) >= 0.05 and max(gaps) <= 0.17, gaps
    assert 0.08 <= statistics.mean(gaps) <= 0.125, gaps
    # Drawn, not fixed: a uniform draw over 100 ms spreads by about 29 ms.
    assert statistics.stdev(gaps) >= 0.015, gaps


def test_a_paced_user_starts_an_iteration_every_pace_whatever_the_request_takes(
    recorder: Recorder,
) -> None:
    profile = lp.users(1, "3s", pace="100ms")
    plan = lp.Plan(target=recorder.url, load=profile.to_load(), tasks=[get("s", "/sleep/40")])
    lp.run(plan)
    gaps = _gaps(recorder.arrivals)
    # 40 ms of request then 60 ms of wait: starts 100 ms apart (a think time would give 140).
    assert 25 <= len(gaps) <= 30, gaps
    assert statistics.mean(gaps) == pytest.approx(0.1, abs=0.008), gaps


def test_think_and_pace_are_checked() -> None:
    with pytest.raises(lp.PlanError, match="think or pace"):
        lp.users(1, "3s", think="1s", pace="2s")
    with pytest.raises(lp.PlanError, match="the least comes first"):
        lp.users(1, "3s", think=("2s", "1s"))
    bad = lp.Plan(
        target="http://127.0.0.1:9",
        load=lp.ClosedLoad(stages=[lp.Constant(rate=1, duration_s=1)], think_s=1, pace_s=2),
        tasks=[get("x")],
    )
    with pytest.raises(lp.PlanError, match="load.pace_s: paced iterations have no think time"):
        lp.run(bad)


def test_a_number_of_iterations_ends_the_run_once_they_have_ended(
    recorder: Recorder, tmp_path: Path
) -> None:
    profile = lp.users(4, "60s", think="5ms", iterations=45)
    assert profile.describe() == "4 users for 60s, 0.005s think time, at most 45 iterations"
    plan = lp.Plan(
        target=recorder.url,
        load=profile.to_load(),
        tasks=[get("slow", "/sleep/30", weight=2), get("fast")],
    )
    s = lp.run(plan, tmp_path / "run").summary()
    # Exactly that many, every one to its end (none cut off), and then the run ended: not at
    # its 60 s.
    assert len(recorder.seen) == s.overall.requests == s.overall.iterations == 45
    assert s.ended == "completed" and s.overall.errors == 0 and s.overall.cancelled == 0
    assert s.duration_s < 30, s.duration_s
    # Two agents share them out (23 and 22): 45 in all again, merged.
    spread = lp.run(plan, tmp_path / "spread", agents=2).summary()
    assert len(recorder.seen) == 90 and spread.overall.requests == 45
    assert spread.ended == "completed" and spread.duration_s < 30, spread.duration_s


def test_a_number_of_iterations_is_checked() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(lp.PlanError, match="invalid max_iterations"):
            lp.users(2, "1s", iterations=bad)  # type: ignore[arg-type]
