"""What the distributed path costs.

1. ``overhead``: the same open-model plan (``--rate`` rps for ``--seconds``, two tasks 5:1)
   against the built-in target (its own process, one thread), run in one process and spread
   over 2 local agents (with their NATS server), rounds alternated. Reported: CPU seconds per
   10,000 requests of everything the run needed (for the distributed run: the coordinator, both
   agents and nats-server, all waited for by the measured process) at the margin (the fixed cost
   of starting and stopping, measured by a 1 s run at 1 rps in the same round, taken off), the
   fixed cost itself, and the achieved rate.
2. ``coordinator``: the coordinator merging ``--agents`` simulated agents × ``--tasks`` tasks at
   1 Hz for ``--seconds``: a fleet process answers as that many agents and publishes, every second,
   one recorded interval per agent (real histograms of a real run of that many tasks) on
   JetStream, with heartbeats. Reported: the coordinator process's CPU over the run as a share of
   one core (goal: under 5%).

Results go to ``bench/results/distributed-<date>.json``.

    python bench/distributed.py [--rate 4000] [--seconds 10] [--rounds 3]
                                [--agents 100] [--tasks 10] [--fleet-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine import Target, measured, spread, write_results

_RUN = """
import json, sys, loadpilot as lp
url, out = sys.argv[1], sys.argv[4]
rate, seconds, agents = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[5])
plan = lp.Plan(name="bench", target=url,
               load=lp.OpenLoad(stages=[lp.Constant(rate=rate, duration_s=seconds)],
                                connections=64),
               tasks=[lp.Task(name="a", weight=5, requests=[lp.Request(path="/")]),
                      lp.Task(name="b", requests=[lp.Request(path="/json")])])
r = lp.run(plan, out, agents=agents or None)
s = r.summary()
print(json.dumps({"requests": s.overall.requests, "errors": s.overall.errors,
                  "due": s.target_requests, "rps": s.overall.achieved_rps}))
"""


def _one(url: str, rate: float, seconds: float, agents: int) -> tuple[dict[str, float], float]:
    out = tempfile.mkdtemp(prefix="lp-dist-bench-")
    program = Path(out) / "run.py"
    program.write_text(_RUN)
    cmd = [sys.executable, str(program), url, str(rate), str(seconds), out + "/run", str(agents)]
    stdout, cpu = measured(cmd, dict(os.environ))
    shutil.rmtree(out, ignore_errors=True)
    r = json.loads(stdout.strip().splitlines()[-1])
    assert r["errors"] == 0 and r["requests"] == r["due"], r
    return r, cpu


def overhead(args: argparse.Namespace) -> dict[str, object]:
    """CPU per request at the margin: a run's CPU minus the same variant's fixed cost (Python
    and its imports, agents and nats-server starting and stopping: a 1 s run at 1 rps measured
    in the same round), over its requests."""
    target = Target(threads=1)
    runs: dict[str, list[dict[str, float]]] = {"local": [], "agents_2": []}
    try:
        for _ in range(args.rounds):
            for name, agents in (("local", 0), ("agents_2", 2)):
                _, fixed = _one(target.url, 1, 1, agents)
                r, cpu = _one(target.url, args.rate, args.seconds, agents)
                r["cpu_s_total"] = cpu
                r["cpu_s_fixed"] = fixed
                r["cpu_s_per_10k"] = (cpu - fixed) / max(1, r["requests"]) * 10_000
                runs[name].append(r)
                print(name, r, flush=True)
    finally:
        target.close()
    summary = {
        name: {k: spread([r[k] for r in rs]) for k in ("rps", "cpu_s_per_10k", "cpu_s_fixed")}
        for name, rs in runs.items()
    }
    ratio = (
        summary["agents_2"]["cpu_s_per_10k"]["median"] / summary["local"]["cpu_s_per_10k"]["median"]
    )
    return {"rate": args.rate, "seconds": args.seconds, "runs": runs, "summary": summary,
            "cpu_per_request_agents_over_local": ratio}  # fmt: skip


# -- the coordinator under a simulated fleet --------------------------------------------------

_COORDINATOR = """
import json, resource, sys, time, loadpilot as lp
url, out = sys.argv[1], sys.argv[5]
agents, tasks, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
plan = lp.Plan(name="fleet", target="http://127.0.0.1:9",
               load=lp.OpenLoad(stages=[lp.Constant(rate=1000, duration_s=seconds)]),
               tasks=[lp.Task(name=f"t{i}", requests=[lp.Request(path="/")]) for i in range(tasks)])
r = lp.start(plan, out, agents=lp.Agents(count=agents, nats=url, spawn=False, timeout_s=30))
u0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.monotonic()
r.wait()
u1 = resource.getrusage(resource.RUSAGE_SELF)
wall = time.monotonic() - t0
cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
s = r.summary()
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "core_share": cpu / wall,
                  "requests": s.overall.requests, "rows": r.metrics.height}))
