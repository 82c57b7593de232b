"""Prints the tables of docs/benchmarks.md (section "Against wrk, oha, k6 and Locust") from the
newest ``bench/results/peers-*.json``: medians with the range over rounds, and the goals.

    python bench/tables.py [RESULTS.json]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import HERE

Fig = dict[str, float]


def cell(f: Fig | None, fmt: Callable[[float], str]) -> str:
    """``median (min – max)``, or the median alone when every round gave the same figure."""
    if f is None:
        return "–"
    if fmt(f["min"]) == fmt(f["max"]):
        return fmt(f["median"])
    return f"{fmt(f['median'])} ({fmt(f['min'])} – {fmt(f['max'])})"


def num(v: float) -> str:
    return f"{v:,.0f}"


def ms(v: float) -> str:
    return f"{v:.2f} ms" if v < 10 else f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms"


def pct(v: float) -> str:
    return f"{v * 100:.2f}%"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def median(s: dict[str, Fig], tool: str, key: str) -> float:
    return s[tool][key]["median"]


def main() -> None:
    files = sorted((HERE / "results").glob("peers-*.json"))
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else files[-1]
    data: dict[str, Any] = json.loads(path.read_text())
    goals: list[list[str]] = []

    if "throughput" in data:
        s = data["throughput"]["summary"]
        rows = [[t, cell(f["rps"], num), cell(f["cpu_s_per_10k"], lambda v: f"{v:.2f}"),
                 cell(f["rss_mib"], lambda v: f"{v:.0f} MiB")] for t, f in s.items()]  # fmt: skip
        print("### 1. Max throughput\n")
        print(table(["tool", "requests/s", "CPU s per 10k requests", "peak RSS"], rows))
        rps = {t: median(s, t, "rps") for t in s}
        lp, py = rps["loadpilot"], rps["loadpilot (Python task)"]
        ratios = [
            ("engine path ≥ 0.8× wrk", lp / rps["wrk"], 0.8),
            ("engine path ≥ 3× k6", lp / rps["k6"], 3.0),
            ("Python path ≥ 2× Locust", py / rps["locust"], 2.0),
        ]
        for goal, ratio, want in ratios:
            goals.append([goal, f"{ratio:.2f}×", "met" if ratio >= want else "missed"])

    if "rate" in data:
        s = data["rate"]["summary"]
        rows = [[t, cell(f["requests"], num), cell(f["rate_error"], pct), cell(f["p50_ms"], ms),
                 cell(f["p99_ms"], ms), cell(f.get("service_p99_ms"), ms)]
                for t, f in s.items()]  # fmt: skip
        print("\n### 2. Fixed rate\n")
        print(table(["tool", "requests sent", "rate error", "p50", "p99", "service p99"], rows))
        worst = max(median(s, t, "rate_error") for t in s if t.startswith("loadpilot"))
        goals.append(["fixed-rate error ≤ 0.5%", pct(worst), "met" if worst <= 0.005 else "missed"])

    if "stall" in data:
        s, theory = data["stall"]["summary"], data["stall"]["theory_p99_ms"]
        raw = data["stall"]["raw"]
        rows = [[t, cell(f["rps"], num), ", ".join(ms(r["p99_ms"]) for r in raw[t])]
                for t, f in s.items()]  # fmt: skip
        print("\n### 3. Truth under a stall\n")
        print(table(["tool", "requests/s sent", "reported p99 (each round)"], rows))
        ours = [t for t in s if t.startswith("loadpilot")]
        off = max(abs(median(s, t, "p99_ms") - theory) / theory for t in ours)
        goals.append(["stall p99 within 15% of theory", f"{off * 100:+.0f}% at most",
                      "met" if off <= 0.15 else "missed"])  # fmt: skip

    if "memory" in data:
        s = data["memory"]["summary"]
        mib = lambda v: f"{v:.0f} MiB"  # noqa: E731
        rows = [[t, cell(f["rss_mib_100_users"], mib), cell(f["rss_mib_10k_users"], mib),
                 cell(f["kib_per_user"], lambda v: f"{v:.1f} KiB"), cell(f["rps_10k_users"], num)]
                for t, f in s.items()]  # fmt: skip
        print("\n### 4. Memory at scale\n")
        print(table(["tool", "RSS, 100 users", "RSS, 10,000 users", "per user",
                     "requests/s at 10,000"], rows))  # fmt: skip
        ratio = median(s, "k6", "kib_per_user") / median(s, "loadpilot", "kib_per_user")
        goals.append(["memory per idle user ≥ 10× smaller than k6", f"{ratio:.1f}×",
                      "met" if ratio >= 10 else "missed"])  # fmt: skip

    print("\n### Goals\n")
    print(table(["goal", "measured", ""], goals))


if __name__ == "__main__":
    main()
