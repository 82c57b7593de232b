"""The ``loadpilot`` command: ``run FILE.py|PLAN.json``, ``locust -f LOCUSTFILE``, ``compare BASE
CAND``, ``report RUN...``, ``export RUN``, ``demo``, ``target``, ``serve`` and ``agent``.

Exit codes: 0 passed (thresholds met, no failed request unless an error_rate threshold allows
it; for ``compare``, no regression); 1 a threshold failed (``compare``: a metric regressed); 2
bad usage or input (scenario, plan, URL, run directory); 3 requests failed or were cancelled
and no threshold covered the error rate, or due requests were never sent; 4 the run is invalid:
it measured the load generator, not the system (``--allow-invalid`` judges it anyway); 130
stopped with Ctrl-C; 143 stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, get_args

import polars as pl
from pydantic import ValidationError

from loadpilot import launch, thresholds
from loadpilot.errors import LoadPilotError, PlanError
from loadpilot.locust import reading as locust_reading
from loadpilot.plan import (
    ClosedLoad,
    Constant,
    Expect,
    HttpVersion,
    OpenLoad,
    Plan,
    Ramp,
    Request,
    Task,
    check_field,
    describe,
    plan_request_names,
)
from loadpilot.profiles import Profile, constant, parse_duration
from loadpilot.running import runs as _run
from loadpilot.running import store as _store
from loadpilot.running.testbed import start_target
from loadpilot.scenarios.loader import load_scenario
from loadpilot.scenarios.scenario import Scenario
from loadpilot.summary import Summary

EXIT_OK = 0
EXIT_THRESHOLDS = 1
EXIT_USAGE = 2
EXIT_ERRORS = 3
EXIT_INVALID = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM (what CI runners and Kubernetes send): stop like Ctrl-C, keep what was
    measured, exit 143."""


class _StopOnce:
    """The handler of SIGINT and SIGTERM while a run goes: the first raises (Ctrl-C or
    ``_Terminated``), every later one is ignored. One signal can reach Python twice (polars
    checks for signals inside a read, and the interpreter again after): a second
    KeyboardInterrupt raised while the first is being handled would cut the stop and the
    summary short."""

    def __init__(self) -> None:
        self.raised: KeyboardInterrupt | None = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.raised is not None:
            return
        self.raised = _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        raise self.raised


#: The handler of this process's run, once installed (``main``).
_STOP: _StopOnce | None = None


def _progress(
    r: _run.Run, total_s: float, abort_on: list[thresholds.Threshold] | None = None
) -> list[thresholds.Verdict]:
    """One line per closed second while the run goes, the last one included: elapsed, rate vs
    target (an open model) or active users (a closed one), p50/p99, errors. With ``abort_on``,
    the thresholds are checked on each closed second and the first failure stops the run; the
    failing verdicts are returned."""
    seen_rows = 0
    #: Task rows read and not shown yet: a second is shown once all its rows are in.
    pending = _store.empty_metrics()

    def take() -> bool:
        nonlocal seen_rows, pending
        new, seen_rows = r._rows_after(seen_rows)
        if new.height:
            pending = pl.concat([pending, _store.task_rows(new)])
        return bool(new.height)

    def show_new() -> None:
        nonlocal pending
        take()
        for second in sorted(set(pending["elapsed_s"].to_list())):
            if second < total_s:  # the drain: summed up in the last lines
                rows = pending.filter(pl.col("elapsed_s") == second)
                print(_second_line(rows, second, total_s), flush=True)
        pending = pending.clear()

    while not r.wait(0.25):
        if not take():
            continue
        if abort_on:
            failed = [v for v in thresholds.evaluate(r.summary_so_far(), abort_on) if not v.passed]
            if failed:
                show_new()
                for v in failed:
                    print(f"aborting: {v}", flush=True)
                r.stop("aborted")
                return failed
        show_new()
    show_new()
    return []


def _ms(v: object) -> str:
    """A latency figure, or "-" when nothing was answered: the summary's rule too."""
    return f"{float(v):7.2f} ms" if isinstance(v, int | float) else f"{'-':>7} ms"


def _second_line(rows: pl.DataFrame, second: float, total_s: float) -> str:
    achieved = float(rows["achieved_rps"].sum())
    if rows["target_rps"].null_count() == len(rows):
        load = f"users {int(rows['active_users'].max() or 0)}"  # type: ignore[arg-type]
    else:
        # The target counts iterations: say how many ended, where they are not the requests.
        ips = float(rows.select(_store.ACHIEVED_IPS.sum()).item())
        done = f"{ips:.0f} iterations/s, " if round(ips) != round(achieved) else ""
        load = f"{done}target {float(rows['target_rps'].sum()):.0f}"
    end = min(second + float(rows["interval_s"].max() or 1), total_s)  # type: ignore[arg-type]
    return (
        f"  {end:5.0f}/{total_s:.0f} s  {achieved:8.0f} rps ({load})  "
        f"p50 {_ms(rows['p50_ms'].max())}  p99 {_ms(rows['p99_ms'].max())}  "
        f"errors {int(rows['errors'].sum())}"
    )


