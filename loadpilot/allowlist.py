"""Which targets a process may send load to: the allow-list agents and serve mode share, and
the hosts a run's redirects may lead to (the engine's one rule)."""

from __future__ import annotations

from loadpilot import _engine

__all__ = ["target_allowed"]


def target_allowed(target: str, patterns: list[str]) -> bool:
    """Whether an agent whose operator allowed ``patterns`` may send load to ``target``.
    No patterns: loopback only. A pattern is a host or ``host:port`` glob (``*.test``,
    ``10.0.0.*:8080``); ``loopback`` names 127.0.0.0/8, ::1 and localhost."""
    return _engine.target_allowed(target, list(patterns))
