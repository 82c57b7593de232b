"""What trace context and slow-request keeping cost: requests per second in one process on one
engine thread, closed model, users looping with no think time, against the built-in target
(its own process, one thread), variants alternated round by round:

- ``off``: no ``traceparent`` sent, nothing kept (``trace=0, keep_slowest=0, keep_sample=0``);
- ``on``: the defaults: every request carries a fresh ``traceparent``, each request name keeps
  its 5 slowest and a sample of 2 every second.

Pinned as ``bench/named.py`` is (target on the first core, the run on the second). Goal: both on
cost at most 3% of engine throughput: ``on / off >= 0.97``, read three ways: the ratio of the
medians, the median of each round's ratio, and CPU seconds per request (``off / on``).
Results go to ``bench/results/tracing-<date>.json``.

    python bench/tracing.py [--users 32] [--seconds 6] [--rounds 8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess

from engine import Target, run_scenario_program, spread, write_results

_SETTINGS = {
    "off": "trace=0.0, keep_slowest=0, keep_sample=0",
    "on": "trace=1.0, keep_slowest=5, keep_sample=2",
    # Each alone, to see which costs what (not run unless asked for).
    "trace_only": "trace=1.0, keep_slowest=0, keep_sample=0",
    "keep_only": "trace=0.0, keep_slowest=5, keep_sample=2",
}

_PROGRAM = """
import json, sys, loadpilot as lp
url, users, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
plan = lp.Plan(
    target=url, load=lp.ClosedLoad(stages=[lp.Constant(rate=users, duration_s=seconds)]),
    tasks=[lp.Task(name="get", requests=[lp.Request(path="/")])], {0},
)
s = lp.run(plan, out).summary()
print(json.dumps({{"requests": s.overall.requests, "errors": s.overall.errors,
                  "rps": s.overall.achieved_rps}}))
"""

_PIN = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
_PIN_RUN = ["taskset", "-c", "1"] if _PIN else []


def run_variant(name: str, url: str, users: int, seconds: float) -> dict[str, float]:
    r = run_scenario_program(_PROGRAM.format(_SETTINGS[name]), url, users, seconds, _PIN_RUN)
    assert r["errors"] == 0, (name, r)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--variants", default="off,on", help="of: " + ", ".join(_SETTINGS))
    args = p.parse_args()
    variants = args.variants.split(",")
    target = Target(threads=1)
    if _PIN:
        subprocess.run(["taskset", "-a", "-cp", "0", str(target.proc.pid)], check=True,
                       capture_output=True)  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    try:
        for _ in range(args.rounds):
            for name in variants:
                runs[name].append(run_variant(name, target.url, args.users, args.seconds))
    finally:
        target.close()
    summary = {
        name: {k: spread([r[k] for r in rs]) for k in ("rps", "cpu_s_per_10k")}
        for name, rs in runs.items()
    }
    if "on" not in runs or "off" not in runs:
        print(json.dumps(summary, indent=2))
        return
    ratio = float(summary["on"]["rps"]["median"]) / float(summary["off"]["rps"]["median"])
    paired = statistics.median(
        n["rps"] / f["rps"] for f, n in zip(runs["off"], runs["on"], strict=True)
    )
    cpu = float(summary["off"]["cpu_s_per_10k"]["median"]) / float(
        summary["on"]["cpu_s_per_10k"]["median"]
    )
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "users": args.users,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "pinned": _PIN,
        "settings": {name: _SETTINGS[name] for name in variants},
        "runs": runs,
        "summary": summary,
        "ratios": {"on_over_off": ratio, "paired_rounds": paired, "cpu_per_request": cpu},
    }
    print(json.dumps(summary, indent=2))
    print(f"on / off: medians {ratio:.3f}, paired rounds {paired:.3f}, "
          f"CPU per request {cpu:.3f}")  # fmt: skip
    write_results("tracing", report)


if __name__ == "__main__":
    main()