def _execute(
    what: Plan | Scenario,
    out: Path | None,
    checks: list[thresholds.Threshold] | None = None,
    target: str | None = None,
    abort_on_fail: bool = False,
    report_to: Path | None = None,
    source: Path | None = None,
    agents: Any = None,
    prometheus: str | None = None,
    after: Any = None,
    started: Any = None,
    junit_to: Path | None = None,
    allow_invalid: bool = False,
) -> int:
    """Runs, follows and judges a run; ``started(run)`` is called once it has started,
    ``after(run, summary)`` once it is over. An invalid run exits 4 unless ``allow_invalid``."""
    if report_to is not None:
        _check_output_file(report_to, "--report")
    if junit_to is not None:
        _check_output_file(junit_to, "--junit")
    try:
        r = launch.start(what, out, target=target, agents=agents, prometheus=prometheus)
    except PlanError as e:
        if source is None:
            raise
        raise PlanError(f"{source}: {e}") from None
    print(f"run directory: {r.path}", flush=True)
    if started is not None:
        started(r)
    if prometheus is not None:
        print(f"prometheus metrics: http://{prometheus}/metrics", flush=True)
    if agents is not None:
        for a in r.agents.iter_rows(named=True):
            print(
                f"  agent {a['name']}: clock offset {a['clock_offset_ms']:+.2f} ms "
                f"(round trip {a['rtt_ms']:.2f} ms)",
                flush=True,
            )
    console = _console()
    aborted, interrupted = _follow(r, checks if abort_on_fail else None, console)
    s = r.summary()
    verdicts = thresholds.evaluate(s, checks or [])
    if console is not None:
        from loadpilot import terminal

        for v in aborted:
            console.print(f"[bold red]aborting:[/] {v}")
        console.print(terminal.summary_table(s, verdicts))
    else:
        print()
        print(s.table())
        if verdicts:
            print("\nthresholds:")
            for v in verdicts:
                print(f"  {v}")
    if report_to is not None:
        from loadpilot.analysis.reporting import report

        print(f"report: {report(r, report_to, checks)}")
    if junit_to is not None:
        from loadpilot.analysis.junit import run_junit

        print(f"junit: {run_junit(s, verdicts, junit_to, r.path)}")
    _print_slowest(r)
    if after is not None:
        after(r, s)
    _print_end(r, s, agents is not None)
    if interrupted is not None:
        return EXIT_TERMINATED if isinstance(interrupted, _Terminated) else EXIT_INTERRUPTED
    if s.validity is not None and s.validity.verdict == "invalid" and not allow_invalid:
        # Whatever the thresholds say, they judged the generator: say so first.
        print(
            "the run is invalid: it measured the load generator, not the system "
            "(--allow-invalid to judge it anyway)"
        )
        return EXIT_INVALID
    if aborted or not all(v.passed for v in verdicts):
        return EXIT_THRESHOLDS
    return _exit_for_failures(s, verdicts)


def _print_slowest(r: _run.Run) -> None:
    """The run's five slowest requests, with their trace ids, when it kept any."""
    from loadpilot.analysis import traces

    slow = traces.kept(r)
    if not slow.is_empty():
        print(f"\nslowest requests (all kept: loadpilot slowest {r.path}):")
        print(traces.table(slow, 5))


def _console() -> Any:
    """A rich console when standard output is a terminal (a panel redrawn in place); None for
    CI logs and pipes (one line per second)."""
    if not sys.stdout.isatty():
        return None
    from rich.console import Console

    return Console()


def _follow(
    r: _run.Run, abort_on: list[thresholds.Threshold] | None, console: Any
) -> tuple[list[thresholds.Verdict], KeyboardInterrupt | None]:
    """Shows the run's progress until it ends; stops it (keeping what it measured) on Ctrl-C
    or SIGTERM. Returns the thresholds that aborted it, and the interruption, if any."""
    aborted: list[thresholds.Verdict] = []
    try:
        if console is not None:
            from loadpilot import terminal

            aborted = terminal.live_progress(r, r.plan.duration_s, abort_on, console, r.stop)
        else:
            aborted = _progress(r, r.plan.duration_s, abort_on)
    except Exception:
        # A library that checks for signals inside its own code (polars does, in a read) can
        # turn the interrupt raised there into an error of its own: after a stop signal, that
        # error is the signal.
        if _STOP is None or _STOP.raised is None:
            raise
        return aborted, _stopped(r, _STOP.raised)
    except KeyboardInterrupt as e:
        return aborted, _stopped(r, e)
    return aborted, None


