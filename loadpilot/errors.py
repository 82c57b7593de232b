"""LoadPilot's exceptions. Every error the package raises on purpose derives from
:class:`LoadPilotError`."""

from loadpilot._engine import LoadPilotError, PlanError, RunDirError, TargetError

__all__ = ["ClusterError", "LoadPilotError", "PlanError", "RunDirError", "TargetError"]


class ClusterError(LoadPilotError):
    """A distributed run cannot start or go on: no NATS server, agents that do not come or
    that refuse the plan."""
