"""A long run: `loadpilot run` at 2,000/s for an hour with its Prometheus exporter on and
scraped every 5 s (as Prometheus would), against the built-in target in its own process. The
run's resident memory and CPU per second are sampled every 10 s; what a second costs must not
grow with the run's length (goal: memory and CPU per second over the last 10 minutes within 10%
of the first 10, after a minute of warm-up).

Results go to ``bench/results/soak-<date>.json``.

    python bench/soak.py [--minutes 60] [--rate 2000] [--window 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine import HERE
from loadpilot.cluster.server import free_port

TICK = os.sysconf("SC_CLK_TCK")


def sample(pid: int) -> tuple[float, float]:
    """The process's resident memory (MB) and CPU seconds so far."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
    return rss, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--window", type=float, default=10.0, help="minutes compared at each end")
    ap.add_argument("--warmup", type=float, default=1.0, help="minutes left out at the start")
    args = ap.parse_args()
    seconds = args.minutes * 60
    work = Path(tempfile.mkdtemp(prefix="loadpilot-soak-"))
    tport, mport = free_port(), free_port()
    target = subprocess.Popen(
        [sys.executable, "-m", "loadpilot.cli", "target", "--port", str(tport)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    scenario = work / "soak.py"
    scenario.write_text(
        "import loadpilot as lp\n\n"
        f"@lp.scenario(profile=lp.constant(rps={args.rate}, duration='{seconds}s'), "
        "connections=64)\n"
        "class Soak(lp.VUser):\n"
        "    @lp.task\n"
        "    def home(self):\n"
        "        self.client.get('/', name='home')\n"
    )
    time.sleep(1.0)
    run = subprocess.Popen(
        [sys.executable, "-m", "loadpilot.cli", "run", str(scenario), "--target",
         f"http://127.0.0.1:{tport}", "--out", str(work / "run"), "--prometheus",
         f"127.0.0.1:{mport}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    samples: list[tuple[float, float, float]] = []  # (elapsed s, RSS MB, CPU s)
    began = time.monotonic()
    next_scrape = began
    try:
        while run.poll() is None:
            now = time.monotonic()
            if now >= next_scrape:
                next_scrape += 5.0
                try:
                    c = http.client.HTTPConnection("127.0.0.1", mport, timeout=5)
                    c.request("GET", "/metrics")
                    c.getresponse().read()
                except OSError:
                    pass
            if not samples or now - began - samples[-1][0] >= 10.0:
                try:
                    samples.append((now - began, *sample(run.pid)))
                except OSError:
                    break
            time.sleep(0.5)
    finally:
        for p in (run, target):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(60)
    window = args.window * 60
    first = [s for s in samples if args.warmup * 60 <= s[0] < args.warmup * 60 + window]
    last = [s for s in samples if s[0] >= seconds - window]

    def rate(part: list[tuple[float, float, float]]) -> float:
        return (part[-1][2] - part[0][2]) / (part[-1][0] - part[0][0])

    rss_first, rss_last = statistics.mean(s[1] for s in first), statistics.mean(s[1] for s in last)
    cpu_first, cpu_last = rate(first), rate(last)
    summary = json.loads((work / "run" / "summary.json").read_text())
    result = {
        "date": dt.date.today().isoformat(),
        "minutes": args.minutes,
        "rate": args.rate,
        "requests": summary["overall"]["requests"],
        "ended": summary["ended"],
        "rss_mb_first": round(rss_first, 1),
        "rss_mb_last": round(rss_last, 1),
        "rss_ratio": round(rss_last / rss_first, 3),
        "cpu_per_s_first": round(cpu_first, 4),
        "cpu_per_s_last": round(cpu_last, 4),
        "cpu_ratio": round(cpu_last / cpu_first, 3),
        "samples": [[round(x, 2) for x in s] for s in samples],
    }
    out = HERE / "results" / f"soak-{result['date']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"{result['requests']:,} requests ({result['ended']}); RSS {rss_first:.1f} -> "
        f"{rss_last:.1f} MB ({result['rss_ratio']}×), CPU {cpu_first:.3f} -> {cpu_last:.3f} "
        f"s/s ({result['cpu_ratio']}×); goal ≤ 1.10 each -> {out}"
    )


if __name__ == "__main__":
    main()