def _stopped(r: _run.Run, e: KeyboardInterrupt) -> KeyboardInterrupt:
    """Stops ``r`` after the interruption ``e``, keeping what it measured; returns ``e``.
    Stopping is bounded (about a second): a second Ctrl-C (or one delivered twice, as polars
    can raise it inside a read and again after) must not cut the summary short."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for attempt in range(3):
        try:
            if attempt == 0:
                print("\nstopping: keeping everything measured so far", flush=True)
            r.stop()
            break
        except KeyboardInterrupt:  # already on its way before signals were ignored
            continue
    return e


def _print_end(r: _run.Run, s: Summary, distributed: bool) -> None:
    """How the run ended, where it is, every due request accounted for, lost agents."""
    drain = f" (+{s.drain_s:.2f} s drain)" if s.drain_s >= 0.005 else ""
    print(f"\nended: {s.ended} after {s.duration_s:.2f} s{drain}; everything is in {r.path}/")
    if s.target_requests is not None:
        o = s.overall
        print(
            f"accounted for: {s.target_requests:,.0f} due = {o.iterations or 0:,} ran "
            f"+ {o.cancelled:,} cancelled + {o.unsent:,} unsent"
        )
    if distributed:
        lost = r.agents.filter(pl.col("state") == "lost")["name"].to_list()
        print(
            f"agents: {r.agents.height}"
            + (f", lost: {', '.join(lost)} (see {r.path}/events.jsonl)" if lost else "")
        )


def _exit_for_failures(s: Summary, verdicts: list[thresholds.Verdict]) -> int:
    """Exit 3 when requests failed (and no error-rate threshold judged them) or were due and
    never sent; else 0."""
    why = thresholds.unjudged(s.overall, verdicts, s.ended)
    for line in why:
        print(line)
    return EXIT_ERRORS if why else EXIT_OK


def _check_output_file(path: Path, what: str) -> None:
    """Refuses, before anything runs, an output file that cannot be written."""
    if path.is_dir():
        raise LoadPilotError(f"{what} {path}: is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise LoadPilotError(f"{what} {path}: directory {parent} does not exist")


def demo_plan(target: str) -> Plan:
    """The bundled demo: a 5 s ramp to 500 rps, held for 15 s, on a 5:1 mix of two tasks."""
    return Plan(
        name="demo",
        target=target,
        load=OpenLoad(
            stages=[Ramp(from_=0, to=500, duration_s=5), Constant(rate=500, duration_s=15)]
        ),
        tasks=[
            Task(
                name="browse",
                weight=5,
                requests=[
                    Request(
                        path="/json",
                        expect=Expect(status=[200], json_path="$.items[0].name", json_equals="tea"),
                    )
                ],
            ),
            Task(
                name="echo",
                weight=1,
                requests=[
                    Request(
                        method="POST",
                        path="/echo",
                        json_={"iteration": "{{__iter}}"},
                        expect=Expect(status=[200], body_contains="iteration"),
                    )
                ],
            ),
        ],
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    with start_target(delay_ms=1.0, delay_max_ms=5.0) as target:
        print(f"built-in target on {target.url} (1-5 ms per request)")
        # The demo shows its validity; it gates nothing.
        return _execute(demo_plan(target.url), args.out, allow_invalid=True)


def _cmd_target(args: argparse.Namespace) -> int:
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: --host {args.host} serves the built-in target beyond this machine "
            "(to every interface for 0.0.0.0 or ::); use 127.0.0.1 to keep it local",
            file=sys.stderr,
            flush=True,
        )
    server = start_target(
        host=args.host,
        port=args.port,
        delay_ms=args.delay_ms,
        delay_max_ms=args.delay_max_ms,
        error_rate=args.error_rate,
        stall_ms=args.stall_ms,
        stall_every_s=args.stall_every_s,
        seed=args.seed,
        tls=args.tls,
        concurrency=args.concurrency,
        # Nothing outside this process can read the trace log: keeping it would only cost
        # the target time and memory on every traced request.
        keep_traces=0,
    )
    print(f"built-in target listening on {server.url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        end = time.monotonic() + args.for_s if args.for_s else None
        while not stop.wait(0.2):
            if end is not None and time.monotonic() >= end:
                break
    except KeyboardInterrupt:
        pass
    served = server.served
    server.stop()
    print(f"built-in target stopped: served {served} requests", flush=True)
    return EXIT_OK


def _target(args: argparse.Namespace, plan_target: str | None) -> str:
    target = args.target or os.environ.get("LOADPILOT_TARGET") or plan_target
    if not target:
        raise LoadPilotError("no target: give --target URL or set LOADPILOT_TARGET")
    return target


def _override(profile: Profile, args: argparse.Namespace) -> Profile:
    """``--rps`` replaces an open profile by a constant rate (for the profile's duration, or
    ``--duration``); ``--duration`` alone stretches or squeezes the profile's stages to that
    total, keeping its shape (a ramp stays a ramp, a closed model keeps its think time)."""
    if args.rps is None and args.duration is None:
        return profile
    if args.rps is not None:
        if profile.model == "closed":
            raise LoadPilotError("--rps applies to open-model scenarios; this one has users")
        duration = args.duration if args.duration is not None else profile.duration_s
        return constant(args.rps, duration)
    return profile.scaled(args.duration)


def _cmd_run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    cli_checks = list(args.threshold or [])
    if path.suffix == ".py" and locust_reading.is_locustfile(path):
        return _run_locustfile(
            path,
            args,
            chosen=[],
            users=1,
            spawn_rate=1.0,
            run_time=args.duration,
            tags=None,
            exclude=None,
            host=_target(args, None) if args.target or os.environ.get("LOADPILOT_TARGET") else None,
            report=args.report,
            drain=None,
            error_code=EXIT_ERRORS,
        )
    if path.suffix == ".py":
        chosen = load_scenario(path, args.scenario)
        names = [t.name for t in chosen.tasks]
        known = chosen.request_names
        checks = [
            *chosen.thresholds,
            *(thresholds.parse_cli(t, names, known) for t in cli_checks),
        ]
        profile = _override(chosen.profile, args)
        if profile != chosen.profile:
            print(f"profile (from the command line): {profile.describe()}")
        chosen = dataclasses.replace(chosen, profile=profile, **_protocol(args))
        print(
            f"scenario {chosen.name}: "
            + ", ".join(f"{t.name} (weight {t.weight}, {t.path})" for t in chosen.tasks)
        )
        if chosen.reason:
            print(f"  python path: {chosen.reason}")
        if chosen.hooks.values:
            print(f"  per-user values from on_start: {', '.join(chosen.hooks.values)}")
        if chosen.http != "1.1":
            print(f"  http {chosen.http}: up to {chosen.max_streams} users share a connection")
        abort = args.abort_on_fail or chosen.abort_on_fail
        return _execute(
            chosen,
            args.out,
            checks,
            _target(args, None),
            abort,
            args.report,
            source=path,
            agents=_agents(args),
            prometheus=args.prometheus,
            junit_to=args.junit,
            allow_invalid=args.allow_invalid,
        )
    try:
        text = path.read_bytes()
    except OSError as e:
        raise LoadPilotError(f"{path}: {e.strerror}") from e
    try:
        plan = Plan.from_json(text)
    except ValueError as e:
        raise LoadPilotError(f"{path}: {e}") from e
    names = [t.name for t in plan.tasks]
    known = None if plan.python() else plan_request_names(plan)
    checks = [thresholds.parse_cli(t, names, known) for t in cli_checks]
    plan = plan.model_copy(update={"target": _target(args, plan.target), **_protocol(args)})
    if args.rps is not None or args.duration is not None:
        raise LoadPilotError("--rps and --duration apply to scenario files; edit the plan instead")
    return _execute(
        plan,
        args.out,
        checks,
        None,
        args.abort_on_fail,
        args.report,
        source=path,
        agents=_agents(args),
        prometheus=args.prometheus,
        junit_to=args.junit,
        allow_invalid=args.allow_invalid,
    )


def _run_locustfile(
    path: Path,
    args: argparse.Namespace,
    *,
    chosen: list[str],
    users: int,
    spawn_rate: float,
    run_time: float | None,
    tags: list[str] | None,
    exclude: list[str] | None,
    host: str | None,
    report: Path | None,
    drain: float | None,
    error_code: int,
) -> int:
    """A locustfile run as Locust would run it headless (users, spawn rate, run time, tags),
    or as an open model at ``--rps``."""
    from loadpilot.locust.environment import Environment
    from loadpilot.locust.events import events

    own = bool(getattr(args, "extra", None))
    lf = locust_reading.read(path, [] if own else chosen)
    if own:
        # Options of the file's own (its init_command_line_parser listeners): the command line
        # is read again with them, as Locust reads it once the file is imported.
        full = _parser()
        locust_reading.add_own_options(_subparser(full, "locust"))
        args = full.parse_args(args.argv)
        lf = locust_reading.choose(lf, list(args.user_classes or []))
    host = host or next((c.host for c in lf.users if c.host), None)
    if not host:
        raise LoadPilotError(
            f"{path}: no host: give -H/--host (or --target), or set host on the user class"
        )
    iterations: int | None = getattr(args, "iterations", None)
    if iterations is not None and getattr(args, "rps", None) is not None:
        raise LoadPilotError(
            "-i/--iterations counts the users' iterations; --rps runs an open model at a rate "
            "instead: give one"
        )
    until_done = iterations is not None and run_time is None
    if until_done:
        run_time = 86_400.0  # the iterations end the run; a day bounds it all the same
    if getattr(args, "rps", None) is not None:
        if run_time is None:
            raise LoadPilotError("--rps needs a run time (-t/--run-time, or --duration)")
        profile = constant(args.rps, run_time)
        source = f"{args.rps:g} task iterations a second for {run_time:g}s (open model)"
    elif lf.shape is not None:
        # As under Locust, the file's shape decides the users (-u and -r are set aside).
        profile = locust_reading.shape_profile(lf.shape, run_time or 86_400.0)
        source = f"{type(lf.shape).__name__} (the file's shape: -u and -r set aside)"
    else:
        if run_time is None:
            raise LoadPilotError(
                f"{path}: give a run time (-t/--run-time; `loadpilot run`: --duration): "
                "a LoadPilot run is bounded"
            )
        profile = locust_reading.users_over(users, spawn_rate, run_time)
        source = f"{users} users at {spawn_rate:g}/s " + (
            f"until {iterations:,} iterations have run (a day at most)"
            if until_done
            else f"for {run_time:g}s"
        )
    if iterations is not None:
        profile = dataclasses.replace(profile, max_iterations=iterations)
    # Locust's names for what its options hold, beside LoadPilot's.
    args.num_users, args.spawn_rate, args.run_time, args.host = users, spawn_rate, run_time, host
    env = Environment(host=host, parsed_options=args, shape_class=lf.shape)
    options: dict[str, Any] = {}
    if drain is not None:
        options["max_drain"] = drain
    chosen_scenario = locust_reading.to_scenario(
        lf,
        profile,
        include=set(tags) if tags else None,
        exclude=set(exclude) if exclude else None,
        env=env,
        scenario_options=options,
    )
    names = [t.name for t in chosen_scenario.tasks]
    checks = [
        thresholds.parse_cli(t, names, chosen_scenario.request_names)
        for t in (args.threshold or [])
    ]
    print(f"locustfile {path}: {source}; {chosen_scenario.profile.describe()}")
    print(
        f"scenario {chosen_scenario.name}: "
        + ", ".join(f"{t.name} (weight {t.weight}, {t.path})" for t in chosen_scenario.tasks)
    )
    if chosen_scenario.reason:
        print(f"  python path: {chosen_scenario.reason}")
    silent = events.silent()
    if silent:
        print(f"  listeners LoadPilot never fires: {', '.join(silent)} (see docs/locust.md)")
    prefix = getattr(args, "csv", None)
    if prefix is not None:
        _check_output_file(Path(f"{prefix}_stats.csv"), "--csv")

    def after(r: _run.Run, s: Summary) -> None:
        """Locust's table (and its CSV files) once the run is over."""
        from loadpilot.locust import clients, stats

        tasks = chosen_scenario.tasks
        methods = {q.name: q.method for t in tasks for q in t.requests if q.name}
        methods.update(clients.METHODS)
        print("\nas Locust reports it (service time, ms), with the corrected p99:")
        print(stats.table(stats.rows(r, s, methods), max(s.duration_s, 1e-9)))
        if prefix is not None:
            for written in stats.write(r, s, prefix, methods):
                print(f"csv: {written}")

    def started(r: _run.Run) -> None:
        """What the file's code reads of the run: users wanted now, and quit()."""
        corners = chosen_scenario.profile.points()
        env._users_fn = lambda: locust_reading.value_at(corners, r.elapsed_s)
        env._stop_fn = r.stop

    events.init.fire(environment=env, runner=env.runner, web_ui=None)
    events.test_start.fire(environment=env)
    try:
        code = _execute(
            chosen_scenario,
            args.out,
            checks,
            host,
            False,
            report,
            source=path,
            agents=_agents(args),
            prometheus=getattr(args, "prometheus", None),
            after=after,
            started=started,
            junit_to=getattr(args, "junit", None),
            allow_invalid=getattr(args, "allow_invalid", False),
        )
        code = error_code if code == EXIT_ERRORS else code
    finally:
        events.test_stopping.fire(environment=env)
        events.test_stop.fire(environment=env)
        events.quitting.fire(environment=env)
    events.quit.fire(exit_code=code)
    return code


