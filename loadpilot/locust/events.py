"""Locust's ``events``: listeners on the hooks LoadPilot fires.

Fired: ``init_command_line_parser`` (the file's own options), ``init`` (once the locustfile is
read), ``test_start``, ``request`` (after each request a Python task sends; a locustfile with a
``request`` listener runs every task in Python so that it sees every request), ``user_error`` (a
task raised), ``test_stopping``, ``test_stop``, ``quitting`` and ``quit``. Any other Locust event
takes listeners and is never fired (``spawning_complete``, ``reset_stats``, ``usage_monitor``,
``cpu_warning``, and those of Locust's master/worker runners: ``report_to_master``,
``worker_report``, ``worker_connect``, ``heartbeat_sent``, ``heartbeat_received``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

#: The events LoadPilot fires; every other name is accepted and stays silent.
FIRED = (
    "init_command_line_parser",
    "init",
    "test_start",
    "request",
    "user_error",
    "test_stopping",
    "test_stop",
    "quitting",
    "quit",
)


class EventHook:
    """Listeners of one event: ``add_listener(fn)`` (also a decorator), ``fire(**kwargs)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._listeners: list[Callable[..., Any]] = []

    def add_listener(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        self._listeners.append(fn)
        return fn

    def remove_listener(self, fn: Callable[..., Any]) -> None:
        self._listeners.remove(fn)

    def has_listeners(self) -> bool:
        return bool(self._listeners)

    def fire(self, *, reverse: bool = False, **kwargs: Any) -> None:
        for fn in reversed(self._listeners) if reverse else list(self._listeners):
            try:
                fn(**kwargs)
            except Exception as e:  # noqa: BLE001 - a listener's error is reported, not fatal
                print(
                    f"loadpilot: {self.name} listener {fn.__qualname__} raised {e!r}",
                    file=sys.stderr,
                )


class Events:
    """Every event a locustfile may listen to (``events.test_start``, ...)."""

    def __init__(self) -> None:
        self._hooks: dict[str, EventHook] = {}

    def __getattr__(self, name: str) -> EventHook:
        if name.startswith("_"):
            raise AttributeError(name)
        hook = self._hooks.get(name)
        if hook is None:
            hook = self._hooks[name] = EventHook(name)
        return hook

    def reset(self) -> None:
        """Forget every listener (a new locustfile is being read)."""
        self._hooks.clear()

    def silent(self) -> list[str]:
        """Events with listeners that LoadPilot never fires."""
        return sorted(n for n, h in self._hooks.items() if h.has_listeners() and n not in FIRED)


events = Events()
