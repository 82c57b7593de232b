"""The open model's timing and mix, seen from a real server on the other end of the socket."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import loadpilot as lp
from tests.conftest import Recorder, constant, get

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow


def test_three_rps_for_twenty_seconds_sends_sixty_evenly_spaced(
    recorder: Recorder, out: Path
) -> None:
    plan = lp.Plan(target=recorder.url, load=constant(3, 20), tasks=[get("only")])

    run = lp.run(plan, out)

    times = sorted(t for t, _ in recorder.arrivals)
    assert abs(len(times) - 60) <= 1
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    # Evenly spaced: every gap near 333 ms as the Python server stamps them. A burst at a
    # tick boundary would leave gaps near zero; the server's own jitter is milliseconds.
    assert abs(gaps[len(gaps) // 2] - 1 / 3) < 0.01, gaps
    assert gaps[0] > 0.2, f"smallest gap {gaps[0] * 1000:.1f} ms: a burst"
    assert run.summary().overall.requests == len(times)


def test_weights_hold_at_three_rps(recorder: Recorder, out: Path) -> None:
    plan = lp.Plan(
        target=recorder.url,
        load=constant(3, 20),
        tasks=[get("browse", "/browse", weight=5), get("buy", "/buy", weight=1)],
    )

    summary = lp.run(plan, out).summary()

    assert abs(summary.task("browse").requests - 50) <= 1
    assert abs(summary.task("buy").requests - 10) <= 1
    paths = [p for _, p in recorder.arrivals]
    assert abs(paths.count("/browse") - 50) <= 1 and abs(paths.count("/buy") - 10) <= 1


def test_ramp_to_one_thousand_rps_follows_the_ramp(target: lp.TargetServer, out: Path) -> None:
    plan = lp.Plan(
        target=target.url,
        load=lp.OpenLoad(stages=[lp.Ramp(from_=0, to=1000, duration_s=10)]),
        tasks=[get("ramp")],
    )

    run = lp.run(plan, out)

    total = run.summary().overall.requests
    assert abs(total - 5000) <= 50, total
    # The schedule's seconds (a drain row may follow at 10 s if a request was in flight).
    per_second = run.metrics.filter(pl.col("elapsed_s") < 10).sort("elapsed_s")
    assert per_second["elapsed_s"].to_list() == [float(i) for i in range(10)]
    for i, (achieved, target_rps) in enumerate(
        zip(per_second["achieved_rps"], per_second["target_rps"], strict=True)
    ):
        expected = 100 * i + 50  # mean rate of the ramp over second i
        assert target_rps == expected
        assert abs(achieved - expected) <= max(10, 0.05 * expected), (i, achieved)


def test_a_5_to_1_mix_holds_at_high_rate(target: lp.TargetServer, out: Path) -> None:
    plan = lp.Plan(
        target=target.url,
        load=constant(3000, 3),
        tasks=[get("a", weight=5), get("b", weight=1)],
    )

    m = lp.run(plan, out).metrics

    per_second = m.pivot(on="task", index="elapsed_s", values="requests")
    for row in per_second.iter_rows(named=True):
        # Completion times blur interval edges by a request or two; the mix itself is exact.
        assert abs(row["a"] - 5 * row["b"]) <= 12, row
    totals = m.group_by("task").agg(pl.col("requests").sum()).sort("task")
    assert totals["requests"].to_list() == [7500, 1500]


def test_poisson_arrivals_are_reproducible_with_a_seed(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    def plan(seed: int) -> lp.Plan:
        return lp.Plan(
            target=target.url,
            load=lp.OpenLoad(
                stages=[lp.Constant(rate=500, duration_s=2)], arrivals="poisson", seed=seed
            ),
            tasks=[get("p")],
        )

    a = lp.run(plan(1), tmp_path / "a").summary().overall.requests
    b = lp.run(plan(1), tmp_path / "b").summary().overall.requests
    c = lp.run(plan(2), tmp_path / "c").summary().overall.requests

    assert a == b
    assert a != c
    assert abs(a - 1000) < 150


def test_shards_of_one_schedule_add_up_to_the_whole(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    from loadpilot.plan import Shard

    whole = lp.Plan(target=target.url, load=constant(100, 2), tasks=[get("x")])

    halves = [
        lp.run(whole.model_copy(update={"shard": Shard(index=i, count=2)}), tmp_path / f"s{i}")
        for i in range(2)
    ]

    summaries = [h.summary() for h in halves]
    assert [s.overall.requests for s in summaries] == [100, 100]
    assert [s.target_requests for s in summaries] == [100, 100]
    assert all((h.metrics["target_rps"] == 50).all() for h in halves)
