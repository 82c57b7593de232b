"""LoadPilot's exceptions. Every error the package raises on purpose derives from
:class:`LoadPilotError`."""

from loadpilot._engine import LoadPilotError, PlanError, ReportError, RunDirError, TargetError

__all__ = [
    "ClusterError",
    "LoadPilotError",
    "PlanError",
    "ReportError",
    "RequestError",
    "RunDirError",
    "ScenarioError",
    "TargetError",
]


class ScenarioError(PlanError):
    """A scenario file or class is invalid: the message names the file and line."""


class RequestError(LoadPilotError):
    """A request of a Python task got no response (``kind``: connect, dns, tls, timeout,
    reset, protocol, fd_limit, goaway, rst_stream, redirect, or cancelled when the run ended
    while it was in flight). The engine has counted it already; an uncaught one simply ends
    the iteration."""

    def __init__(self, kind: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {kind}")
        self.kind = kind


class ClusterError(LoadPilotError):
    """A distributed run cannot start or go on: no NATS server, agents that do not come or
    that refuse the plan."""
