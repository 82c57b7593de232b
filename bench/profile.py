"""Where the CPU goes at max throughput: ``perf record`` of LoadPilot's engine thread (HTTP/1.1,
32 users; HTTP/2, 2 connections x 16 streams) and of wrk (32 connections), each for a few
seconds against the built-in target (one thread, its own process). Samples are sorted into
kinds of work by symbol: the kernel's TCP/IP over loopback, scheduling and wakeups, syscall
entry, clock reads, HTTP/2 framing (the h2 crate), request and response code, recording,
the workers and tokio, memory and copies.

Results go to ``bench/results/profile-<date>.json``; docs/benchmarks.md quotes them. Needs
``perf`` (Debian ``linux-perf``) with access to kernel samples (root, or
``kernel.perf_event_paranoid`` <= 1).

    python bench/profile.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict

from engine import Target, ensure_apt, ensure_wrk, write_results

#: Kinds of work, by symbol (``dso`` and ``sym`` columns of ``perf report``); first match wins.
KINDS: list[tuple[str, str]] = [
    ("clock reads", r"vdso|read_tsc|ktime_get|Timespec|Instant>|clock_gettime"),
    (
        "syscall entry and wrappers",
        r"do_syscall|__sys_|fdget|fput|__send$|__libc_recv|asynccancel|srso|entry_SYSCALL",
    ),
    (
        "kernel: TCP/IP over loopback",
        r"\[k\] .*(tcp|ip_|ipv4|skb|net_|loopback|sk_|inet|dev_|bbr|sock|backlog|napi|__netif"
        r"|nf_|dst_|csum|copy_|_copy|datagram|__check_object|fib|raw_v4|kmem|slab|kfree"
        r"|local_bh|raw_local_deliver|eth_|virt_addr)",
    ),
    (
        "kernel: scheduling, wakeups, epoll",
        r"\[k\] .*(switch|sched|spin|wake|ep_|epoll|futex|irq|enqueue|dequeue|update_|pick_"
        r"|idle|timer|rcu|ttwu|select_task|psi|account)",
    ),
    ("kernel: the rest", r"\[k\]"),
    ("HTTP/2 framing, HPACK, streams (h2)", r"\] h2::|<h2::|tokio_util::codec|atomic_waker"),
    (
        "request and response (h1, httparse, client)",
        r"loadpilot_core::(http::(h1|client|request|target)|runner::python)|httparse",
    ),
    (
        "recording (histograms, counters)",
        r"hdrhistogram|loadpilot_core::(measure::metrics|runner::record)",
    ),
    ("workers and tokio", r"tokio::|loadpilot_core::runner|Future>::poll|mio::|cancellation"),
    ("memory and copies (libc, bytes)", r"mem(move|cpy|set)|malloc|free|_int_|bytes::"),
    ("other user space", r"."),
]

_LOADPILOT = """
import sys, loadpilot as lp
url, http, users, streams, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
    int(sys.argv[4]), float(sys.argv[5])
plan = lp.Plan(target=url, load=lp.ClosedLoad(stages=[lp.Constant(rate=users,
               duration_s=seconds)], think_s=0),
               tasks=[lp.Task(name="get", requests=[lp.Request(path="/")])],
               http=http, max_streams=streams)
s = lp.run(plan, sys.argv[6]).summary()
assert s.overall.errors == 0, s.overall.errors_by_kind
print(s.overall.requests)
"""


def record(perf: str, cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, str]:
    """Runs ``cmd`` under ``perf record``; (its stdout, ``perf report`` by thread and symbol)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/perf.data"
        done = subprocess.run(
            [perf, "record", "-q", "-F", "1999", "-o", data, "--", *cmd],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        report = subprocess.run(
            [perf, "report", "-i", data, "--sort", "comm,dso,sym", "--stdio"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return done.stdout, report


def kinds(report: str, thread: str) -> dict[str, object]:
    """Shares of ``thread``'s samples by kind of work, and the thread's share of all samples."""
    share: dict[str, float] = defaultdict(float)
    total = ours = 0.0
    for line in report.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+(.*)$", line)
        if not m:
            continue
        pct, comm, sym = float(m[1]), m[2], m[3]
        total += pct
        if not comm.startswith(thread):
            continue
        ours += pct
        name = next(name for name, rx in KINDS if re.search(rx, sym))
        share[name] += pct
    return {
        "thread_share": round(ours / total, 3),
        "kinds": {name: round(share[name] / ours, 3) for name, _ in KINDS},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=8)
    args = p.parse_args()
    perf, wrk = ensure_apt("perf", "linux-perf"), ensure_wrk()
    target = Target(threads=1)
    report: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count()},
        "seconds": args.seconds,
        "target": "built-in, one thread",
    }
    env = dict(os.environ, LOADPILOT_THREADS="1")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, http, users, streams in (("h1", "1.1", 32, 1), ("h2", "2", 32, 16)):
                cmd = [sys.executable, "-c", _LOADPILOT, target.url, http, str(users)]
                cmd += [str(streams), str(args.seconds), f"{tmp}/{name}"]
                out, rep = record(perf, cmd, env)
                requests = int(out.strip().splitlines()[-1])
                report[f"loadpilot_{name}"] = {
                    "users": users,
                    "max_streams": streams,
                    "rps": round(requests / args.seconds),
                    **kinds(rep, "loadpilot-engin"),
                }
                print(name, report[f"loadpilot_{name}"], flush=True)
        out, rep = record(perf, [wrk, "-t1", "-c32", f"-d{args.seconds}s", target.url + "/"])
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
        report["wrk"] = {"connections": 32, "rps": round(rps), **kinds(rep, "wrk")}
        print("wrk", report["wrk"], flush=True)
    finally:
        target.close()
    write_results("profile", report)


if __name__ == "__main__":
    main()
