"""Engine benchmark: max throughput against wrk, and resident memory over a long run.

Both tools load the built-in target (release build, its own process) on loopback with the same
connection count, alternating A B A B; medians and spreads are reported. Results go to
``bench/results/engine-<date>.json`` and are summarised in docs/benchmarks.md by hand.

    python bench/engine.py [--connections 32] [--seconds 5] [--rounds 3] [--soak-s 600]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_apt(exe: str, package: str) -> str:
    """The path of ``exe``, installing the Debian ``package`` that ships it if it is missing."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(exe, path=path)
    if found:
        return found
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)
    found = shutil.which(exe, path=path)
    assert found, f"{exe} did not install ({package})"
    return found


def ensure_wrk() -> str:
    return ensure_apt("wrk", "wrk")


class Target:
    """The built-in target in a process of its own."""

    def __init__(self, threads: int, **opts: float) -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "loadpilot.cli", "target", "--port", str(self.port)]
        for k, v in opts.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        env = dict(os.environ, LOADPILOT_THREADS=str(threads))
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float]:
    """Runs ``cmd``; returns its stdout and its CPU seconds. (Peak RSS is reported by each
    measured process itself: RUSAGE_CHILDREN's maxrss is a high-water mark over all children.)"""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.stdout, cpu


def run_scenario_program(
    program_text: str, url: str, users: int, seconds: float, prefix: list[str] | None = None
) -> dict[str, float]:
    """Runs a scenario program (argv: url, users, seconds, out; it prints one JSON line last)
    on one engine thread, behind ``prefix`` (e.g. ``taskset``); returns that line's figures
    with ``cpu_s_per_10k``, the program's CPU seconds per 10,000 requests."""
    out = tempfile.mkdtemp(prefix="lp-bench-")
    # A file, not `-c`: the scenario reader reads each task's source to choose its path.
    program = Path(out) / "scenario.py"
    program.write_text(program_text)
    cmd = [*(prefix or []), sys.executable, str(program), url, str(users), str(seconds)]
    env = dict(os.environ, LOADPILOT_THREADS="1")
    try:
        stdout, cpu = measured([*cmd, out + "/run"], env)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    r: dict[str, float] = json.loads(stdout.strip().splitlines()[-1])
    r["cpu_s_per_10k"] = cpu / max(1, r["requests"]) * 10_000
    return r


_LOADPILOT_MAX = """
import json, resource, sys, loadpilot as lp
url, users, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
plan = lp.Plan(target=url, load=lp.ClosedLoad(stages=[lp.Constant(rate=users, duration_s=seconds)]),
               tasks=[lp.Task(name="get", requests=[lp.Request(path="/")])])
s = lp.run(plan, out).summary()
print(json.dumps({"requests": s.overall.requests, "errors": s.overall.errors,
                  "rps": s.overall.achieved_rps,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_loadpilot(url: str, users: int, seconds: float, threads: int) -> dict[str, float]:
    out = tempfile.mkdtemp(prefix="lp-bench-")
    env = dict(os.environ, LOADPILOT_THREADS=str(threads))
    cmd = [sys.executable, "-c", _LOADPILOT_MAX, url, str(users), str(seconds), out + "/run"]
    stdout, cpu = measured(cmd, env)
    shutil.rmtree(out, ignore_errors=True)
    r = json.loads(stdout.strip().splitlines()[-1])
    r["cpu_s_per_10k"] = cpu / r["requests"] * 10_000
    return r


def run_wrk(wrk: str, url: str, conns: int, seconds: float, threads: int) -> dict[str, float]:
    cmd = [wrk, f"-t{threads}", f"-c{conns}", f"-d{seconds:.0f}s", url + "/"]
    # wrk reports no memory of its own: a fresh wrapper process runs it and prints the peak
    # RSS of its only child.
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print('RSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    stdout, cpu = measured([sys.executable, "-c", wrapper, *cmd])
    m = re.search(r"Requests/sec:\s+([\d.]+)", stdout)
    n = re.search(r"(\d+) requests in", stdout)
    rss = re.search(r"^RSS ([\d.]+)", stdout, re.M)
    assert m and n and rss, stdout
    requests = int(n.group(1))
    return {
        "requests": requests,
        "rps": float(m.group(1)),
        "cpu_s_per_10k": cpu / requests * 10_000,
        "rss_mib": float(rss.group(1)),
        "errors": 1 if "Non-2xx" in stdout or "Socket errors" in stdout else 0,
    }


def write_results(prefix: str, report: dict[str, object]) -> Path:
    """Writes ``report`` to ``bench/results/<prefix>-<date>.json`` (what docs/benchmarks.md
    quotes) and says where."""
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    name = results / f"{prefix}-{dt.date.today().isoformat()}.json"
    name.write_text(json.dumps(report, indent=2))
    print(f"written {name}")
    return name


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def throughput(args: argparse.Namespace) -> dict[str, object]:
    wrk = ensure_wrk()
    target = Target(threads=1)
    results: dict[str, list[dict[str, float]]] = {"wrk": [], "loadpilot": []}
    try:
        for _ in range(args.rounds):
            results["wrk"].append(run_wrk(wrk, target.url, args.connections, args.seconds, 1))
            results["loadpilot"].append(
                run_loadpilot(target.url, args.connections, args.seconds, threads=1)
            )
    finally:
        target.close()
    summary = {
        tool: {key: spread([r[key] for r in runs]) for key in ("rps", "cpu_s_per_10k", "rss_mib")}
        for tool, runs in results.items()
    }
    ratio = summary["loadpilot"]["rps"]["median"] / summary["wrk"]["rps"]["median"]
    return {
        "connections": args.connections,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "generator_threads": 1,
        "target_threads": 1,
        "runs": results,
        "summary": summary,
        "loadpilot_over_wrk": ratio,
    }


_LOADPILOT_SOAK = """
import sys, loadpilot as lp
url, rate, seconds, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
plan = lp.Plan(target=url, load=lp.OpenLoad(stages=[lp.Constant(rate=rate, duration_s=seconds)],
               connections=64), tasks=[lp.Task(name="get", requests=[lp.Request(path="/")])])
