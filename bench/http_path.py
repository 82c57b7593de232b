"""The HTTP path at the machine's limit: LoadPilot's engine path against wrk, and memory per idle
user.

- ``h1``: max throughput at the same connection count (32), wrk (1 thread) and LoadPilot (closed
  model, no think time, 1 engine thread) alternating round by round, against the built-in target
  (one thread, its own process) and against nginx (Debian ``nginx-light``, one worker). CPU per
  request from getrusage: wrk's whole process; LoadPilot's run (``lp.run`` from start to the
  written run directory, every thread of the process) and its whole process (with Python's start).
- ``memory``: closed-model users thinking 10 s between requests for 30 s; per user = growth of
  peak RSS from 100 to 10,000 users (the fixed cost of the process is not charged to users).
- ``h2``: HTTP/2 (h2c, prior knowledge) max throughput against the built-in target at the same
  connections and streams: h2load (Debian ``nghttp2-client``), ``oha --http2`` and LoadPilot
  (closed model, ``http="2"``, users = connections × streams, ``max_streams`` = streams), as
  users run it (a ``traceparent`` on every request) and with ``trace=0`` (h2load's request).

Results go to ``bench/results/http-<date>.json``; docs/benchmarks.md quotes them.

    python bench/http_path.py [--rounds 5] [--scenarios h1,memory,h2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable

from peers import Raw, Tool, ensure_oha, rounds, run_oha, summarise

from engine import HERE, Target, ensure_apt, ensure_wrk, measured, run_wrk, spread

sys.path.insert(0, str(HERE.parent))  # the repository: the nginx the tests hold HTTP/2 to
from tests.peers import Nginx  # noqa: E402

_LOADPILOT = """
import json, resource, sys, loadpilot as lp
url, users, seconds, think, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \
    float(sys.argv[4]), sys.argv[5]
