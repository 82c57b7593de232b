"""What the live dashboard costs a run: the same runs with and without ``run.live()`` redrawing
every second, alternating A B A B, against the built-in target in its own process.

1. Engine path at max throughput: 32 closed-model users, no think time (requests/s).
2. Python-logic users at a fixed 1,000 requests/s: corrected p99 and max (a redraw that held
   the GIL would show up here as latency).

Each run is a fresh process; the dashboard draws every frame as in a notebook, to a display
that discards it. Results go to ``bench/results/live-<date>.json``.

    python bench/live.py [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile

from engine import HERE, Target, spread

_RUN = """
import json, sys, threading, loadpilot as lp
from loadpilot.notebook.live import Dashboard
url, kind, out = sys.argv[1], sys.argv[2], sys.argv[5]
seconds, live = float(sys.argv[3]), sys.argv[4] == "1"

class Discard:
    def update(self, bundle, raw=False):
        pass

if kind == "engine":
    load = lp.ClosedLoad(stages=[lp.Constant(rate=32, duration_s=seconds)])
    task = lp.Task(name="get", requests=[lp.Request(path="/")])
    what = lp.Plan(target=url, load=load, tasks=[task])
else:
    @lp.scenario(profile=lp.constant(rps=1000, duration=seconds))
    class User(lp.VUser):
        @lp.task
        async def get(self):
            await self.client.get("/")
    what = User

run = lp.start(what, out, target=url)
frames = 0
if live:
    dash = Dashboard(run)
    dash._handle = Discard()  # what show() does, minus the notebook display
    thread = threading.Thread(target=dash._loop, daemon=True)
    thread.start()
run.wait()
if live:
    dash.finish()
    frames = dash.frames
s = run.summary().overall
print(json.dumps({"rps": s.achieved_rps, "p99": s.latency_ms.p99, "max": s.latency_ms.max,
                  "requests": s.requests, "errors": s.errors, "frames": frames}))
"""


def one(url: str, kind: str, seconds: float, live: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-c", _RUN, url, kind, str(seconds), "1" if live else "0",
             f"{tmp}/run"],
            capture_output=True, text=True, check=True, timeout=300,
        )  # fmt: skip
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    target = Target(threads=1)
    raw: dict[str, list[dict[str, float]]] = {}
    try:
        for _ in range(args.rounds):
            for kind in ("engine", "python"):
                for live in (False, True):
                    key = f"{kind}-{'live' if live else 'plain'}"
                    raw.setdefault(key, []).append(one(target.url, kind, args.seconds, live))
    finally:
        target.close()
    summary = {k: {m: spread([r[m] for r in v]) for m in ("rps", "p99", "max", "frames")}
               for k, v in raw.items()}  # fmt: skip
    ratio = summary["engine-live"]["rps"]["median"] / summary["engine-plain"]["rps"]["median"]
    out = {
        "date": dt.date.today().isoformat(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "summary": summary,
        "engine_rps_ratio_live_vs_plain": ratio,
        "raw": raw,
    }
    path = HERE / "results" / f"live-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: {m: round(v[m]["median"], 3) for m in v} for k, v in summary.items()},
                     indent=2))  # fmt: skip
    print(f"engine path, requests/s with the dashboard / without: {ratio:.3f}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