def _locust_time(text: str) -> float:
    """Locust's run time: ``20``, ``300s``, ``20m``, ``3h``, ``1h30m``, ``1h30m20s``."""
    import re

    m = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*", text)
    if text.strip().isdigit():
        seconds = float(text)
    elif m and any(m.groups()):
        h, mi, s = (int(g or 0) for g in m.groups())
        seconds = h * 3600.0 + mi * 60.0 + s
    else:
        raise argparse.ArgumentTypeError(f"{text!r}: write a run time like 20s, 5m, 1h30m")
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a run time is more than zero")
    return seconds


def _cmd_locust(args: argparse.Namespace) -> int:
    if args.report is not None and args.html is not None:
        raise LoadPilotError("--html and --report both name the report: give one")
    return _run_locustfile(
        Path(args.locustfile),
        args,
        chosen=list(args.user_classes or []),
        users=args.users if args.users is not None else 1,
        spawn_rate=args.spawn_rate,
        run_time=args.run_time,
        tags=args.tags,
        exclude=args.exclude_tags,
        host=args.host,
        report=args.html or args.report,
        drain=args.stop_timeout,
        error_code=args.exit_code_on_error,
    )


def _agents(args: argparse.Namespace) -> Any:
    """The agents a run asks for on the command line (None: a run in this process)."""
    if args.agents is None and args.external_agents is None:
        if args.nats is not None:
            raise LoadPilotError("--nats needs --agents N (started here) or --external-agents N")
        return None
    if args.agents is not None and args.external_agents is not None:
        raise LoadPilotError("give --agents N (started here) or --external-agents N, not both")
    from loadpilot.cluster.coordinator import Agents

    external = args.external_agents is not None
    if external and args.nats is None:
        raise LoadPilotError("--external-agents needs --nats URL of the agents' NATS server")
    secure = _nats_secure(args)
    if args.nats is None and secure != type(secure)(token=secure.token):
        raise LoadPilotError(
            "--creds, --tls-ca, --tls-cert and --tls-key are for a NATS server given with --nats"
        )
    return Agents(
        count=args.external_agents if external else args.agents,
        nats=args.nats,
        spawn=not external,
        timeout_s=getattr(args, "agents_timeout", 60.0),
        on_loss=getattr(args, "on_agent_loss", "redistribute"),
        token=secure.token if args.nats else None,
        creds=secure.creds,
        tls_ca=secure.tls_ca,
        tls_cert=secure.tls_cert,
        tls_key=secure.tls_key,
    )


