"""How a distributed run is cut into slices, and how a lost slice is taken over: arithmetic
only (no NATS, no clocks), so each rule can be tested alone.

A slice ``(index, count)`` runs every ``count``-th arrival (open model) or user (closed model)
of the one global schedule, starting at ``index``. Splitting a slice among ``k`` agents gives
each the slice ``(index + j·count, count·k)``: together they run exactly the arrivals the lost
slice would have, none twice."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Slice:
    """Every ``count``-th arrival or user of the schedule from ``index``, sent from ``from_s``
    seconds into the run on, and from arrival ``from_index`` of the schedule on (open model)."""

    index: int
    count: int
    from_s: float = 0.0
    from_index: int = 0


def initial(n_agents: int) -> list[Slice]:
    """The slices of ``n_agents`` agents at the start: agent ``i`` runs every ``n``-th
    arrival from ``i``."""
    if n_agents < 1:
        raise ValueError(f"a run needs at least one agent, not {n_agents}")
    return [Slice(i, n_agents) for i in range(n_agents)]


def connections(total: int, index: int, count: int) -> int:
    """An open model's connections for slice ``index`` of ``count`` equal slices: ``total``
    shared out, the first ``total % count`` slices one more, and never fewer than one."""
    return max(1, total // count + (1 if index < total % count else 0))


def resume_from(lost: Slice, reported_upto: int | None) -> float:
    """Where a lost slice's takeover starts: the first second it had not reported (what it
    sent in that second is unknown), never before the slice itself began."""
    return max(lost.from_s, 0.0 if reported_upto is None else float(reported_upto + 1))


def takeover(lost: Slice, survivors: int, from_s: float, from_index: int = 0) -> list[Slice]:
    """The slices ``survivors`` agents run to take over ``lost`` from ``from_s`` seconds and
    arrival ``from_index`` on: the lost slice split ``survivors`` ways, each survivor every
    ``survivors``-th of its arrivals.

    The parts interleave from ``from_index`` (the lost slice's first arrival at or after it
    goes to the first survivor), so a takeover from the middle of a second shares the rest of
    that second evenly too."""
    if survivors < 1:
        raise ValueError("a takeover needs a surviving agent")
    start = max(from_index, lost.from_index)
    # The lost slice's first arrival at or after `start`: parts are counted from there.
    first = start + (lost.index - start) % lost.count
    return [
        Slice(
            (first + k * lost.count) % (lost.count * survivors),
            lost.count * survivors,
            from_s,
            start,
        )
        for k in range(survivors)
    ]


def takeover_connections(lost_connections: int, survivors: int) -> int:
    """Each survivor's connections for its part of a lost slice: the lost slice's shared out,
    rounded up so the parts together have at least as many."""
    return max(1, math.ceil(lost_connections / survivors))
