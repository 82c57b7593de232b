"""``self.environment`` of a Locust user: the run's host, parsed options, runner and events."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from loadpilot.locust.events import Events, events


@dataclass
class Runner:
    """What a locustfile may read of Locust's runner: the users running now (the profile's
    value at this instant), and ``quit()`` (stops the run)."""

    environment: Environment

    @property
    def user_count(self) -> int:
        return self.environment._users_now()

    def quit(self) -> None:
        self.environment._stop()


@dataclass
class Environment:
    host: str | None = None
    parsed_options: argparse.Namespace = field(default_factory=argparse.Namespace)
    events: Events = events
    runner: Runner | None = None
    stats: Any = None
    web_ui: Any = None
    shape_class: Any = None
    user_classes: list[type] = field(default_factory=list)
    _stop_fn: Any = None
    _users_fn: Any = None

    def __post_init__(self) -> None:
        self.runner = Runner(self)

    def _users_now(self) -> int:
        return int(self._users_fn()) if self._users_fn is not None else 0

    def _stop(self) -> None:
        if self._stop_fn is not None:
            self._stop_fn()


_CURRENT = Environment()


def current() -> Environment:
    return _CURRENT


def set_current(env: Environment) -> None:
    global _CURRENT
    _CURRENT = env
