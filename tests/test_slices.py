"""The arithmetic of a distributed run's slices and takeovers, alone (no NATS, no agents)."""

from __future__ import annotations

import pytest

from loadpilot.cluster import slices
from loadpilot.cluster.slices import Slice


def arrivals(sl: Slice, n: int) -> set[int]:
    """The arrivals of the first ``n`` of the global schedule a slice runs."""
    return {
        k
        for k in range(n)
        if k % sl.count == sl.index % sl.count and k >= max(sl.index, sl.from_index)
    }


@pytest.mark.parametrize("agents", [1, 2, 3, 7])
def test_the_first_slices_run_every_arrival_once(agents: int) -> None:
    parts = slices.initial(agents)
    seen = [arrivals(p, 1000) for p in parts]
    assert set().union(*seen) == set(range(1000))
    assert sum(len(s) for s in seen) == 1000, "no arrival twice"
    with pytest.raises(ValueError):
        slices.initial(0)


@pytest.mark.parametrize(("agents", "survivors"), [(2, 1), (3, 2), (4, 3), (5, 2)])
def test_a_takeover_runs_exactly_the_lost_slices_arrivals(agents: int, survivors: int) -> None:
    for lost in slices.initial(agents):
        parts = slices.takeover(lost, survivors, from_s=4.0)
        assert all(p.from_s == 4.0 for p in parts)
        seen = [arrivals(p, 5000) for p in parts]
        assert set().union(*seen) == arrivals(lost, 5000)
        assert sum(len(s) for s in seen) == len(arrivals(lost, 5000)), "none twice"
        # A takeover of a takeover splits it again, still exactly.
        again = slices.takeover(parts[0], 2, from_s=6.0)
        assert set().union(*(arrivals(p, 5000) for p in again)) == arrivals(parts[0], 5000)


@pytest.mark.parametrize(("agents", "survivors"), [(2, 1), (3, 2), (4, 3), (5, 2)])
@pytest.mark.parametrize("from_index", [0, 1, 997, 1000, 1003])
def test_a_takeover_from_an_arrival_runs_the_lost_slices_arrivals_from_there(
    agents: int, survivors: int, from_index: int
) -> None:
    for lost in slices.initial(agents):
        parts = slices.takeover(lost, survivors, from_s=4.0, from_index=from_index)
        assert all(p.index < p.count for p in parts), "a shard the engine accepts"
        seen = [arrivals(p, 5000) for p in parts]
        mine = {k for k in arrivals(lost, 5000) if k >= from_index}
        assert set().union(*seen) == mine
        assert sum(len(s) for s in seen) == len(mine), "none twice"
        # The next arrivals of the lost slice go to every survivor in turn.
        firsts = sorted(min(s) for s in seen)
        assert firsts == sorted(mine)[:survivors]
        again = slices.takeover(parts[1 % survivors], 2, from_s=6.0, from_index=from_index + 50)
        assert set().union(*(arrivals(p, 5000) for p in again)) == {
            k for k in arrivals(parts[1 % survivors], 5000) if k >= from_index + 50
        }


def test_connections_are_shared_out_whole_and_never_zero() -> None:
    assert [slices.connections(10, i, 3) for i in range(3)] == [4, 3, 3]
    assert sum(slices.connections(256, i, 7) for i in range(7)) == 256
    assert [slices.connections(2, i, 3) for i in range(3)] == [1, 1, 1]
    assert slices.takeover_connections(10, 3) == 4
    assert slices.takeover_connections(1, 4) == 1


def test_a_takeover_resumes_at_the_first_unreported_second() -> None:
    assert slices.resume_from(Slice(0, 3), None) == 0.0
    assert slices.resume_from(Slice(0, 3), 4) == 5.0
    # A slice that itself began later never resumes before its start.
    assert slices.resume_from(Slice(0, 3, from_s=8.0), 4) == 8.0
    with pytest.raises(ValueError):
        slices.takeover(Slice(0, 3), 0, 1.0)
