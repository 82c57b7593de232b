"""Load profiles for scenarios: ``constant``, ``ramp``, ``step``, ``spike``, ``stages`` and
``users``, joined in sequence with ``+``. Durations accept seconds or text: "500ms", "30s", "5m",
"1h"."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from loadpilot import _engine
from loadpilot.errors import PlanError
from loadpilot.plan import (
    MAX_SECONDS,
    ClosedLoad,
    Constant,
    OpenLoad,
    Ramp,
    Spike,
    Stage,
    Step,
    check_field,
)

# A plain number is seconds.
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

Duration = str | float | int


def parse_duration(value: Duration, *, what: str = "duration") -> float:
    """Seconds from ``value``: a number of seconds or text such as "500ms", "30s", "5m", "1h"."""
    if isinstance(value, bool):
        raise PlanError(f"invalid {what}: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise PlanError(
                f'invalid {what}: {value!r} (write seconds or text like "500ms", "30s", "5m", "1h")'
            )
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if not seconds > 0:
        raise PlanError(f"invalid {what}: {value!r} (must be more than zero)")
    if not seconds <= MAX_SECONDS:  # also catches inf and nan
        raise PlanError(f"invalid {what}: {value!r} (at most a year, {MAX_SECONDS:.0f} s)")
    return seconds


def _rate(value: float, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not value >= 0
        or not math.isfinite(value)
    ):
        raise PlanError(f"invalid {what}: {value!r} (must be a finite number >= 0)")
    return float(value)


@dataclass(frozen=True)
class Shape:
    """A profile as the engine schedules it: its corners ``(seconds, value)``, two per linear
    piece, the area under the curve and the highest value. The one rule for every stage kind:
    charts, the tuner, capacity planning and serve mode's caps all read it."""

    points: list[tuple[float, float]]
    total: float
    peak: float

    def segments(self) -> list[tuple[float, float, float, float]]:
        """The linear pieces ``(start_s, end_s, from, to)``; a plateau has ``from == to``."""
        p = self.points
        return [(p[i][0], p[i + 1][0], p[i][1], p[i + 1][1]) for i in range(0, len(p) - 1, 2)]


def shape(stages: Sequence[Stage]) -> Shape:
    """The engine's reading of ``stages`` (raises ``PlanError`` where it refuses them)."""
    text = json.dumps([s.model_dump(by_alias=True) for s in stages])
    points, total, peak = _engine.profile_points(text)
    return Shape(points, total, peak)


@dataclass(frozen=True)
class Profile:
    """Stages of an open model (values are requests per second) or of a closed model (values
    are virtual users, looping with ``think_s`` between iterations, or a time drawn uniformly
    from ``think_s`` to ``think_max_s``, or starting iterations ``pace_s`` apart)."""

    model: Literal["open", "closed"]
    stages: tuple[Stage, ...]
    think_s: float = 0.0
    think_max_s: float | None = None
    pace_s: float | None = None
    #: Closed model: at most this many iterations in all, then the run ends.
    max_iterations: int | None = None

    @classmethod
    def of_load(cls, load: OpenLoad | ClosedLoad) -> Profile:
        """The profile a plan's load was made from."""
        if isinstance(load, ClosedLoad):
            return cls(
                "closed",
                tuple(load.stages),
                load.think_s,
                load.think_max_s,
                load.pace_s,
                load.max_iterations,
            )
        return cls("open", tuple(load.stages))

    def _wait(self) -> tuple[float, float | None, float | None]:
        return (self.think_s, self.think_max_s, self.pace_s)

    def __add__(self, other: Profile) -> Profile:
        if not isinstance(other, Profile):
            return NotImplemented
        if other.model != self.model:
            raise PlanError(
                f"cannot join a {self.model}-model profile and a {other.model}-model one"
            )
        if self.model == "closed" and other._wait() != self._wait():
            raise PlanError("joined closed-model profiles must have the same think time")
        if other.max_iterations != self.max_iterations:
            raise PlanError("joined closed-model profiles must have the same iterations")
        return dataclasses.replace(self, stages=self.stages + other.stages)

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.stages)

    @property
    def peak(self) -> float:
        """The highest rate (or user count) anywhere in the profile (the engine's)."""
        return shape(self.stages).peak

    def points(self) -> list[tuple[float, float]]:
        """The rate (or users) curve as its corners ``(seconds, value)``, joined by straight
        lines: what a chart of the profile draws. Computed by the engine, from the stages it
        schedules, so the tuner and capacity planning count what is sent."""
        return shape(self.stages).points

    def scaled(self, duration: Duration) -> Profile:
        """The same shape stretched or squeezed to last ``duration``: every stage (and a
        spike's peak) keeps its share of the time, rates and users stay as they are."""
        new = parse_duration(duration)
        f = new / self.duration_s
        out: list[Stage] = []
        for st in self.stages:
            update: dict[str, float] = {"duration_s": st.duration_s * f}
            if isinstance(st, Spike):
                update["peak_s"] = st.peak_s * f
            out.append(st.model_copy(update=update))
        return dataclasses.replace(self, stages=tuple(out))

    def describe(self) -> str:
        """The profile in a line, e.g. ``ramp 0→300/s over 5s, then 300/s for 15s``."""
        unit = "/s" if self.model == "open" else " users"
        parts = []
        for st in self.stages:
            d = f"{st.duration_s:g}s"
            if isinstance(st, Constant):
                parts.append(f"{st.rate:g}{unit} for {d}")
            elif isinstance(st, Ramp):
                parts.append(f"ramp {st.from_:g}→{st.to:g}{unit} over {d}")
            elif isinstance(st, Step):
                parts.append(f"{st.steps} steps {st.from_:g}→{st.to:g}{unit} over {d}")
            else:
                parts.append(
                    f"{st.base:g}{unit} with a {st.peak_s:g}s spike to {st.peak:g} over {d}"
                )
        think = ""
        if self.model == "closed":
            if self.pace_s is not None:
                think = f", an iteration every {self.pace_s:g}s"
            elif self.think_max_s is not None and self.think_max_s > self.think_s:
                think = f", {self.think_s:g}-{self.think_max_s:g}s think time"
            elif self.think_s:
                think = f", {self.think_s:g}s think time"
            if self.max_iterations is not None:
                think += f", at most {self.max_iterations:,} iterations"
        return ", then ".join(parts) + think

    @property
    def total(self) -> float:
        """The area under the curve: the requests an open-model profile sends, or the
        user-seconds of a closed one (the engine's own count)."""
        return shape(self.stages).total

    def to_load(
        self, *, connections: int | None = None, arrivals: str = "uniform", seed: int = 0
    ) -> OpenLoad | ClosedLoad:
        if self.model == "closed":
            return ClosedLoad(
                stages=list(self.stages),
                think_s=self.think_s,
                think_max_s=self.think_max_s,
                pace_s=self.pace_s,
                max_iterations=self.max_iterations,
            )
        extra = {} if connections is None else {"connections": connections}
        return OpenLoad(stages=list(self.stages), arrivals=arrivals, seed=seed, **extra)


