"""The ``loadpilot`` command: ``demo``, ``target`` and ``run PLAN.json``.

Exit codes: 0 the run completed, 1 the run had errors or was stopped, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from loadpilot import runs as _run
from loadpilot.errors import LoadPilotError
from loadpilot.plan import Constant, Expect, OpenLoad, Plan, Ramp, Request, Task
from loadpilot.target import start_target

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2


def _progress(r: _run.Run, total_s: float) -> None:
    """One line a second while the run goes: elapsed, rate vs target, p50/p99, errors."""
    shown = 0
    while not r.wait(0.25):
        m = r.metrics
        if len(m) == shown or len(m) == 0:
            continue
        shown = len(m)
        last = m.filter(m["elapsed_s"] == m["elapsed_s"].max())
        second = float(last["elapsed_s"].max()) + 1  # type: ignore[arg-type]
        target = float(last["target_rps"].sum())
        achieved = float(last["achieved_rps"].sum())
        p50 = float(last["p50_ms"].max() or 0)  # type: ignore[arg-type]
        p99 = float(last["p99_ms"].max() or 0)  # type: ignore[arg-type]
        print(
            f"  {second:5.0f}/{total_s:.0f} s  {achieved:8.0f} rps (target {target:.0f})  "
            f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {int(last['errors'].sum())}",
            flush=True,
        )


def _execute(plan: Plan, out: Path | None) -> int:
    r = _run.start(plan, out)
    print(f"run directory: {r.path}", flush=True)
    try:
        _progress(r, plan.duration_s)
    except KeyboardInterrupt:
        print("\nstopping: keeping everything measured so far", flush=True)
        r.stop()
    s = r.summary()
    print()
    print(s.table())
    print(f"\nended: {s.ended}; everything is in {r.path}/")
    if s.ended != "completed" or s.overall.errors:
        return EXIT_RUN_FAILED
    return EXIT_OK


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
        return _execute(demo_plan(target.url), args.out)


def _cmd_target(args: argparse.Namespace) -> int:
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
    server.stop()
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    path = Path(args.plan)
    try:
        text = path.read_text()
    except OSError as e:
        raise LoadPilotError(f"{path}: {e.strerror}") from e
    try:
        plan = Plan.from_json(text)
    except ValueError as e:
        raise LoadPilotError(f"{path}: {e}") from e
    if args.target:
        plan = plan.model_copy(update={"target": args.target})
    return _execute(plan, args.out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loadpilot", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run a demo load test against the built-in target")
    d.add_argument("--out", type=Path, default=None, help="run directory")
    d.set_defaults(fn=_cmd_demo)

    t = sub.add_parser("target", help="serve the built-in target")
    t.add_argument("--host", default="127.0.0.1")
    t.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    t.add_argument("--delay-ms", type=float, default=0.0)
    t.add_argument("--delay-max-ms", type=float, default=None)
    t.add_argument("--error-rate", type=float, default=0.0)
    t.add_argument("--stall-ms", type=float, default=0.0)
    t.add_argument("--stall-every-s", type=float, default=0.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--tls", action="store_true", help="serve https (self-signed certificate)")
    t.add_argument("--for-s", type=float, default=None, help="stop after this many seconds")
    t.set_defaults(fn=_cmd_target)

    r = sub.add_parser("run", help="run a plan (JSON)")
    r.add_argument("plan", help="PLAN.json")
    r.add_argument("--target", default=None, help="override the plan's target URL")
    r.add_argument("--out", type=Path, default=None, help="run directory")
    r.set_defaults(fn=_cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except LoadPilotError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
