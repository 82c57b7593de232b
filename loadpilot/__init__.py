"""LoadPilot: load testing and latency analysis that lives in a notebook.

Build a :class:`Plan`, :func:`start` it (or :func:`run` it to the end), and read
``run.metrics`` (a Polars DataFrame that grows while the run goes), ``run.summary()`` and
``run.histogram()``. :func:`load_run` reopens any run directory. Analysis: :func:`compare`
two runs, :func:`spectrum` of latency, :func:`capacity` and :func:`max_sustainable_rps` of a
step run, :func:`fit_usl`, :func:`report` and :func:`export`; charts in ``lp.charts``.
"""

from typing import TYPE_CHECKING, Any

from loadpilot._engine import __version__
from loadpilot.errors import ClusterError, LoadPilotError, PlanError, RunDirError, TargetError
from loadpilot.plan import (
    ClosedLoad,
    Constant,
    Expect,
    Feeder,
    OpenLoad,
    Plan,
    Ramp,
    Request,
    Spike,
    Step,
    Task,
)
from loadpilot.profiles import (
    Profile,
    constant,
    hold,
    parse_duration,
    ramp,
    spike,
    stages,
    step,
    users,
)
from loadpilot.running.runs import Histogram, LoadedRun, Run, RunResult, load_run, run, start
from loadpilot.running.target import TargetServer, start_target
from loadpilot.running.vusers import RequestError, Response
from loadpilot.scenarios.loader import load_scenario, load_scenarios
from loadpilot.scenarios.scenario import (
    Scenario,
    ScenarioError,
    VUser,
    expect,
    feed,
    scenario,
    task,
)
from loadpilot.summary import Summary

if TYPE_CHECKING:
    from loadpilot.analysis import charts
    from loadpilot.analysis.comparing import Comparison, compare
    from loadpilot.analysis.logs import LoadedLog, load_hlog
    from loadpilot.analysis.planning import (
        USL,
        Capacity,
        Sustainable,
        capacity,
        fit_usl,
        max_sustainable_rps,
    )
    from loadpilot.analysis.reporting import report
    from loadpilot.analysis.spectra import export, spectrum
    from loadpilot.cluster.coordinator import Agents
    from loadpilot.notebook.tuner import Tuner, tune

# Analysis, charts, reports and widgets pull in numpy, Altair and ipywidgets: imported on first
# use, so a load test (and the CLI) starts without them.
_LAZY = {
    "charts": ("loadpilot.analysis.charts", None),
    "export": ("loadpilot.analysis.spectra", "export"),
    "spectrum": ("loadpilot.analysis.spectra", "spectrum"),
    "USL": ("loadpilot.analysis.planning", "USL"),
    "Capacity": ("loadpilot.analysis.planning", "Capacity"),
    "Sustainable": ("loadpilot.analysis.planning", "Sustainable"),
    "capacity": ("loadpilot.analysis.planning", "capacity"),
    "fit_usl": ("loadpilot.analysis.planning", "fit_usl"),
    "max_sustainable_rps": ("loadpilot.analysis.planning", "max_sustainable_rps"),
    "Comparison": ("loadpilot.analysis.comparing", "Comparison"),
    "compare": ("loadpilot.analysis.comparing", "compare"),
    "report": ("loadpilot.analysis.reporting", "report"),
    "LoadedLog": ("loadpilot.analysis.logs", "LoadedLog"),
    "load_hlog": ("loadpilot.analysis.logs", "load_hlog"),
    "Agents": ("loadpilot.cluster.coordinator", "Agents"),
    "Tuner": ("loadpilot.notebook.tuner", "Tuner"),
    "tune": ("loadpilot.notebook.tuner", "tune"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'loadpilot' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    found = value if attr is None else getattr(value, attr)
    globals()[name] = found
    return found


__all__ = [
    "Agents",
    "USL",
    "Capacity",
    "Comparison",
    "Sustainable",
    "capacity",
    "charts",
    "compare",
    "export",
    "fit_usl",
    "LoadedLog",
    "load_hlog",
    "max_sustainable_rps",
    "spectrum",
    "Tuner",
    "tune",
    "RequestError",
    "Response",
    "Profile",
    "Scenario",
    "ScenarioError",
    "VUser",
    "constant",
    "expect",
    "feed",
    "hold",
    "load_scenario",
    "load_scenarios",
    "parse_duration",
    "ramp",
    "report",
    "scenario",
    "spike",
    "stages",
    "step",
    "task",
    "users",
    "ClosedLoad",
    "Constant",
    "Expect",
    "Feeder",
    "Histogram",
    "ClusterError",
    "LoadPilotError",
    "LoadedRun",
    "OpenLoad",
    "Plan",
    "PlanError",
    "Ramp",
    "Request",
    "Run",
    "RunDirError",
    "RunResult",
    "Spike",
    "Step",
    "Summary",
    "TargetError",
    "TargetServer",
    "Task",
    "__version__",
    "load_run",
    "run",
    "start",
    "start_target",
]
