"""The closed model: virtual users looping with think time, ramped up and down."""

from __future__ import annotations

from pathlib import Path

import polars as pl

import loadpilot as lp
from tests.conftest import get


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
