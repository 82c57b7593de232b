"""What naming requests costs: requests per second in one process on one engine thread, closed
model, users looping with no think time, against the built-in target (its own process, one
thread), variants alternated round by round:

- ``one_name``: a task of three GETs measured under one name;
- ``three_names``: the same three GETs, each under a name of its own.

On a machine of two cores or more, the target is pinned to the first and the run to the second
(``taskset``), so that the two do not trade places between rounds (unpinned, rounds of one
variant differ by 40% here).

Each request is recorded into its task and into its name either way; with three names, into
three slots instead of one. Goal: naming costs at most 3% of engine throughput:
``three_names / one_name >= 0.97``, read three ways: the ratio of the medians, the median of each
round's ratio (the two variants run back to back in a round, under the same conditions), and the
CPU seconds per request (what bounds throughput at saturation: ``one_name / three_names``).
Results go to ``bench/results/named-<date>.json``.

Throughput on a shared machine of two cores moves by far more than 3% from round to round, so the
goal is also read where noise cannot reach it (``--instructions``): valgrind counts every
user-space instruction of the run's process (cachegrind, no cache simulation), each variant at
two lengths; the difference of the two counts over the difference of their requests is what one
more request costs, with the fixed costs (Python's start, imports, the summary) cancelled. The
kernel's share (sockets over loopback, ~80% of the engine's CPU at saturation) is the same for
both variants (the same syscalls per request), so the ratio of user-space instructions bounds the
ratio of CPU per request from above.

    python bench/named.py [--users 32] [--seconds 6] [--rounds 8]
    python bench/named.py --instructions [--rounds 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from engine import Target, run_scenario_program, spread, write_results

_NAMES = {
    "one_name": ("step", "step", "step"),
    "three_names": ("login", "browse", "order"),
}

_PROGRAM = """
import json, sys, loadpilot as lp
url, users, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

@lp.scenario(profile=lp.users(users, seconds))
class User(lp.VUser):
    @lp.task
    def flow(self):
        self.client.get("/", name="{0}")
        self.client.get("/", name="{1}")
        self.client.get("/", name="{2}")

s = lp.run(User, out, target=url).summary()
t = s.task("flow")
print(json.dumps({{"requests": t.requests, "errors": t.errors, "rps": t.achieved_rps,
                  "path": t.path, "names": len(s.requests)}}))
"""


_PIN = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
_PIN_RUN = ["taskset", "-c", "1"] if _PIN else []


def run_variant(
    name: str, url: str, users: int, seconds: float, prefix: list[str] | None = None
) -> dict[str, float]:
    program = _PROGRAM.format(*_NAMES[name])
    r = run_scenario_program(program, url, users, seconds, prefix=[*_PIN_RUN, *(prefix or [])])
    assert r.pop("path") == "engine", (name, r)
    assert r.pop("names") == len(set(_NAMES[name])), (name, r)
    assert r["errors"] == 0, (name, r)
    return r


def count_instructions(name: str, url: str, users: int, seconds: float) -> dict[str, float]:
    """A run of the variant under valgrind: its requests and the user-space instructions its
    whole process executed."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="lp-bench-cg-") as d:
        counts = Path(d) / "cachegrind.out"
        prefix = [valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file="
                  + str(counts)]  # fmt: skip
        r = run_variant(name, url, users, seconds, prefix=prefix)
        found = re.search(r"^summary:\s+(\d+)", counts.read_text(), re.MULTILINE)
        assert found is not None, "cachegrind wrote no summary"
    return {"requests": r["requests"], "instructions": float(found.group(1))}


def main_instructions(args: argparse.Namespace) -> None:
    """Instructions per request of each variant: (count at the long length - count at the
    short one) / (their requests' difference), round by round, the variants alternated."""
    lengths = (args.short_s, args.long_s)
    target = Target(threads=1)
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for _ in range(args.rounds):
            this: dict[str, dict[str, Any]] = {}
            for name in _NAMES:
                short, long = (count_instructions(name, target.url, args.users, s) for s in lengths)
                per = (long["instructions"] - short["instructions"]) / (
                    long["requests"] - short["requests"]
                )
                this[name] = {"short": short, "long": long, "per_request": per}
                n = f"{short['requests']:.0f} and {long['requests']:.0f} requests"
                print(f"{name}: {per:,.0f} instructions per request ({n})", flush=True)
            rounds.append(this)
    finally:
        target.close()
    per = {name: [r[name]["per_request"] for r in rounds] for name in _NAMES}
    ratio = statistics.median(per["three_names"]) / statistics.median(per["one_name"])
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "measure": "user-space instructions per request (valgrind cachegrind)",
        "users": args.users,
        "lengths_s": lengths,
        "rounds": rounds,
        "summary": {name: spread(v) for name, v in per.items()},
        "ratios": {"three_names_over_one_name_instructions": ratio},
    }
    print(f"three names / one name: instructions per request {ratio:.4f}")
    write_results("named-instructions", report)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--instructions", action="store_true",
                   help="count instructions per request under valgrind")  # fmt: skip
    p.add_argument("--short-s", type=float, default=3)
    p.add_argument("--long-s", type=float, default=9)
    args = p.parse_args()
    if args.instructions:
        main_instructions(args)
        return
    target = Target(threads=1)
    if _PIN:
        subprocess.run(["taskset", "-a", "-cp", "0", str(target.proc.pid)], check=True,
                       capture_output=True)  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in _NAMES}
    try:
        for _ in range(args.rounds):
            for name in _NAMES:
                runs[name].append(run_variant(name, target.url, args.users, args.seconds))
    finally:
        target.close()
    summary = {
        name: {k: spread([r[k] for r in rs]) for k in ("rps", "cpu_s_per_10k")}
        for name, rs in runs.items()
    }
    ratio = float(summary["three_names"]["rps"]["median"]) / float(
        summary["one_name"]["rps"]["median"]
    )
    paired = statistics.median(
        t["rps"] / o["rps"] for o, t in zip(runs["one_name"], runs["three_names"], strict=True)
    )
    cpu = float(summary["one_name"]["cpu_s_per_10k"]["median"]) / float(
        summary["three_names"]["cpu_s_per_10k"]["median"]
    )
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "users": args.users,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "pinned": _PIN,
        "runs": runs,
        "summary": summary,
        "ratios": {
            "three_names_over_one_name": ratio,
            "paired_rounds": paired,
            "cpu_per_request": cpu,
        },
    }
    print(json.dumps(summary, indent=2))
    print(f"three names / one name: medians {ratio:.3f}, paired rounds {paired:.3f}, "
          f"CPU per request {cpu:.3f}")  # fmt: skip
    write_results("named", report)


if __name__ == "__main__":
    main()