run = lp.start(plan, out)
print("started", flush=True)
while not run.wait(1.0):
    run.metrics
s = run.summary()
print(s.overall.requests, s.overall.errors, s.overall.missed, flush=True)
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def soak(args: argparse.Namespace) -> dict[str, object]:
    target = Target(threads=1)
    out = tempfile.mkdtemp(prefix="lp-soak-")
    try:
        cmd = [sys.executable, "-c", _LOADPILOT_SOAK, target.url, str(args.soak_rate)]
        cmd += [str(args.soak_s), out + "/run"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        p.stdout.readline()
        start = time.monotonic()
        samples: list[tuple[float, float]] = []
        while p.poll() is None:
            samples.append((time.monotonic() - start, rss_mib(p.pid)))
            time.sleep(5)
        tail = p.stdout.read().split()
    finally:
        target.close()
        shutil.rmtree(out, ignore_errors=True)
    samples = [s for s in samples if s[1] > 0]
    first = [r for t, r in samples if 30 <= t <= 90] or [samples[0][1]]
    last = [r for t, r in samples if t >= args.soak_s - 60] or [samples[-1][1]]
    return {
        "rate": args.soak_rate,
        "seconds": args.soak_s,
        "requests": int(tail[0]),
        "errors": int(tail[1]),
        "missed": int(tail[2]),
        "rss_mib_samples": samples,
        "rss_mib_peak": max(r for _, r in samples),
        "rss_mib_minute_1": statistics.median(first),
        "rss_mib_last_minute": statistics.median(last),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--soak-s", type=float, default=600)
    p.add_argument("--soak-rate", type=float, default=5000)
    p.add_argument("--skip-soak", action="store_true")
    args = p.parse_args()

    report: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    report["throughput"] = t = throughput(args)
    print(json.dumps(t["summary"], indent=2))
    print(f"LoadPilot / wrk max throughput: {t['loadpilot_over_wrk']:.2f}")
    if not args.skip_soak:
        report["soak"] = s = soak(args)
        print(
            f"soak {s['rate']:.0f} rps for {s['seconds']:.0f} s: RSS minute 1 "
            f"{s['rss_mib_minute_1']:.1f} MiB, last minute {s['rss_mib_last_minute']:.1f} MiB, "
            f"peak {s['rss_mib_peak']:.1f} MiB"
        )
    write_results("engine", report)


if __name__ == "__main__":
    main()