http, streams, trace = sys.argv[6], int(sys.argv[7]), float(sys.argv[8])
plan = lp.Plan(target=url, load=lp.ClosedLoad(stages=[lp.Constant(rate=users, duration_s=seconds)],
               think_s=think),
               tasks=[lp.Task(name="get", requests=[lp.Request(path="/")])],
               http=http, max_streams=streams, trace=trace)
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
before = cpu()
s = lp.run(plan, out).summary()
run_cpu = cpu() - before
kinds = {k: v for k, v in s.overall.errors_by_kind.items() if v}
print(json.dumps({"requests": s.overall.requests, "errors": s.overall.errors, "error_kinds": kinds,
                  "rps": s.overall.achieved_rps, "run_cpu_s": run_cpu,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_loadpilot(
    url: str,
    users: int,
    seconds: float,
    think: float = 0.0,
    http: str = "1.1",
    streams: int = 1,
    trace: float = 1.0,
) -> dict[str, float]:
    """One LoadPilot run in its own process on one engine thread (``trace``: the share of
    requests sent with a ``traceparent``, 1 by default)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", _LOADPILOT, url, str(users), str(seconds), str(think)]
        cmd += [tmp + "/run", http, str(streams), str(trace)]
        stdout, cpu = measured(cmd, dict(os.environ, LOADPILOT_THREADS="1"))
    r: dict[str, float] = json.loads(stdout.strip().splitlines()[-1])
    r["cpu_s_per_10k"] = r["run_cpu_s"] / max(1, r["requests"]) * 10_000
    r["process_cpu_s_per_10k"] = cpu / max(1, r["requests"]) * 10_000
    return r


def no_errors(raw: Raw) -> Raw:
    """``raw``, checked: a benchmark whose requests failed measured something else."""
    for runs in raw.values():
        for r in runs:
            assert r["errors"] == 0, r
    return raw


def h1(args: argparse.Namespace) -> dict[str, object]:
    wrk, conns, secs = ensure_wrk(), args.connections, args.seconds
    out: dict[str, object] = {"connections": conns, "seconds": secs, "rounds": args.rounds}
    servers: dict[str, Callable[[], Target | Nginx]] = {
        "built-in target": lambda: Target(threads=1),
        "nginx": lambda: Nginx(http2=False, log=False, exe=ensure_apt("nginx", "nginx-light")),
    }
    for name, start in servers.items():
        print(f"target: {name}", flush=True)
        server = start()
        try:
            raw = rounds(
                {
                    "wrk": lambda url=server.url: run_wrk(wrk, url, conns, secs, 1),
                    "loadpilot": lambda url=server.url: run_loadpilot(url, conns, secs),
                },
                args.rounds,
            )
        finally:
            server.close()
        no_errors(raw)
        summary = summarise(raw)
        rps = summary["loadpilot"]["rps"]["median"] / summary["wrk"]["rps"]["median"]
        cpu = (
            summary["loadpilot"]["cpu_s_per_10k"]["median"]
            / (summary["wrk"]["cpu_s_per_10k"]["median"])
        )
        per_round = [
            lp["rps"] / w["rps"] for lp, w in zip(raw["loadpilot"], raw["wrk"], strict=True)
        ]
        out[name] = {
            "raw": raw,
            "summary": summary,
            "throughput_over_wrk": rps,
            "throughput_over_wrk_by_round": per_round,
            "cpu_per_request_over_wrk": cpu,
        }
        print(f"  {name}: throughput / wrk {rps:.2f} (rounds {per_round}), CPU / wrk {cpu:.2f}")
    return out


def run_h2load(h2load: str, url: str, conns: int, streams: int, seconds: float) -> dict[str, float]:
    cmd = [h2load, "-t1", f"-c{conns}", f"-m{streams}", f"-D{seconds:.0f}", url + "/"]
    stdout, cpu = measured(cmd)
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", stdout)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", stdout)
    assert rps and done, stdout
    requests = int(done.group(1))
    return {
        "requests": requests,
        "errors": float(requests - int(done.group(2))),
        "rps": float(rps.group(1)),
        "cpu_s_per_10k": cpu / max(1, requests) * 10_000,
    }


def h2(args: argparse.Namespace) -> dict[str, object]:
    h2load = ensure_apt("h2load", "nghttp2-client")
    oha = ensure_oha() if not args.skip_oha else None
    conns, streams, secs = args.h2_connections, args.h2_streams, args.seconds
    server = Target(threads=1)
    try:
        url = server.url
        tools: dict[str, Tool] = {
            "h2load": lambda: run_h2load(h2load, url, conns, streams, secs),
            "loadpilot": lambda: run_loadpilot(
                url, conns * streams, secs, http="2", streams=streams
            ),
            # The same request h2load sends: no trace context, whose fresh value per request
            # the one-thread target has to decode.
            "loadpilot trace=0": lambda: run_loadpilot(
                url, conns * streams, secs, http="2", streams=streams, trace=0
            ),
        }
        if oha is not None:
            extra = ("--http2", "-p", str(streams))
            tools["oha --http2"] = lambda: run_oha(oha, url, conns, secs, extra=extra)
        raw = rounds(tools, args.rounds)
    finally:
        server.close()
    no_errors(raw)
    summary = summarise(raw)
    ratio = summary["loadpilot"]["rps"]["median"] / summary["h2load"]["rps"]["median"]
    bare = summary["loadpilot trace=0"]["rps"]["median"] / summary["h2load"]["rps"]["median"]
    print(f"  HTTP/2: LoadPilot / h2load {ratio:.2f} (trace=0: {bare:.2f})")
    return {
        "connections": conns,
        "streams": streams,
        "seconds": secs,
        "rounds": args.rounds,
        "raw": raw,
        "summary": summary,
        "throughput_over_h2load": ratio,
        "throughput_over_h2load_trace_0": bare,
    }


def memory(args: argparse.Namespace) -> dict[str, object]:
    secs, think, few, many = 30.0, 10.0, 100, 10_000
    server = Target(threads=1)
    runs: list[dict[str, float]] = []
    try:
        for i in range(args.memory_rounds):
            print(f"  round {i + 1}: 100 and 10,000 users", flush=True)
            small = run_loadpilot(server.url, few, secs, think)
            large = run_loadpilot(server.url, many, secs, think)
            runs.append(
                {
                    "rss_mib_100_users": small["rss_mib"],
                    "rss_mib_10k_users": large["rss_mib"],
                    "rps_10k_users": large["rps"],
                    "kib_per_user": (large["rss_mib"] - small["rss_mib"]) * 1024 / (many - few),
                }
            )
    finally:
        server.close()
    summary = {k: spread([r[k] for r in runs]) for k in runs[0]}
    print(f"  KiB per idle user: {summary['kib_per_user']}")
    return {"users": many, "seconds": secs, "think_s": think, "raw": runs, "summary": summary}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--memory-rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--h2-connections", type=int, default=2)
    p.add_argument("--h2-streams", type=int, default=16)
    p.add_argument("--skip-oha", action="store_true", help="HTTP/2 without oha (cargo install)")
    p.add_argument("--scenarios", default="h1,memory,h2")
    args = p.parse_args()
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / f"http-{dt.date.today().isoformat()}.json"
    # A scenario run today replaces its own entry in today's file and keeps the others.
    report: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}
    report["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report["machine"] = {"cpus": os.cpu_count()}
    scenarios: dict[str, Callable[[argparse.Namespace], dict[str, object]]] = {
        "h1": h1,
        "memory": memory,
        "h2": h2,
    }
    for name in args.scenarios.split(","):
        print(f"scenario {name}", flush=True)
        report[name] = scenarios[name](args)
        # Written after each scenario: what was measured stays if a later one fails.
        path.write_text(json.dumps(report, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
