"""LoadPilot's exceptions. Every error the package raises on purpose derives from
:class:`LoadPilotError`."""

from loadpilot._engine import LoadPilotError, PlanError, RunDirError, TargetError

__all__ = ["LoadPilotError", "PlanError", "RunDirError", "TargetError"]
