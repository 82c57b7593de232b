"""Locustfiles under `loadpilot locust`: against the same scenario in LoadPilot's own DSL, and
against Locust itself running the same file.

Two workloads against the built-in target (its own process, one engine thread), N users looping
with no wait, alternating the tools round by round:

- straight-line: a task of one GET, which `loadpilot locust` runs in the engine; compared with
  the same task written with `@lp.scenario` (the figure: ≥ 0.9×);
- python-logic: a FastHttpUser task with Python between its requests (a JSON field read, a
  branch), run by `loadpilot locust` on its Python path and by Locust (the figure: ≥ 3×), and
  both again with `--processes 2` (the figure: ≥ 5×).

Every LoadPilot process runs with one engine thread (LOADPILOT_THREADS=1), as Locust runs in one
process. Locust is installed from PyPI when missing. Results go to
``bench/results/locustfiles-<date>.json``.

    python bench/locustfiles.py [--users 32] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

from python_path import ensure_locust

from engine import Target, measured, spread, write_results

STRAIGHT = """
from locust import HttpUser, constant, task

class User(HttpUser):
    wait_time = constant(0)

    @task
    def get(self):
        self.client.get("/")
"""

LOGIC = """
from locust import FastHttpUser, constant, task

class User(FastHttpUser):
    wait_time = constant(0)

    @task
    def browse(self):
        r = self.client.get("/json")
        if r.json()["ok"]:
            self.client.get("/", name="after")
"""

DSL = """
import json, sys, loadpilot as lp
url, users, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

@lp.scenario(profile=lp.users(users, seconds))
class User(lp.VUser):
    @lp.task
    def get(self):
        self.client.get("/")

s = lp.run(User, out, target=url).summary()
print(json.dumps({"requests": s.overall.requests, "errors": s.overall.errors,
                  "rps": s.overall.achieved_rps, "path": s.tasks[0].path}))
"""


def _env() -> dict[str, str]:
    return dict(os.environ, LOADPILOT_THREADS="1")


def run_locust(
    locust: str, file: Path, url: str, users: int, seconds: float, *extra: str
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [locust, "-f", str(file), "--headless", "-u", str(users), "-r", str(users * 100),
               "-t", f"{seconds:.0f}s", "--host", url, "--only-summary", "--csv",
               f"{tmp}/stats", "--loglevel", "ERROR", *extra]  # fmt: skip
        _, cpu = measured(cmd)
        with open(f"{tmp}/stats_stats.csv") as f:
            agg = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    requests = int(agg["Request Count"])
    return {
        "requests": requests,
        "errors": int(agg["Failure Count"]),
        "rps": float(agg["Requests/s"]),
        "cpu_s_per_10k": cpu / max(1, requests) * 10_000,
    }


def run_loadpilot_locust(
    file: Path, url: str, users: int, seconds: float, *extra: str
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "loadpilot.cli", "locust", "-f", str(file), "--headless",
               "-u", str(users), "-r", str(users * 100), "-t", f"{seconds:.0f}s", "-H", url,
               "--out", f"{tmp}/run", *extra]  # fmt: skip
        _, cpu = measured(cmd, _env())
        s = json.loads(Path(f"{tmp}/run/summary.json").read_text())
    o = s["overall"]
    return {
        "requests": o["requests"],
        "errors": o["errors"],
        "rps": o["achieved_rps"],
        "cpu_s_per_10k": cpu / max(1, o["requests"]) * 10_000,
        "paths": ",".join(t["path"] for t in s["tasks"] if t["name"] != "on_start"),
    }


def run_dsl(url: str, users: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        # From a file: the scenario reader reads a task's source to put it in the engine.
        Path(f"{tmp}/dsl.py").write_text(DSL)
        stdout, cpu = measured(
            [sys.executable, f"{tmp}/dsl.py", url, str(users), str(seconds), f"{tmp}/run"],
            _env(),
        )
    r = json.loads(stdout.strip().splitlines()[-1])
    assert r.pop("path") == "engine"
    r["cpu_s_per_10k"] = cpu / max(1, r["requests"]) * 10_000
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    locust = ensure_locust()
    work = Path(tempfile.mkdtemp(prefix="locustfiles-bench-"))
    straight, logic = work / "straight.py", work / "logic.py"
    straight.write_text(STRAIGHT)
    logic.write_text(LOGIC)
    target = Target(threads=1)
    runs: dict[str, list[dict[str, float]]] = {
        "straight: loadpilot locust": [],
        "straight: LoadPilot DSL": [],
        "logic: loadpilot locust": [],
        "logic: locust": [],
        "logic: loadpilot locust --processes 2": [],
        "logic: locust --processes 2": [],
    }
    n, secs = args.users, args.seconds
    try:
        for _ in range(args.rounds):
            runs["straight: loadpilot locust"].append(
                run_loadpilot_locust(straight, target.url, n, secs)
            )
            runs["straight: LoadPilot DSL"].append(run_dsl(target.url, n, secs))
            runs["logic: loadpilot locust"].append(run_loadpilot_locust(logic, target.url, n, secs))
            runs["logic: locust"].append(run_locust(locust, logic, target.url, n, secs))
            runs["logic: loadpilot locust --processes 2"].append(
                run_loadpilot_locust(logic, target.url, n, secs, "--processes", "2")
            )
            runs["logic: locust --processes 2"].append(
                run_locust(locust, logic, target.url, n, secs, "--processes", "2")
            )
    finally:
        target.close()
    summary = {
        tool: {k: spread([float(r[k]) for r in rs]) for k in ("rps", "cpu_s_per_10k")}
        for tool, rs in runs.items()
    }

    def median(tool: str) -> float:
        return float(summary[tool]["rps"]["median"])

    ratios = {
        "straight_locustfile_over_dsl": median("straight: loadpilot locust")
        / median("straight: LoadPilot DSL"),
        "logic_loadpilot_over_locust": median("logic: loadpilot locust") / median("logic: locust"),
        "logic_2_processes_loadpilot_over_locust": median("logic: loadpilot locust --processes 2")
        / median("logic: locust --processes 2"),
    }
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "users": n,
        "seconds": secs,
        "rounds": args.rounds,
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
    }
    print(json.dumps(summary, indent=2))
    print(
        f"straight-line locustfile / the same in the DSL: "
        f"{ratios['straight_locustfile_over_dsl']:.2f}; Python-logic locustfile, "
        f"loadpilot locust / locust: {ratios['logic_loadpilot_over_locust']:.2f}; with 2 "
        f"processes each: {ratios['logic_2_processes_loadpilot_over_locust']:.2f}"
    )
    write_results("locustfiles", report)


if __name__ == "__main__":
    main()
