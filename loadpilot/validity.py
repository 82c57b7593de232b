"""Whether a run measured the system or the load generator: ``valid``, ``suspect`` or
``invalid``, with the evidence.

A latency measured from each request's due instant includes every delay of the generator's
own: a worker that woke late, an arrival that found every connection busy, Python's event loop
behind, a process starved of CPU. Those delays are the generator's, not the system's, and a
run whose tail is made of them measured the wrong thing. The rule (docs/validity.md):

- **lateness**: how late iterations began after their due instant (``late_ms``). When the
  generator's share of the tail (lateness p99 over latency p99) reaches ``LATE_SUSPECT`` the run
  is suspect, at ``LATE_INVALID`` invalid (only past ``LATE_FLOOR_MS``: a tail of a
  millisecond is no tail). A run of fewer than 1,000 iterations is read at p95, p90 or p50,
  whichever holds ten iterations: one late iteration is a hiccup, not a tail.
- **connections**: arrivals that found every connection busy (``missed``). At
  ``MISSED_SUSPECT`` / ``MISSED_INVALID`` of the iterations begun, the cause is read off the
  seconds they happened in: if the service time grew there (``SATURATED``× the run's
  least-loaded second) the system queued, and the run measured a saturated system (valid, the
  system was the limit); if it stayed flat, the connections limited the rate (the generator).
- **CPU**: the generator process's CPU time over the cores it may use, and how long its
  threads waited for a CPU (``/proc/self/task/*/schedstat``) per second of the run; past
  ``CPU_BUSY`` or ``RUN_QUEUE`` the run is suspect (and the lateness says whether it showed).
  Linux's CPU pressure (PSI) is kept as evidence.

The verdict is the gravest of its reasons; ``limit`` says which side limited the run:
``generator`` (any generator reason), ``system`` (the system saturated), or ``None``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

import polars as pl

from loadpilot.summary import Generator, Reason, Stats, Summary, Validity, Verdict

#: The generator's share of the latency tail (lateness p99 / latency p99).
LATE_SUSPECT = 0.1
LATE_INVALID = 0.5
#: Lateness below this (p99, ms) is never a reason: a generator on a busy machine wakes a
#: fraction of a millisecond late, and against a loopback target that is half the tail.
LATE_FLOOR_MS = 2.0
#: Arrivals that found every connection busy, over the iterations begun.
MISSED_SUSPECT = 0.001
MISSED_INVALID = 0.01
#: The service time grew this much (median of the seconds with missed arrivals over the
#: least-loaded second's): the system queued.
SATURATED = 2.0
#: The generator's CPU time over what its cores could give.
CPU_BUSY = 0.9
#: Seconds its threads waited for a CPU per second of the run (a generator sharing two cores
#: with a local target at 20,000 requests/s waits about 0.2).
RUN_QUEUE = 0.5
#: The fewest iterations the lateness rule reads a percentile from (``_tail_quantile``).
_MIN_LATE = 10
#: Seconds with fewer requests than this say nothing about service time.
_MIN_ROW_REQUESTS = 20

_LEVEL = {"info": 0, "suspect": 1, "invalid": 2}


class Probe:
    """Reads this process's CPU figures now; ``end()`` gives them over the time since."""

    def __init__(self) -> None:
        self._t = time.monotonic()
        self._cpu = _cpu_s()
        self._queue = _run_queue_s()
        self._pressure = _cpu_pressure_s()

    def end(self) -> Generator:
        queue, pressure = _run_queue_s(), _cpu_pressure_s()
        return Generator(
            wall_s=time.monotonic() - self._t,
            cpu_s=_cpu_s() - self._cpu,
            cores=_cores(),
            # Threads that ended took their counts with them: never below zero.
            run_queue_s=None
            if queue is None or self._queue is None
            else max(0.0, queue - self._queue),
            cpu_pressure_s=None
            if pressure is None or self._pressure is None
            else pressure - self._pressure,
        )


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _run_queue_s() -> float | None:
    """Seconds this process's live threads have waited on a run queue (Linux)."""
    total = 0
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return None
    for t in tasks:
        try:
            total += int((t / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


def _cpu_pressure_s() -> float | None:
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None
    return None


def _begun(s: Stats) -> int:
    return (s.iterations if s.iterations is not None else s.requests) + s.cancelled


def _service_growth(rows: pl.DataFrame | None, task: str | None) -> tuple[float, float] | None:
    """The service time's median (p50 per second) over the seconds with missed arrivals, and
    the lowest of the seconds': ``(busy, floor)``; ``None`` without such seconds."""
    if rows is None or rows.is_empty() or "service_p50_ms" not in rows.columns:
        return None
    r = rows.filter(pl.col("request").is_null()) if "request" in rows.columns else rows
    if task is not None:
        r = r.filter(pl.col("task") == task)
    r = r.filter((pl.col("requests") >= _MIN_ROW_REQUESTS) & pl.col("service_p50_ms").is_not_null())
    busy = r.filter(pl.col("missed") > 0)
    if busy.is_empty():
        return None
    busy_p50 = busy.select(pl.col("service_p50_ms").median()).item()
    floor = r.select(pl.col("service_p50_ms").min()).item()
    return float(busy_p50), float(floor)


def _tail_quantile(begun: int) -> str:
    """The highest percentile at or above which at least ``_MIN_LATE`` iterations lie: a tail
    of one or two iterations (a single hiccup of a short run) is no evidence."""
    for name, share in (("p99", 0.01), ("p95", 0.05), ("p90", 0.1)):
        if begun * share >= _MIN_LATE:
            return name
    return "p50"


def _all_busy(rows: pl.DataFrame | None, connections: int | None) -> bool:
    """Whether some second ended with every connection of an open model in use."""
    if connections is None or rows is None or rows.is_empty() or "in_flight" not in rows.columns:
        return False
    most = rows.select(pl.col("in_flight").max()).item()
    return most is not None and int(most) >= connections


def judge(
    summary: Summary,
    rows: pl.DataFrame | None = None,
    generator: Generator | None = None,
    connections: int | None = None,
) -> Validity:
    """The verdict on one run (or one slice of one): ``rows`` are its task rows (the seconds'
    service times tell a saturated system from too few connections), ``generator`` what
    ``Probe`` measured, ``connections`` the open model's."""
    reasons: list[Reason] = []
    scopes: list[tuple[str | None, Stats]] = [(None, summary.overall)]
    if len(summary.tasks) > 1:
        scopes += [(t.name, t) for t in summary.tasks]
    for task, s in scopes:
        where = f"task {task}: " if task else ""
        begun = _begun(s)
        missed = s.missed / begun if begun else 0.0
        explained = False
        # Arrivals taken late while a connection was free are the lateness rule's: only
        # connections seen all busy make the connections' reasons.
        if missed >= MISSED_SUSPECT and _all_busy(rows, connections):
            level = "invalid" if missed >= MISSED_INVALID else "suspect"
            growth = _service_growth(rows, task)
            explained = True
            if growth is not None and growth[0] >= SATURATED * growth[1]:
                reasons.append(
                    Reason(
                        code="saturated",
                        level="info",
                        side="system",
                        text=f"{where}the system saturated: {s.missed:,} arrivals "
                        f"({missed:.1%}) found all {connections:,} connections busy while "
                        f"its service time grew from {growth[1]:.3g} ms to {growth[0]:.3g} ms "
                        "(p50 per second)",
                    )
                )
            else:
                flat = f" while the service time stayed at {growth[1]:.3g} ms" if growth else ""
                reasons.append(
                    Reason(
                        code="connections",
                        level=level,
                        side="generator",
                        text=f"{where}{s.missed:,} arrivals ({missed:.1%}) found all "
                        f"{connections:,} connections busy{flat}: the connections, not the "
                        "system, limited the rate (raise connections)",
                    )
                )
        q = _tail_quantile(begun)
        late, tail = getattr(s.late_ms, q), getattr(s.latency_ms, q)
        if late is not None and tail and late >= LATE_FLOOR_MS and not explained:
            share = late / tail
            if share >= LATE_SUSPECT:
                reasons.append(
                    Reason(
                        code="late",
                        level="invalid" if share >= LATE_INVALID else "suspect",
                        side="generator",
                        text=f"{where}arrivals began late: {q} {late:.3g} ms after due, "
                        f"{share:.0%} of the latency {q} ({tail:.3g} ms) is the generator's "
                        f"own delay ({s.unsent:,} never sent)",
                    )
                )
    if generator is not None:
        if generator.cpu_share >= CPU_BUSY:
            reasons.append(
                Reason(
                    code="cpu",
                    level="suspect",
                    side="generator",
                    text=f"the generator used {generator.cpu_share:.0%} of its "
                    f"{generator.cores} CPU{'s' if generator.cores > 1 else ''}",
                )
            )
        rq = generator.run_queue_s
        if rq is not None and generator.wall_s > 0 and rq / generator.wall_s >= RUN_QUEUE:
            reasons.append(
                Reason(
                    code="run_queue",
                    level="suspect",
                    side="generator",
                    text=f"the generator's threads waited {rq:.2f} s for a CPU in "
                    f"{generator.wall_s:.1f} s ({rq / generator.wall_s:.2f} s a second): "
                    "something else took its CPU",
                )
            )
    return _verdict(reasons, generator)


def _verdict(reasons: list[Reason], generator: Generator | None) -> Validity:
    """The gravest reason's level; the generator's limit if a generator reason counts, the
    system's if it saturated."""
    counted = [r for r in reasons if r.level != "info"]
    gravest = max((_LEVEL[r.level] for r in counted), default=0)
    verdict: Verdict = ("valid", "suspect", "invalid")[gravest]
    limit: Literal["generator", "system"] | None = None
    if any(r.side == "generator" for r in counted):
        limit = "generator"
    elif any(r.code == "saturated" for r in reasons):
        limit = "system"
    return Validity(verdict=verdict, limit=limit, reasons=reasons, generator=generator)


def with_slices(merged: Validity, slices: list[tuple[str, Validity]]) -> Validity:
    """A distributed run's verdict: the merged figures' (``merged``), and each agent's own
    judgement of its slice (its lateness, connections and CPU, which only it saw), its
    reasons named after it."""
    reasons = list(merged.reasons)
    for agent, v in slices:
        reasons += [
            r.model_copy(update={"text": f"agent {agent}: {r.text}"})
            for r in v.reasons
            if r.side == "generator" and r.level != "info"
        ]
    return _verdict(reasons, merged.generator)
