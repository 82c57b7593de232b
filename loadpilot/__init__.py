"""LoadPilot: load testing and latency analysis that lives in a notebook.

Build a :class:`Plan`, :func:`start` it (or :func:`run` it to the end), and read
``run.metrics`` (a Polars DataFrame that grows while the run goes), ``run.summary()`` and
``run.histogram()``. :func:`load_run` reopens any run directory; :func:`load_locustfile` reads a
locustfile as a scenario. Analysis: :func:`compare`
two runs, :func:`spectrum` of latency, :func:`capacity` and :func:`max_sustainable_rps` of a
step run, :func:`fit_usl`, :func:`report` and :func:`export`; charts in ``lp.charts``.
"""

from typing import TYPE_CHECKING, Any

from loadpilot._engine import __version__
from loadpilot.errors import (
    ClusterError,
    LoadPilotError,
    PlanError,
    RequestError,
    RunDirError,
    ScenarioError,
    TargetError,
)
from loadpilot.launch import run, start
from loadpilot.locust.reading import load_locustfile
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
from loadpilot.running.runs import Histogram, LoadedRun, Run, RunResult, load_run
from loadpilot.running.testbed import TargetServer, start_target
from loadpilot.running.vusers import Response
from loadpilot.scenarios.loader import load_scenario, load_scenarios
from loadpilot.scenarios.scenario import (
    Scenario,
    VUser,
    expect,
    feed,
    scenario,
    task,
)
from loadpilot.summary import Summary

if TYPE_CHECKING:
    from loadpilot.analysis import charts, traces
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
    from loadpilot.search import CapacitySearch, find_capacity

# Analysis, charts, reports and widgets pull in numpy, Altair and ipywidgets: imported on first
# use, so a load test (and the CLI) starts without them.
_LAZY = {
    "charts": ("loadpilot.analysis.charts", None),
    "traces": ("loadpilot.analysis.traces", None),
    "export": ("loadpilot.analysis.spectra", "export"),
    "spectrum": ("loadpilot.analysis.spectra", "spectrum"),
    "USL": ("loadpilot.analysis.planning", "USL"),
    "Capacity": ("loadpilot.analysis.planning", "Capacity"),
    "Sustainable": ("loadpilot.analysis.planning", "Sustainable"),
    "capacity": ("loadpilot.analysis.planning", "capacity"),
    "fit_usl": ("loadpilot.analysis.planning", "fit_usl"),
    "max_sustainable_rps": ("loadpilot.analysis.planning", "max_sustainable_rps"),
    "CapacitySearch": ("loadpilot.search", "CapacitySearch"),
    "find_capacity": ("loadpilot.search", "find_capacity"),
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
    # Scenarios and plans
    "ClosedLoad",
    "Constant",
    "Expect",
    "Feeder",
    "OpenLoad",
    "Plan",
    "Profile",
    "Ramp",
    "Request",
    "Scenario",
    "Spike",
    "Step",
    "Task",
    "VUser",
    "constant",
    "expect",
    "feed",
    "hold",
    "load_locustfile",
    "load_scenario",
    "load_scenarios",
    "parse_duration",
    "ramp",
    "scenario",
    "spike",
    "stages",
    "step",
    "task",
    "users",
    # Running
    "Agents",
    "Histogram",
    "LoadedRun",
    "Response",
    "Run",
    "RunResult",
    "Summary",
    "TargetServer",
    "load_run",
    "run",
    "start",
    "start_target",
    # Analysis, charts, reports and widgets (loaded on first use)
    "Capacity",
    "CapacitySearch",
    "Comparison",
    "LoadedLog",
    "Sustainable",
    "Tuner",
    "USL",
    "capacity",
    "charts",
    "compare",
    "export",
    "find_capacity",
    "fit_usl",
    "load_hlog",
    "max_sustainable_rps",
    "report",
    "spectrum",
    "traces",
    "tune",
    # Errors
    "ClusterError",
    "LoadPilotError",
    "PlanError",
    "RequestError",
    "RunDirError",
    "ScenarioError",
    "TargetError",
    "__version__",
]
