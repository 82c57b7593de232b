"""A long-lived `loadpilot serve`: its memory over many sequential runs. The server keeps its
newest ``--keep-runs`` finished runs in memory and in ``/metrics`` (20 by default) and lets go
of the rest, so its resident memory after run 200 should be what it was after run 20 (goal:
within 10%).

Each run is a plan of ``--seconds`` at ``--rate`` against the built-in target (in this process,
on loopback), its rows streamed to the end as a client would, then ``/metrics`` scraped once.
The server's RSS (``/proc/<pid>/status``) is read after every run. Results go to
``bench/results/serve-memory-<date>.json``.

    python bench/serve_memory.py [--runs 200] [--seconds 1] [--rate 100] [--keep-runs 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import loadpilot as lp
from engine import HERE
from loadpilot.cluster.server import free_port

TOKEN = "bench-token"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def call(port: int, method: str, path: str, body: object = None) -> bytes:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    c.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    r = c.getresponse()
    data = r.read()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
    return data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--keep-runs", type=int, default=20)
    args = ap.parse_args()
    port = free_port()
    runs = Path(tempfile.mkdtemp(prefix="loadpilot-serve-bench-"))
    server = subprocess.Popen(
        [sys.executable, "-m", "loadpilot.cli", "serve", "--port", str(port), "--runs", str(runs),
         "--token", TOKEN, "--keep-runs", str(args.keep_runs)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    rss: list[float] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                call(port, "GET", "/readyz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with lp.start_target() as target:
            plan = {
                "name": "soak",
                "target": target.url,
                "load": {"model": "open", "stages": [
                    {"kind": "constant", "rate": args.rate, "duration_s": args.seconds}]},
                "tasks": [{"name": "home", "requests": [{"path": "/"}]}],
            }  # fmt: skip
            for i in range(args.runs):
                created = json.loads(call(port, "POST", "/runs", plan))
                call(port, "GET", f"/runs/{created['id']}/metrics")  # to its end
                call(port, "GET", "/metrics")
                rss.append(rss_mb(server.pid))
                if (i + 1) % 20 == 0:
                    print(f"run {i + 1}: RSS {rss[-1]:.1f} MB", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    at = args.keep_runs
    ratio = rss[-1] / rss[at - 1]
    result = {
        "date": dt.date.today().isoformat(),
        "runs": args.runs,
        "seconds": args.seconds,
        "rate": args.rate,
        "keep_runs": args.keep_runs,
        "rss_mb": [round(x, 1) for x in rss],
        f"rss_after_{at}_mb": round(rss[at - 1], 1),
        f"rss_after_{args.runs}_mb": round(rss[-1], 1),
        "ratio": round(ratio, 3),
    }
    out = HERE / "results" / f"serve-memory-{result['date']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"RSS after run {at}: {rss[at - 1]:.1f} MB; after run {args.runs}: {rss[-1]:.1f} MB "
        f"({ratio:.3f}×; goal ≤ 1.10) -> {out}"
    )


if __name__ == "__main__":
    main()