"""


def recorded_interval(tasks: int) -> tuple[dict[str, object], str]:
    """One closed interval of a real run of ``tasks`` tasks (1,000 rps against the built-in
    target in this process), and that run's summary: what each simulated agent reports."""
    import loadpilot as lp
    from loadpilot import _engine

    with lp.start_target(delay_ms=1, delay_max_ms=5) as target:
        plan = lp.Plan(
            name="fleet",
            target=target.url,
            load=lp.OpenLoad(stages=[lp.Constant(rate=1000, duration_s=2)]),
            tasks=[lp.Task(name=f"t{i}", requests=[lp.Request(path="/")]) for i in range(tasks)],
        )
        out = tempfile.mkdtemp(prefix="lp-fleet-")
        h = _engine.start_run(plan.to_json(), Path(out) / "run", report=True)
        h.wait(None)
        intervals = [json.loads(b) for b in h.take_intervals()]
        summary = h.summary_json() or "{}"
        shutil.rmtree(out, ignore_errors=True)
    return intervals[1], summary


async def fleet(url: str, agents: int, tasks: int, seconds: float) -> None:
    """Answers as ``agents`` agents and reports a recorded interval per agent per second."""
    from loadpilot.cluster import protocol as P

    interval, summary = recorded_interval(tasks)
    nc = await P.connect(url, name="fleet")
    js = nc.jetstream()
    names = [f"sim{i:03d}" for i in range(agents)]
    work: dict[str, dict[str, object]] = {}

    async def discover(msg: object) -> None:
        for n in names:
            info = {"name": n, "state": "idle", "allow_targets": ["loopback"], "allow_code": False}
            await nc.publish(msg.reply, json.dumps(info).encode())  # type: ignore[attr-defined]

    async def clock(msg: object) -> None:
        await msg.respond(json.dumps({"time": time.time()}).encode())  # type: ignore[attr-defined]

    def on_work(name: str):  # type: ignore[no-untyped-def]
        async def cb(msg: object) -> None:
            work[name] = json.loads(msg.data)  # type: ignore[attr-defined]
            await msg.respond(b'{"ok": true}')  # type: ignore[attr-defined]

        return cb

    await nc.subscribe(P.DISCOVER, cb=discover)
    for n in names:
        await nc.subscribe(P.agent_subject(n, "clock"), cb=clock)
        await nc.subscribe(P.agent_subject(n, "work"), cb=on_work(n))
    while len(work) < agents:
        await asyncio.sleep(0.05)
    first = next(iter(work.values()))
    run = str(first["run"])
    start_at = float(first["shard"]["start_at"])  # type: ignore[index]
    n_intervals = int(seconds)

    async def beats() -> None:
        while True:
            for n in names:
                beat = {"kind": "beat", "agent": n, "state": "running", "time": time.time()}
                await nc.publish(P.run_subject(run, "agents"), json.dumps(beat).encode())
            await asyncio.sleep(P.BEAT_S)

    beating = asyncio.create_task(beats())
    for i in range(n_intervals):
        await asyncio.sleep(max(0.0, start_at + i + 1.05 - time.time()))
        body = dict(interval, index=i, start_s=float(i), length_s=1.0)
        payload = json.dumps(body).encode()
        for n in names:
            head = json.dumps({"kind": "interval", "reporter": n}).encode()
            await js.publish(
                P.data_subject(run, n),
                head + b"\n" + payload,
                headers={"Nats-Msg-Id": f"{run}.{n}.{i}"},
            )
    for n in names:
        head = json.dumps({"kind": "end", "reporter": n}).encode()
        await js.publish(
            P.data_subject(run, n),
            head + b"\n" + summary.encode(),
            headers={"Nats-Msg-Id": f"{run}.{n}.end"},
        )
    beating.cancel()
    await nc.drain()


def coordinator(args: argparse.Namespace) -> dict[str, object]:
    from loadpilot.cluster.server import NatsServer

    results = []
    with NatsServer() as server:
        for _ in range(args.rounds):
            out = tempfile.mkdtemp(prefix="lp-coord-bench-")
            program = Path(out) / "coordinator.py"
            program.write_text(_COORDINATOR)
            proc = subprocess.Popen(
                [sys.executable, str(program), server.url, str(args.agents), str(args.tasks),
                 str(args.fleet_seconds), out + "/run"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            asyncio.run(fleet(server.url, args.agents, args.tasks, args.fleet_seconds))
            stdout, _ = proc.communicate(timeout=120)
            shutil.rmtree(out, ignore_errors=True)
            r = json.loads(stdout.strip().splitlines()[-1])
            print("coordinator", r, flush=True)
            results.append(r)
    return {
        "agents": args.agents,
        "tasks": args.tasks,
        "seconds": args.fleet_seconds,
        "runs": results,
        "core_share": spread([r["core_share"] for r in results]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=float, default=4000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--fleet-seconds", type=float, default=20)
    args = p.parse_args()
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "overhead": overhead(args),
        "coordinator": coordinator(args),
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    o, c = report["overhead"], report["coordinator"]
    print(
        f"CPU per request, 2 agents over one process: {o['cpu_per_request_agents_over_local']:.2f}"
    )  # type: ignore[index]
    print(
        f"coordinator, {args.agents} agents x {args.tasks} tasks at 1 Hz: "
        f"{c['core_share']['median'] * 100:.1f}% of a core"
    )  # type: ignore[index]
    write_results("distributed", report)


if __name__ == "__main__":
    main()
