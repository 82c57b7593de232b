"""Starting runs: in this process, or spread over agents, with or without a Prometheus
exporter. The one place that knows every way a run can go; it sits above the wings it
composes (``running``, ``cluster``, ``serve.exporter``), which know nothing of it."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from loadpilot import _engine
from loadpilot.errors import PlanError, RunDirError
from loadpilot.plan import OpenLoad, Plan
from loadpilot.profiles import Profile
from loadpilot.running import store
from loadpilot.running.runs import Run, _Handle
from loadpilot.running.vusers import PythonUsers
from loadpilot.scenarios.scenario import Scenario, VUser, scenario_of

if TYPE_CHECKING:
    # Loaded when used: distributed runs need the NATS client, exporters prometheus_client.
    from loadpilot.cluster.coordinator import Agents

__all__ = ["run", "start"]


def _default_dir(plan: Plan) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", plan.name).strip("-") or "run"
    base = Path("runs") / f"{stamp}-{slug}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def start(
    what: Plan | Scenario | type[VUser],
    out: str | Path | None = None,
    *,
    target: str | None = None,
    profile: Profile | None = None,
    agents: int | Agents | None = None,
    prometheus: str | None = None,
    allow_hosts: list[str] | None = None,
) -> Run:
    """Starts a plan, or a scenario (its class or its :class:`Scenario`) against ``target``,
    and returns at once. The run directory is ``out`` (default ``runs/<time>-<name>``).
    ``profile`` replaces the plan's or scenario's load profile (e.g. one from ``lp.tune``).
    ``agents``: spread the run over agent processes (a number: that many started here, with a
    NATS server of their own; or :class:`Agents` for agents already running elsewhere); the
    run is the same run, with the same directory, rows and summary. ``prometheus``
    (``"127.0.0.1:9464"``): export the run's metrics for Prometheus at that address's
    ``/metrics`` (see docs/observability.md). ``allow_hosts``: the only hosts redirects may
    lead to (``host`` or ``host:port`` globs, ``loopback``), as serve mode's allow-list."""
    scenario: Scenario | None = None
    if isinstance(what, Plan):
        plan = what if target is None else what.model_copy(update={"target": target})
        if profile is not None:
            old = plan.load
            if isinstance(old, OpenLoad):
                load = profile.to_load(
                    connections=old.connections, arrivals=old.arrivals, seed=old.seed
                )
            else:
                load = profile.to_load()
            plan = plan.model_copy(update={"load": load})
    else:
        scenario = what if isinstance(what, Scenario) else scenario_of(what)
        if scenario is None:
            raise PlanError(f"{what!r} is not a scenario: decorate it with @lp.scenario")
        if target is None:
            raise PlanError("a scenario needs a target: lp.start(Scenario, target='http://...')")
        plan = scenario.plan(target, profile=profile)
    if allow_hosts is not None:
        plan = plan.model_copy(update={"allow_hosts": list(allow_hosts)})
    if plan.python() and scenario is None:
        raise PlanError(
            "a plan with python tasks or hooks runs from its scenario: lp.start(MyScenario, ...)"
        )
    path = Path(out) if out is not None else _default_dir(plan)
    if agents is not None:
        from loadpilot.cluster.coordinator import Agents as _Agents
        from loadpilot.cluster.coordinator import Coordinator

        spec = agents if isinstance(agents, _Agents) else _Agents(count=agents)
        _engine.validate_plan(plan.to_json())
        if path.joinpath(store.METRICS_JSONL).exists():
            raise RunDirError(f"{path}: already holds a run; choose another directory")
        coordinator = Coordinator(plan, scenario, path, spec)
        coordinator.start()
        return _judged(_exported(coordinator, lambda: Run(coordinator, plan), prometheus), scenario)
    handle = _engine.start_run(plan.to_json(), path)

    def made() -> Run:
        tickets = handle.tickets()
        if tickets is not None and scenario is not None:
            PythonUsers(handle, tickets, scenario).start()
        return Run(handle, plan)

    return _judged(_exported(handle, made, prometheus), scenario)


def _judged(run: Run, scenario: Scenario | None) -> Run:
    """The run, told its scenario's thresholds (``Run.verdicts()``, ``Run.report()``)."""
    if scenario is not None:
        run._thresholds = tuple(scenario.thresholds)
    return run


def _exported(handle: _Handle, make: Callable[[], Run], prometheus: str | None) -> Run:
    """The started run, made and exported; whatever stops this on its way (Ctrl-C, a port
    already taken) stops the run too, so that it ends and is summarised rather than left
    going without anyone to wait for it."""
    run: Run | None = None
    try:
        run = make()
        if prometheus is not None:
            from loadpilot.exporter import export

            export(run, prometheus)
        return run
    except BaseException:
        if run is not None:
            run.stop()
        else:
            handle.stop("stopped")
            handle.wait(None)
        raise


def run(
    what: Plan | Scenario | type[VUser],
    out: str | Path | None = None,
    *,
    target: str | None = None,
    profile: Profile | None = None,
    agents: int | Agents | None = None,
    prometheus: str | None = None,
) -> Run:
    """Runs a plan or a scenario to the end (Ctrl-C stops it early and keeps what it
    measured)."""
    r = start(what, out, target=target, profile=profile, agents=agents, prometheus=prometheus)
    r.wait()
    return r
