"""Python-logic tasks against Locust's FastHttpUser: requests per second in one process.

Both run the same workload against the built-in target (its own process, one engine thread):
N users looping with no wait on a task that GETs ``/`` from Python code, alternating A B A B.
Locust is installed from PyPI by this script when missing. Results go to
``bench/results/python-path-<date>.json``.

    python bench/python_path.py [--users 32] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from engine import Target, measured, spread, write_results

_LOCUSTFILE = """
from locust import FastHttpUser, constant, task

class User(FastHttpUser):
    wait_time = constant(0)

    @task
    def get(self):
        self.client.get("/")
"""

_LOADPILOT = """
import json, sys, loadpilot as lp
url, users, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

@lp.scenario(profile=lp.users(users, seconds))
class User(lp.VUser):
    @lp.task
    async def get(self):
        await self.client.get("/")

s = lp.run(User, out, target=url).summary()
print(json.dumps({"requests": s.overall.requests, "errors": s.overall.errors,
                  "rps": s.overall.achieved_rps, "path": s.tasks[0].path}))
"""


def ensure_locust() -> str:
    exe = Path(sys.executable).with_name("locust")
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "locust"], check=True)
    return str(exe)


def run_locust(locust: str, url: str, users: int, seconds: float) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="locust-bench-"))
    (work / "locustfile.py").write_text(_LOCUSTFILE)
    cmd = [
        locust,
        "-f",
        str(work / "locustfile.py"),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users * 100),
        "-t",
        f"{seconds:.0f}s",
        "--host",
        url,
        "--only-summary",
        "--csv",
        str(work / "stats"),
        "--loglevel",
        "ERROR",
    ]
    _, cpu = measured(cmd)
    with open(work / "stats_stats.csv") as f:
        agg = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    shutil.rmtree(work, ignore_errors=True)
    requests = int(agg["Request Count"])
    return {
        "requests": requests,
        "errors": int(agg["Failure Count"]),
        "rps": float(agg["Requests/s"]),
        "cpu_s_per_10k": cpu / max(1, requests) * 10_000,
    }


def run_loadpilot(url: str, users: int, seconds: float) -> dict[str, float]:
    out = tempfile.mkdtemp(prefix="lp-pybench-")
    cmd = [sys.executable, "-c", _LOADPILOT, url, str(users), str(seconds), out + "/run"]
    env = dict(os.environ, LOADPILOT_THREADS="1")
    stdout, cpu = measured(cmd, env)
    shutil.rmtree(out, ignore_errors=True)
    r = json.loads(stdout.strip().splitlines()[-1])
    assert r.pop("path") == "python"
    r["cpu_s_per_10k"] = cpu / max(1, r["requests"]) * 10_000
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    locust = ensure_locust()
    target = Target(threads=1)
    runs: dict[str, list[dict[str, float]]] = {"locust": [], "loadpilot": []}
    try:
        for _ in range(args.rounds):
            runs["locust"].append(run_locust(locust, target.url, args.users, args.seconds))
            runs["loadpilot"].append(run_loadpilot(target.url, args.users, args.seconds))
    finally:
        target.close()
    summary = {
        tool: {k: spread([r[k] for r in rs]) for k in ("rps", "cpu_s_per_10k")}
        for tool, rs in runs.items()
    }
    ratio = summary["loadpilot"]["rps"]["median"] / summary["locust"]["rps"]["median"]
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "users": args.users,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "runs": runs,
        "summary": summary,
        "loadpilot_over_locust": ratio,
    }
    print(json.dumps(summary, indent=2))
    print(f"LoadPilot Python-logic tasks / Locust FastHttpUser: {ratio:.2f}")
    write_results("python-path", report)


if __name__ == "__main__":
    main()
