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
user-space instruction of the run's process (cachegrind, no cache simulation). A run's count is
``F + a * requests + b * seconds``: fixed costs (Python's start, imports, the summary), a cost
per request, and a cost per second (each name's interval histograms reset and written to the
log every second). Under valgrind the engine runs several times slower, so a per-second cost
would weigh several times more per request than at full speed; the two are measured apart, with
three open-model runs of each variant (rates ``r1`` and ``r2`` for ``T1`` seconds, ``r1`` for
``T2``), and the cost per request is read at a real saturated rate (``--at-rps``): ``a + b /
rate``. The kernel's share of the CPU (sockets over loopback, ~80% of the engine's at
saturation) is the same for both variants (the same syscalls per request), so the ratio of
user-space instructions bounds the ratio of CPU per request from above.

    python bench/named.py [--users 32] [--seconds 6] [--rounds 8]
    python bench/named.py --instructions [--rounds 2] [--at-rps 80000]
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

from engine import Target, ensure_apt, run_scenario_program, spread, write_results

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


#: The same scenario as an open model: ``users`` is the rate of iterations (three requests each).
_OPEN_PROGRAM = _PROGRAM.replace(
    "profile=lp.users(users, seconds)", "profile=lp.constant(users, seconds)"
)
assert _OPEN_PROGRAM != _PROGRAM

_PIN = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
_PIN_RUN = ["taskset", "-c", "1"] if _PIN else []


def run_variant(
    name: str,
    url: str,
    users: int,
    seconds: float,
    prefix: list[str] | None = None,
    open_model: bool = False,
) -> dict[str, float]:
    program = (_OPEN_PROGRAM if open_model else _PROGRAM).format(*_NAMES[name])
    r = run_scenario_program(program, url, users, seconds, prefix=[*_PIN_RUN, *(prefix or [])])
    assert r.pop("path") == "engine", (name, r)
    assert r.pop("names") == len(set(_NAMES[name])), (name, r)
    assert r["errors"] == 0, (name, r)
    return r


def count_instructions(name: str, url: str, rate: int, seconds: float) -> dict[str, float]:
    """An open-model run of the variant (``rate`` iterations a second) under valgrind: its
    requests and the user-space instructions its whole process executed."""
    valgrind = ensure_apt("valgrind", "valgrind")
    with tempfile.TemporaryDirectory(prefix="lp-bench-cg-") as d:
        counts = Path(d) / "cachegrind.out"
        prefix = [valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file="
                  + str(counts)]  # fmt: skip
        r = run_variant(name, url, rate, seconds, prefix=prefix, open_model=True)
        found = re.search(r"^summary:\s+(\d+)", counts.read_text(), re.MULTILINE)
        assert found is not None, "cachegrind wrote no summary"
    return {"requests": r["requests"], "seconds": seconds, "instructions": float(found.group(1))}


def solve(
    a_run: dict[str, float], b_run: dict[str, float], c_run: dict[str, float]
) -> dict[str, float]:
    """``per_request`` and ``per_second`` from three runs: A and B as long as each other at two
    rates, C as fast as A and longer."""
    per_request = (b_run["instructions"] - a_run["instructions"]) / (
        b_run["requests"] - a_run["requests"]
    )
    rest = c_run["instructions"] - a_run["instructions"]
    rest -= per_request * (c_run["requests"] - a_run["requests"])
    per_second = rest / (c_run["seconds"] - a_run["seconds"])
    return {"per_request": per_request, "per_second": per_second}


def main_instructions(args: argparse.Namespace) -> None:
    """Instructions per request of each variant at ``--at-rps``, round by round, the variants
    alternated."""
    plan = ((args.r1, args.t1), (args.r2, args.t1), (args.r1, args.t2))
    target = Target(threads=1)
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for _ in range(args.rounds):
            this: dict[str, dict[str, Any]] = {}
            for name in _NAMES:
                runs = [count_instructions(name, target.url, r, t) for r, t in plan]
                cost = solve(*runs)
                cost["at_rps"] = cost["per_request"] + cost["per_second"] / args.at_rps
                this[name] = {"runs": runs, **cost}
                print(f"{name}: {cost['per_request']:,.0f} instructions per request, "
                      f"{cost['per_second']:,.0f} per second; at {args.at_rps:,.0f} requests/s "
                      f"{cost['at_rps']:,.0f} per request", flush=True)  # fmt: skip
            rounds.append(this)
    finally:
        target.close()
    ratios = {
        key: statistics.median(r["three_names"][key] for r in rounds)
        / statistics.median(r["one_name"][key] for r in rounds)
        for key in ("per_request", "at_rps")
    }
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "measure": "user-space instructions (valgrind cachegrind), F + a*requests + b*seconds",
        "runs": [{"iterations_per_s": r, "seconds": t} for r, t in plan],
        "at_rps": args.at_rps,
        "rounds": rounds,
        "ratios": {f"three_names_over_one_name_{k}": v for k, v in ratios.items()},
    }
    print(f"three names / one name: per request alone {ratios['per_request']:.4f}, "
          f"at {args.at_rps:,.0f} requests/s {ratios['at_rps']:.4f}")  # fmt: skip
    write_results("named-instructions", report)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--instructions", action="store_true",
                   help="count instructions per request under valgrind")  # fmt: skip
    p.add_argument("--r1", type=int, default=500, help="iterations/s of runs A and C")
    p.add_argument("--r2", type=int, default=2000, help="iterations/s of run B")
    p.add_argument("--t1", type=float, default=4, help="seconds of runs A and B")
    p.add_argument("--t2", type=float, default=10, help="seconds of run C")
    p.add_argument("--at-rps", type=float, default=80_000,
                   help="the saturated rate the cost per request is read at")  # fmt: skip
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
