"""The arithmetic of a distributed run's slices and takeovers, alone (no NATS, no agents)."""

from __future__ import annotations

import pytest

from loadpilot.cluster import slices
from loadpilot.cluster.slices import Slice


def arrivals(sl: Slice, n: int) -> set[int]:
    """The arrivals of the first ``n`` of the global schedule a slice runs."""
    return {k for k in range(n) if k % sl.count == sl.index % sl.count and k >= sl.index}


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
