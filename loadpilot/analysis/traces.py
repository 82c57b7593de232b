"""Which requests were slow, and why: the slowest requests a run kept (``run.slowest()``),
shown as a table."""

from __future__ import annotations

import polars as pl

__all__ = ["table"]


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}" if v >= 100 else f"{v:.2f}"


def table(slow: pl.DataFrame, limit: int = 10) -> str:
    """The first ``limit`` rows of ``run.slowest()`` as plain text: when each ended (UTC),
    its latency, the generator's wait before sending it, its service time, status or error,
    task and request name, the URL as sent and its trace id."""
    if slow.is_empty():
        return "no requests kept"
    rows = [("ended (UTC)", "latency ms", "wait ms", "service ms", "status", "request", "url",
             "trace id")]  # fmt: skip
    for r in slow.head(limit).iter_rows(named=True):
        status = r["error"] if r["error"] and r["status"] is None else str(r["status"])
        if r["error"] and r["status"] is not None:
            status = f"{r['status']} {r['error']}"
        name = r["task"] if r["request"] == r["task"] else f"{r['task']}: {r['request']}"
        url = r["url"] if len(r["url"]) <= 48 else r["url"][:47] + "…"
        rows.append((
            r["end"].strftime("%H:%M:%S.%f")[:-3],
            _ms(r["latency_ms"]),
            _ms(r["wait_ms"]),
            _ms(r["service_ms"]),
            status,
            name,
            url,
            r["trace_id"] or "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {1, 2, 3}
    lines = [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    more = len(slow) - limit
    if more > 0:
        lines.append(f"… and {more} more")
    return "\n".join(lines)