def _open(stage: Stage) -> Profile:
    return Profile("open", (stage,))


def constant(rps: float, duration: Duration) -> Profile:
    """``rps`` requests per second for ``duration``."""
    return _open(Constant(rate=_rate(rps, "rps"), duration_s=parse_duration(duration)))


hold = constant


def ramp(from_rps: float, to_rps: float, duration: Duration) -> Profile:
    """A linear change of rate over ``duration``."""
    return _open(
        Ramp(
            from_=_rate(from_rps, "from_rps"),
            to=_rate(to_rps, "to_rps"),
            duration_s=parse_duration(duration),
        )
    )


def step(from_rps: float, to_rps: float, steps: int, duration: Duration) -> Profile:
    """``steps`` equal plateaus from ``from_rps`` to ``to_rps`` over ``duration``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PlanError(f"invalid steps: {steps!r} (must be a whole number >= 1)")
    return _open(
        Step(
            from_=_rate(from_rps, "from_rps"),
            to=_rate(to_rps, "to_rps"),
            steps=steps,
            duration_s=parse_duration(duration),
        )
    )


def spike(base_rps: float, peak_rps: float, peak: Duration, duration: Duration) -> Profile:
    """``base_rps``, with ``peak_rps`` for ``peak`` in the middle of ``duration``."""
    peak_s, total = parse_duration(peak, what="peak"), parse_duration(duration)
    if peak_s >= total:
        raise PlanError(f"a spike's peak ({peak}) must be shorter than its duration ({duration})")
    return _open(
        Spike(
            base=_rate(base_rps, "base_rps"),
            peak=_rate(peak_rps, "peak_rps"),
            peak_s=peak_s,
            duration_s=total,
        )
    )


def stages(parts: list[Profile]) -> Profile:
    """Profiles laid end to end (the same as adding them with ``+``)."""
    if not parts:
        raise PlanError("stages() needs at least one profile")
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def users(
    n: int,
    duration: Duration,
    *,
    ramp: Duration | None = None,
    think: Duration | tuple[Duration, Duration] | None = None,
    pace: Duration | None = None,
    iterations: int | None = None,
) -> Profile:
    """A closed model of ``duration`` in all: ``n`` virtual users (reached over ``ramp`` from 0,
    if given, then held for the rest, as k6 and Locust count it), each waiting ``think``
    between iterations: a time, or a ``(least, most)`` pair drawn uniformly per wait (Locust's
    ``between``). ``pace`` instead: each user starts an iteration every ``pace`` (Locust's
    ``constant_pacing``), waiting what the iteration left of it. ``iterations``: at most this
    many in all (every user's together, k6's shared iterations); the run ends once they have,
    or at ``duration`` if that comes first."""
    count = _rate(n, "users")
    think_s, think_max = 0.0, None
    if isinstance(think, tuple):
        least, most = think
        think_s = parse_duration(least, what="think time")
        think_max = parse_duration(most, what="think time")
        if think_max < think_s:
            raise PlanError(f"think time ({think_s:g}s, {think_max:g}s): the least comes first")
    elif think is not None:
        think_s = parse_duration(think, what="think time")
    pace_s = None
    if pace is not None:
        if think is not None:
            raise PlanError("give think or pace, not both: a paced user waits what is left")
        pace_s = parse_duration(pace, what="pace")
    total = parse_duration(duration)
    parts: list[Stage] = []
    if ramp is not None:
        ramp_s = parse_duration(ramp, what="ramp")
        if ramp_s >= total:
            raise PlanError(
                f"ramp {ramp_s:g}s is not shorter than the duration {total:g}s, which includes "
                "it: give the whole run's duration"
            )
        parts.append(Ramp(from_=0, to=count, duration_s=ramp_s))
        total -= ramp_s
    parts.append(Constant(rate=count, duration_s=total))
    if iterations is not None:
        check_field("max_iterations", iterations, ClosedLoad)
    return Profile("closed", tuple(parts), think_s, think_max, pace_s, iterations)
