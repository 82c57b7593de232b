"""Draws docs/images/benchmarks.svg from the newest ``bench/results/peers-*.json``: max
throughput per tool, and each tool's reported p99 under a stall against the theory.

    python bench/chart.py [RESULTS.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import altair as alt
import polars as pl
import vl_convert as vlc

from engine import HERE

OUT = HERE.parent / "docs" / "images" / "benchmarks.svg"


def bars(rows: list[dict[str, object]], field: str, title: str) -> alt.Chart:
    """Horizontal bars per tool, LoadPilot's highlighted."""
    chart: alt.Chart = (
        alt.Chart(pl.DataFrame(rows))
        .mark_bar()
        .encode(
            x=alt.X(f"{field}:Q", title=title),
            y=alt.Y("tool:N", sort="-x", title=None),
            color=alt.condition(
                "indexof(datum.tool, 'loadpilot') == 0", alt.value("#4c78a8"), alt.value("#bab0ac")
            ),
        )
    )
    return chart


def main() -> None:
    files = sorted((HERE / "results").glob("peers-*.json"))
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else files[-1]
    data = json.loads(path.read_text())
    panels = []
    if "throughput" in data:
        rows = [{"tool": t, "rps": f["rps"]["median"]}
                for t, f in data["throughput"]["summary"].items()]  # fmt: skip
        panels.append(
            bars(rows, "rps", "requests/s (median)").properties(
                title="Max throughput, 32 connections (higher is better)", width=420
            )
        )
    if "stall" in data:
        theory = data["stall"]["theory_p99_ms"]
        rows = [{"tool": t, "p99": f["p99_ms"]["median"]}
                for t, f in data["stall"]["summary"].items()]  # fmt: skip
        rule = (
            alt.Chart(pl.DataFrame({"theory": [theory]}))
            .mark_rule(color="firebrick", strokeDash=[4, 3])
            .encode(x="theory:Q")
        )
        panels.append(
            (bars(rows, "p99", "reported p99 (ms, median)") + rule).properties(
                title=f"Reported p99 under a 500 ms stall every 5 s (theory ≈ {theory:g} ms)",
                width=420,
            )
        )
    chart = alt.vconcat(*panels).properties(title=f"LoadPilot vs peers, {data['date']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(vlc.vegalite_to_svg(chart.to_dict()))
    print(OUT)


if __name__ == "__main__":
    main()
