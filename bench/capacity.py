"""The capacity search against servers whose capacity is known, and against a sweep in 1% steps.

Servers (the built-in target in its own process, pinned to the second CPU): four workers of
10 ms (a cliff near 400/s), eight workers of 5 ms (a cliff near 1,600/s), and four workers of
5–15 ms with Poisson arrivals (latency grows smoothly as the workers fill). For each: a sweep in
steps of 1% of the nominal capacity over ``--sweep-from``..``--sweep-to`` of it, every level
``--level-s`` long (the capacity it finds: the highest level that met the SLO, every lower one
having met it), then ``--repeats`` seeded searches with the same level length. Reported: each
search's answer against the sweep's, the spread of the searches, and the time each took against
what a sweep from 1% up to the capacity would take (100 levels). Results go to
``bench/results/capacity-<date>-<servers>.json``.

    python bench/capacity.py [--repeats 10] [--level-s 5] [--servers pool4,pool8,smooth]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from validity import target

import loadpilot as lp
from engine import HERE

SLO = "p99 < 50ms and errors < 0.1%"

# name: (target options, nominal capacity /s, arrivals)
SERVERS: dict[str, tuple[list[str], float, str]] = {
    "pool4": (["--delay-ms", "10", "--concurrency", "4"], 400.0, "uniform"),
    "pool8": (["--delay-ms", "5", "--concurrency", "8"], 1600.0, "uniform"),
    "smooth": (["--delay-ms", "5", "--delay-max-ms", "15", "--concurrency", "4"], 400.0, "poisson"),
}


def plan(url: str, arrivals: str, seed: int) -> lp.Plan:
    return lp.Plan(
        name="capacity",
        target=url,
        load=lp.OpenLoad(stages=[lp.Constant(rate=10, duration_s=5)], arrivals=arrivals, seed=seed),
        tasks=[lp.Task(name="home", requests=[lp.Request(path="/")])],
    )


def sweep(
    url: str, nominal: float, arrivals: str, lo: float, hi: float, level_s: float
) -> dict[str, object]:
    """Levels at 1% of ``nominal`` from ``lo`` to ``hi`` of it; the capacity is the highest
    level that met the SLO with every lower level having met it (judged as the search judges)."""
    from loadpilot.analysis.planning import parse_slo
    from loadpilot.search import _judge

    rules = parse_slo(SLO)
    met, levels, t0 = 0.0, [], time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for pct in range(round(lo * 100), round(hi * 100) + 1):
            rate = nominal * pct / 100
            r = lp.run(plan(url, arrivals, pct), Path(tmp) / f"{pct}",
                       profile=lp.constant(rps=rate, duration=f"{level_s}s"))  # fmt: skip
            state, *_ = _judge([r], rate, rules, 1.0, 0.95)
            levels.append((rate, state))
            if state != "met":
                break
            met = rate
    return {"capacity": met, "levels": levels, "seconds": time.monotonic() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--level-s", type=float, default=5.0)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--sweep-from", type=float, default=0.6)
    ap.add_argument("--sweep-to", type=float, default=1.1)
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    results: dict[str, object] = {
        "date": dt.date.today().isoformat(),
        "slo": SLO,
        "level_s": args.level_s,
    }
    for name in args.servers.split(","):
        options, nominal, arrivals = SERVERS[name]
        with target(options, cores[-1]) as url:
            swept = sweep(url, nominal, arrivals, args.sweep_from, args.sweep_to, args.level_s)
            searches = []
            for seed in range(args.repeats):
                t0 = time.monotonic()
                with tempfile.TemporaryDirectory() as tmp:
                    cap = lp.find_capacity(
                        plan(url, arrivals, seed), slo=SLO, tolerance=0.05, start_rate=nominal / 16,
                        level_s=args.level_s, out=Path(tmp) / "search",
                    )  # fmt: skip
                searches.append(
                    {
                        "rate": cap.rate,
                        "limit": cap.limit,
                        "levels": len(cap.levels),
                        "level_seconds": sum(lv.seconds for lv in cap.levels),
                        "seconds": time.monotonic() - t0,
                    }  # fmt: skip
                )
        rates = [s["rate"] for s in searches]
        # 1% steps up to the capacity, a second of set-up each.
        full_sweep_s = 100 * (args.level_s + 1.0)
        results[name] = {"nominal": nominal, "sweep": swept, "searches": searches}
        found: float = swept["capacity"]  # type: ignore[assignment]
        within = sum(abs(r - found) <= 0.05 * found for r in rates)
        print(
            f"{name}: sweep {found:.0f}/s; searches {min(rates):.0f}–{max(rates):.0f}/s "
            f"(median {statistics.median(rates):.0f}), {within}/{len(rates)} within 5%, "
            f"spread {(max(rates) - min(rates)) / max(rates):.1%}; "
            f"median time {statistics.median(s['seconds'] for s in searches):.0f} s = "
            f"{statistics.median(s['seconds'] for s in searches) / full_sweep_s:.0%} of a 1% sweep "
            f"to the capacity ({full_sweep_s:.0f} s)",
            flush=True,
        )
    out = HERE / "results" / f"capacity-{results['date']}-{args.servers.replace(',', '-')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