def _nats_secure(args: argparse.Namespace) -> Any:
    """The NATS token, credentials and certificates given on the command line (the token: as
    agents read it, kept out of the URL and out of `ps`, e.g. from a Secret)."""
    from loadpilot.cluster.protocol import Secure

    return Secure(
        token=getattr(args, "token_nats", None) or os.environ.get("LOADPILOT_NATS_TOKEN") or None,
        creds=args.creds,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def _add_nats_secure(p: argparse.ArgumentParser) -> None:
    """The flags that connect to a NATS server with credentials or over TLS: the same on
    every verb that talks to NATS."""
    p.add_argument("--creds", default=None, help="NATS credentials file (.creds)")
    p.add_argument("--tls-ca", default=None, help="CA certificate to verify NATS over TLS")
    p.add_argument("--tls-cert", default=None, help="client certificate for NATS (mutual TLS)")
    p.add_argument("--tls-key", default=None, help="the client certificate's key")


def _cmd_serve(args: argparse.Namespace) -> int:
    from loadpilot.allowlist import target_allowed

    token = args.token or os.environ.get("LOADPILOT_TOKEN") or None
    if not target_allowed(f"http://{args.host}", []) and token is None:
        raise LoadPilotError(
            f"--host {args.host} is not loopback: give --token (or $LOADPILOT_TOKEN) so the API "
            "is not open to anyone who reaches it"
        )
    try:
        import uvicorn

        from loadpilot.serve.api import Limits, create_app
    except ImportError:
        raise LoadPilotError(
            "serve mode needs FastAPI: pip install '.[serve]' from a LoadPilot checkout"
        ) from None
    limits = Limits(
        max_rate=args.max_rate,
        max_duration_s=args.max_duration,
        max_users=args.max_users,
        max_body_bytes=args.max_body,
        allow_targets=args.allow_target,
        allow_code=args.allow_code,
    )
    agents = _agents(args)
    app = create_app(args.runs, token=token, limits=limits, agents=agents, keep_runs=args.keep_runs)
    print(f"loadpilot serve: http://{args.host}:{args.port} (runs in {args.runs})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


def _cmd_agent(args: argparse.Namespace) -> int:
    from loadpilot.cluster.agent import Agent

    Agent(
        args.nats,
        args.name,
        secure=_nats_secure(args),
        allow_targets=args.allow_target,
        allow_code=args.allow_code,
        health_port=args.health_port,
    ).run_forever()
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from loadpilot.analysis.comparing import compare

    c = compare(
        args.baseline,
        args.candidate,
        noise=args.noise,
        error_noise=args.error_noise,
        confidence=args.confidence,
        resamples=args.resamples,
        seed=args.seed,
        start=args.start,
        end=args.end,
        service=args.service,
    )
    print(c.to_json() if args.json else c.table())
    if args.junit is not None:
        from loadpilot.analysis.junit import compare_junit

        written = compare_junit(c, args.junit)
        if not args.json:
            print(f"junit: {written}")
    return EXIT_THRESHOLDS if c.regressed else EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from loadpilot.analysis.reporting import report

    checks = [thresholds.parse_cli(t) for t in args.threshold or []]
    _check_output_file(args.output, "-o")
    print(f"report: {report(args.runs, args.output, checks)}")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from loadpilot.analysis.spectra import export

    formats = args.format or ["csv", "parquet", "hgrm"]
    for f in export(args.run, args.to, formats=formats):
        print(f)
    return EXIT_OK


def _cmd_slowest(args: argparse.Namespace) -> int:
    from loadpilot.analysis import traces

    above: str | float | None = args.above
    if args.above == "all":
        above = None
    elif args.above is not None and not args.above.startswith("p"):
        try:
            above = float(args.above.removesuffix("ms"))
        except ValueError:
            raise ValueError(
                f"--above {args.above!r}: give a percentile (p99.9), milliseconds (250) or all"
            ) from None
    elif args.above is None:
        above = None if args.sample else "p99.9"
    run = _run.load_run(args.run)
    slow = run.slowest(args.task, args.request, above, sample=args.sample)
    if args.json:
        for row in slow.head(args.limit).iter_rows(named=True):
            print(json.dumps(row, default=str))
        return EXIT_OK
    print(traces.table(slow, args.limit))
    return EXIT_OK


def _share(text: str) -> float:
    """``5%`` or ``0.05``."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share (write 2% or 0.02)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return n


def _iterations(text: str) -> int:
    try:
        n: int = check_field("max_iterations", int(text), ClosedLoad)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    except PlanError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return n


def _streams(text: str) -> int:
    try:
        n: int = check_field("max_streams", _count(text))
    except PlanError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return n


def _protocol(args: argparse.Namespace) -> dict[str, Any]:
    """The HTTP version and streams per connection given on the command line (what is not
    given stays the scenario's or the plan's)."""
    given = {"http": args.http, "max_streams": args.max_streams}
    return {k: v for k, v in given.items() if v is not None}


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except LoadPilotError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loadpilot",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_target(sub)
    _add_run(sub)
    _add_capacity(sub)
    _add_locust(sub)
    _add_serve(sub)
    _add_agent(sub)
    _add_compare(sub)
    _add_report(sub)
    _add_export(sub)
    _add_slowest(sub)
    return p


def _add_demo(sub: Any) -> None:
    d = sub.add_parser("demo", help="run a demo load test against the built-in target")
    d.add_argument("--out", type=Path, default=None, help="run directory")
    d.set_defaults(fn=_cmd_demo)


def _add_target(sub: Any) -> None:
    t = sub.add_parser("target", help="serve the built-in target")
    t.add_argument("--host", default="127.0.0.1", help="address to bind")
    t.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    t.add_argument("--delay-ms", type=float, default=0.0, help="answer each request this late")
    t.add_argument(
        "--delay-max-ms",
        type=float,
        default=None,
        help="with --delay-ms: a delay drawn uniformly between the two",
    )
    t.add_argument(
        "--error-rate", type=float, default=0.0, help="share of requests answered 500 (0 to 1)"
    )
    t.add_argument("--stall-ms", type=float, default=0.0, help="stop answering for this long ...")
    t.add_argument(
        "--stall-every-s", type=float, default=0.0, help="... once every this many seconds"
    )
    t.add_argument("--seed", type=int, default=0, help="seed of the drawn delays and errors")
    t.add_argument("--tls", action="store_true", help="serve https (self-signed certificate)")
    t.add_argument(
        "--concurrency", type=int, default=0, help="serve at most N requests at once (0: no cap)"
    )
    t.add_argument("--for-s", type=float, default=None, help="stop after this many seconds")
    t.set_defaults(fn=_cmd_target)


def _add_run(sub: Any) -> None:
    r = sub.add_parser("run", help="run a scenario file (.py) or a plan (.json)")
    r.add_argument("file", help="FILE.py or PLAN.json")
    r.add_argument("--target", default=None, help="target URL (else $LOADPILOT_TARGET)")
    r.add_argument("--scenario", default=None, help="which scenario of the file")
    r.add_argument("--out", type=Path, default=None, help="run directory")
    r.add_argument("--threshold", action="append", help="e.g. 'p99<25ms' (repeatable)")
    r.add_argument("--abort-on-fail", action="store_true", help="stop as soon as a threshold fails")
    r.add_argument(
        "--allow-invalid",
        action="store_true",
        help="judge an invalid run (one that measured the generator, not the system) by its "
        "thresholds instead of exiting 4",
    )
    r.add_argument("--report", type=Path, default=None, help="write an HTML report (FILE.html)")
    r.add_argument(
        "--junit",
        type=Path,
        default=None,
        help="write JUnit XML (FILE.xml): a test case per threshold, per task and for the end",
    )
    r.add_argument(
        "--rps", type=float, default=None, help="run at this constant rate instead (open model)"
    )
    r.add_argument(
        "--duration",
        type=_duration,
        default=None,
        help='stretch or squeeze the profile to this total, keeping its shape: "30s", "5m", '
        "or seconds (with --rps: how long the constant rate lasts)",
    )
    r.add_argument(
        "--http",
        choices=list(get_args(HttpVersion)),
        default=None,
        help="HTTP version (else the scenario's or plan's, 1.1 by default): 1.1, 2 (HTTP/2; "
        "prior knowledge on http://) or auto (HTTP/2 where the server offers it over TLS)",
    )
    r.add_argument(
        "--max-streams",
        type=_streams,
        default=None,
        help="HTTP/2: the most users sharing one connection as concurrent streams (100)",
    )
    r.add_argument(
        "--agents", type=_count, default=None, help="spread the run over N agents started here"
    )
    r.add_argument(
        "--nats",
        default=None,
        help="NATS URL of the agents (default with --agents: a server started for the run)",
    )
    r.add_argument(
        "--external-agents",
        type=_count,
        default=None,
        help="spread the run over N agents already running (`loadpilot agent`), found on --nats",
    )
    r.add_argument(
        "--agents-timeout",
        type=_duration,
        default=60.0,
        help="how long to wait for the agents to answer (60s)",
    )
    r.add_argument(
        "--on-agent-loss",
        choices=["redistribute", "continue", "abort"],
        default="redistribute",
        help="when an agent is lost mid-run: survivors take over its share (redistribute, "
        "the default), go on without it, or abort",
    )
    r.add_argument(
        "--prometheus",
        default=None,
        metavar="HOST:PORT",
        help="export the run's metrics for Prometheus at http://HOST:PORT/metrics",
    )
    _add_nats_secure(r)
    r.set_defaults(fn=_cmd_run)


def _add_locust(sub: Any) -> None:
    lo = sub.add_parser(
        "locust",
        help="run a locustfile with Locust's command line (headless), on LoadPilot's engine",
        description="Runs a locustfile unchanged, as `locust --headless` would, with LoadPilot's "
        "engine keeping the time (see docs/locust.md). Exit codes: as `loadpilot run`, except "
        "that failed requests exit with --exit-code-on-error (1).",
    )
    lo.add_argument("user_classes", nargs="*", help="user classes to run (default: all)")
    lo.add_argument("-f", "--locustfile", default="locustfile.py", help="the locustfile")
    lo.add_argument(
        "-H", "--host", default=None, help="the host to load, e.g. http://127.0.0.1:8080"
    )
    lo.add_argument("-u", "--users", type=_count, default=None, help="peak number of users (1)")
    lo.add_argument(
        "-r", "--spawn-rate", type=_positive, default=1.0, help="users started a second (1)"
    )
    lo.add_argument(
        "-t", "--run-time", type=_locust_time, default=None, help="e.g. 300s, 20m, 1h30m"
    )
    lo.add_argument(
        "--headless", action="store_true", help="accepted: LoadPilot always runs headless"
    )
    lo.add_argument("-T", "--tags", nargs="*", default=None, help="run only tasks with these tags")
    lo.add_argument(
        "-E", "--exclude-tags", nargs="*", default=None, help="leave out tasks with these tags"
    )
    lo.add_argument(
        "-i",
        "--iterations",
        type=_iterations,
        default=None,
        help="run at most this many task iterations in all (every user's), then end",
    )
    lo.add_argument(
        "--stop-timeout",
        type=_locust_time,
        default=None,
        help="how long tasks still going at the end may finish (LoadPilot's drain, 10s)",
    )
    lo.add_argument("--html", type=Path, default=None, help="write LoadPilot's HTML report")
    lo.add_argument(
        "--csv",
        default=None,
        metavar="PREFIX",
        help="write Locust's CSV files (PREFIX_stats.csv, _stats_history.csv, _failures.csv, "
        "_exceptions.csv)",
    )
    lo.add_argument("--loglevel", "-L", default="INFO", help="accepted for Locust's command lines")
    lo.add_argument(
        "--exit-code-on-error",
        type=int,
        default=1,
        help="exit code when requests failed (1)",
    )
    lo.add_argument("--out", type=Path, default=None, help="run directory")
    lo.add_argument(
        "--allow-invalid",
        action="store_true",
        help="judge an invalid run by its thresholds instead of exiting 4",
    )
    lo.add_argument("--threshold", action="append", help="e.g. 'p99<25ms' (repeatable)")
    lo.add_argument("--report", type=Path, default=None, help="same as --html")
    lo.add_argument(
        "--rps",
        type=float,
        default=None,
        help="run the tasks as an open model at this rate (coordinated-omission correct)",
    )
    lo.add_argument(
        "--prometheus",
        default=None,
        metavar="HOST:PORT",
        help="export the run's metrics for Prometheus at http://HOST:PORT/metrics",
    )
    lo.add_argument(
        "--processes",
        "--agents",
        dest="agents",
        metavar="N",
        type=_count,
        default=None,
        help="spread the users over N local agents (processes) started here",
    )
    lo.add_argument(
        "--nats", default=None, help="NATS URL of the agents (default: a server started here)"
    )
    lo.add_argument(
        "--external-agents",
        type=_count,
        default=None,
        help="spread the run over N agents already running (`loadpilot agent --allow-code`)",
    )
    _add_nats_secure(lo)
    lo.set_defaults(fn=_cmd_locust)


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of one verb."""
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[command]
            return found
    raise KeyError(command)


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return v


def _add_serve(sub: Any) -> None:
    sv = sub.add_parser(
        "serve", help="drive runs over HTTP (an API for pipelines), safe by default"
    )
    sv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (other than loopback: a token is required)",
    )
    sv.add_argument(
        "--port", type=int, default=8000, help="port to listen on (8000; the target's is 8080)"
    )
    sv.add_argument("--token", default=None, help="bearer token (else $LOADPILOT_TOKEN)")
    sv.add_argument("--runs", type=Path, default=Path("runs"), help="where run directories go")
    sv.add_argument(
        "--max-rate", type=float, default=10_000.0, help="requests/s a plan may ask (10000)"
    )
    sv.add_argument(
        "--max-duration", type=_duration, default=3600.0, help="how long a plan may run (1h)"
    )
    sv.add_argument("--max-users", type=int, default=10_000, help="users a plan may ask (10000)")
    sv.add_argument(
        "--keep-runs",
        type=_count,
        default=20,
        help="finished runs kept in memory and in /metrics (20); older ones stay on disk and "
        "are read back by id",
    )
    sv.add_argument(
        "--max-body", type=int, default=1 << 20, help="largest request body, bytes (1 MiB)"
    )
    sv.add_argument(
        "--allow-target", action="append", default=[], metavar="PATTERN",
        help="host or host:port glob plans may target (repeatable; default: loopback only)",
    )  # fmt: skip
    sv.add_argument(
        "--allow-code", action="store_true",
        help="accept scenario source (Python: arbitrary code) at POST /scenarios",
    )  # fmt: skip
    sv.add_argument("--agents", type=_count, default=None, help="spread runs over N local agents")
    sv.add_argument(
        "--nats", default=None, help="NATS URL of the agents (token: $LOADPILOT_NATS_TOKEN)"
    )
    sv.add_argument("--external-agents", type=_count, default=None, help="N agents found on --nats")
    _add_nats_secure(sv)
    sv.set_defaults(fn=_cmd_serve)


def _add_agent(sub: Any) -> None:
    a = sub.add_parser(
        "agent", help="run as an agent of distributed runs: wait for work on NATS, run it"
    )
    a.add_argument("--nats", required=True, help="NATS URL (nats://host:4222)")
    a.add_argument("--name", default=None, help="agent name (default: host-pid)")
    a.add_argument(
        "--token",
        dest="token_nats",
        metavar="TOKEN",
        default=None,
        help="NATS token (else $LOADPILOT_NATS_TOKEN)",
    )
    _add_nats_secure(a)
    a.add_argument(
        "--allow-target",
        action="append",
        default=[],
        metavar="PATTERN",
        help="host or host:port glob this agent may send load to (repeatable; default: "
        "loopback only)",
    )
    a.add_argument(
        "--allow-code",
        action="store_true",
        help="run Python scenario code sent by coordinators (it is arbitrary code)",
    )
    a.add_argument("--health-port", type=int, default=None, help="serve GET /healthz on this port")
    a.set_defaults(fn=_cmd_agent)


def _add_compare(sub: Any) -> None:
    c = sub.add_parser(
        "compare",
        help="compare a candidate run with a baseline; exit 1 if a metric regressed",
    )
    c.add_argument("baseline", type=Path, help="baseline run directory")
    c.add_argument("candidate", type=Path, help="candidate run directory")
    c.add_argument("--noise", type=_share, default=0.02, help="latency noise threshold (2%%)")
    c.add_argument(
        "--error-noise", type=_share, default=0.001, help="error-rate noise threshold (0.1%%)"
    )
    c.add_argument("--confidence", type=float, default=0.95, help="confidence level (0.95)")
    c.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (1000)")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    c.add_argument("--from", dest="start", type=_duration, default=None, help="window start")
    c.add_argument("--to", dest="end", type=_duration, default=None, help="window end")
    c.add_argument("--service", action="store_true", help="compare service time")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.add_argument(
        "--junit", type=Path, default=None, help="write JUnit XML (FILE.xml): a case per metric"
    )
    c.set_defaults(fn=_cmd_compare)


def _add_capacity(sub: Any) -> None:
    c = sub.add_parser(
        "capacity",
        help="find the highest rate at which the system meets an SLO",
        description="Runs levels of an open model the tool chooses (growing until one fails, "
        "then bisecting; each judged on its SLO with a confidence interval, the answer confirmed "
        "by a longer run) and prints the highest rate that met the SLO. Each level is a run "
        "directory under --out. Exit codes: 0 an answer (capacity X; at least the max rate; "
        "below the first level); 2 bad input; 4 the load generator, not the system, was the "
        "limit (an invalid level: add agents); 130 stopped with Ctrl-C (the best bound so far "
        "is printed).",
    )
    c.add_argument("file", help="a scenario file (.py) or a plan (.json)")
    c.add_argument("--target", default=None, help="target URL (else $LOADPILOT_TARGET)")
    c.add_argument("--scenario", default=None, help="which scenario of the file")
    c.add_argument(
        "--slo",
        default="p99 < 50ms and errors < 0.1%",
        help="what each level must meet: clauses on p50, p90, p99, p999, mean and errors joined "
        "by 'and' (default: 'p99 < 50ms and errors < 0.1%%')",
    )
    c.add_argument(
        "--max-rate", type=_positive, default=100_000.0, help="the highest level (100000)"
    )
    c.add_argument("--start-rate", type=_positive, default=10.0, help="the first level (10)")
    c.add_argument(
        "--tolerance",
        type=_share,
        default=0.05,
        help="how close the answer is to the lowest rate that failed: 5%% or 0.05 (5%%)",
    )
    c.add_argument("--level-duration", type=_duration, default=10.0, help="each level's run (10s)")
    c.add_argument("--out", type=Path, default=None, help="the search's directory")
    c.add_argument("--report", type=Path, default=None, help="write an HTML report (FILE.html)")
    c.add_argument(
        "--agents", type=_count, default=None, help="spread each level over N agents started here"
    )
    c.set_defaults(fn=_cmd_capacity)


def _cmd_capacity(args: argparse.Namespace) -> int:
    from loadpilot.search import find_capacity

    path = Path(args.file)
    what: Plan | Scenario
    if path.suffix == ".py":
        what = load_scenario(path, args.scenario)
        target = _target(args, None)
    else:
        try:
            what = Plan.from_json(path.read_bytes())
        except OSError as e:
            raise LoadPilotError(f"{path}: {e.strerror}") from e
        except ValueError as e:
            raise LoadPilotError(f"{path}: {e}") from e
        target = _target(args, what.target)
    if args.report is not None:
        _check_output_file(args.report, "--report")

    def said(lv: Any) -> None:
        print(
            f"  level {lv.index:>2}  {lv.rate:>10,.1f}/s  {lv.phase:<8} {lv.state:<9} "
            f"({lv.seconds:g} s) {lv.why}",
            flush=True,
        )

    print(f"capacity search: {args.slo} against {target}", flush=True)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        found = find_capacity(
            what, target=target, slo=args.slo, tolerance=args.tolerance,
            start_rate=args.start_rate, max_rate=args.max_rate, level_s=args.level_duration,
            out=args.out, agents=args.agents, on_level=said,
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(found.message)
    print(f"levels: {found.path}/ (capacity.json)")
    if args.report is not None:
        print(f"report: {found.report(args.report)}")
    if found.limit == "generator":
        return EXIT_INVALID
    if found.limit == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK


def _add_report(sub: Any) -> None:
    rp = sub.add_parser("report", help="write one HTML report of one or several run directories")
    rp.add_argument("runs", type=Path, nargs="+", help="run directories (the first: baseline)")
    rp.add_argument("-o", "--output", type=Path, required=True, help="FILE.html")
    rp.add_argument("--threshold", action="append", help="e.g. 'p99<25ms' (repeatable)")
    rp.set_defaults(fn=_cmd_report)


def _add_slowest(sub: Any) -> None:
    sl = sub.add_parser(
        "slowest", help="list a run's slowest requests with their context and trace ids"
    )
    sl.add_argument("run", type=Path, help="run directory")
    sl.add_argument("--task", help="only this task's")
    sl.add_argument("--request", help="only this request name's")
    sl.add_argument(
        "--above",
        help="p99.9 (default: at or above each task's p99.9), milliseconds (250), or all",
    )
    sl.add_argument("--sample", action="store_true", help="the uniform sample kept instead")
    sl.add_argument("--limit", type=_count, default=20, help="at most this many (default 20)")
    sl.add_argument("--json", action="store_true", help="one JSON object per line")
    sl.set_defaults(fn=_cmd_slowest)


def _add_export(sub: Any) -> None:
    e = sub.add_parser("export", help="write CSV/Parquet rows and .hgrm distributions of a run")
    e.add_argument("run", type=Path, help="run directory")
    e.add_argument("--to", type=Path, required=True, help="output directory")
    e.add_argument(
        "--format", action="append", choices=["csv", "parquet", "hgrm"], help="(default: all)"
    )
    e.set_defaults(fn=_cmd_export)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "locust":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    # A locustfile may add options of its own (its init_command_line_parser listeners).
    args.extra, args.argv = extra, sys.argv[1:] if argv is None else argv
    main_thread = threading.current_thread() is threading.main_thread()
    # Installed whatever this process inherited: a command started in the background by a
    # script (`loadpilot run ... &`) starts with SIGINT ignored, and must still stop on it.
    if args.command in ("run", "demo", "locust", "capacity") and main_thread:
        global _STOP
        _STOP = _StopOnce()
        signal.signal(signal.SIGTERM, _STOP)
        signal.signal(signal.SIGINT, _STOP)
    try:
        code: int = args.fn(args)
        return code
    except SystemExit as e:  # the command line read again (a locustfile's own options)
        return EXIT_USAGE if e.code else EXIT_OK
    except ValidationError as e:
        if args.debug:
            raise
        print(f"error: {describe(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (LoadPilotError, ValueError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a file that cannot be read or written (a full disk, say)
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
