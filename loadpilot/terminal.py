"""What ``loadpilot run`` shows in a terminal: while the run goes, a panel redrawn in place
(progress through the profile, rate against target or users against target, corrected and
service latency, errors by kind and missed arrivals, one row per task); at the end, the summary
as a table with each threshold coloured by its verdict. Used only when standard output is a
terminal; CI logs and pipes get one plain line per second (see :mod:`loadpilot.cli`)."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Literal

import polars as pl
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from loadpilot import thresholds
from loadpilot.plan import Constant, Plan, Ramp, Spike, Step
from loadpilot.profiles import Profile
from loadpilot.running import runs as _run
from loadpilot.running import store as _store
from loadpilot.running.store import ERROR_KINDS
from loadpilot.summary import Summary


def _stage_at(plan: Plan, t: float) -> str:
    """Which stage of the profile ``t`` seconds fall in, e.g. ``stage 2/2: 500/s``."""
    stages = plan.load.stages
    unit = "/s" if plan.load.model == "open" else " users"
    end = 0.0
    for i, st in enumerate(stages):
        end += st.duration_s
        if t < end or i == len(stages) - 1:
            if isinstance(st, Constant):
                what = f"{st.rate:g}{unit}"
            elif isinstance(st, Ramp):
                what = f"ramp {st.from_:g}→{st.to:g}{unit}"
            elif isinstance(st, Step):
                what = f"{st.steps} steps {st.from_:g}→{st.to:g}{unit}"
            else:
                assert isinstance(st, Spike)
                what = f"{st.base:g}{unit}, spike to {st.peak:g}"
            return f"stage {i + 1}/{len(stages)}: {what}"
    return ""


def _value_at(points: list[tuple[float, float]], t: float) -> float:
    """The profile's value at ``t`` from its corners (straight lines between them)."""
    if not points:
        return 0.0
    times = [p[0] for p in points]
    i = bisect.bisect_right(times, t)
    if i == 0:
        return points[0][1]
    if i >= len(points):
        return points[-1][1]
    (t0, v0), (t1, v1) = points[i - 1], points[i]
    return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def _ms(v: object) -> str:
    return f"{float(v):.2f}" if isinstance(v, int | float) else "-"


def _errors(row: dict[str, object]) -> str:
    parts = [f"{k} {row[f'errors_{k}']}" for k in ERROR_KINDS if row.get(f"errors_{k}")]
    return ", ".join(parts) if parts else "0"


def panel(r: _run.Run, total_s: float, elapsed_s: float, last: pl.DataFrame) -> Panel:
    """The live panel: the run's progress and its last closed second (``last``: its task rows,
    or none yet), per task."""
    plan = r.plan
    open_model = plan.load.model == "open"
    bar = ProgressBar(total=max(total_s, 1e-9), completed=min(elapsed_s, total_s), width=40)
    head = Table.grid(padding=(0, 2))
    head.add_row(
        bar, Text(f"{min(elapsed_s, total_s):5.1f}/{total_s:g} s · {_stage_at(plan, elapsed_s)}")
    )
    body = Table(expand=False, box=None, padding=(0, 1), header_style="bold")
    for col in (
        "task",
        "rate/s",
        "target/s" if open_model else "users",
        "p50 ms",
        "p99 ms",
        "service p50",
        "service p99",
        "errors",
        "missed",
    ):
        body.add_column(col, justify="left" if col in ("task", "errors") else "right")
    if len(last):
        if not open_model:
            wanted = _value_at(Profile.of_load(plan.load).points(), elapsed_s)
        # Each task's row, then its request names' (indented under it).
        ordered = last.sort(
            "task", pl.col("request").is_not_null(), maintain_order=True
        ).with_columns(_store.ACHIEVED_IPS.alias("achieved_ips"))
        for row in ordered.iter_rows(named=True):
            load = (
                ""  # a request name's row: its task's load
                if row["request"] is not None
                else f"{row['target_rps'] or 0:,.0f}"
                if open_model
                else f"{row['active_users']}/{wanted:.0f}"
            )
            body.add_row(
                row["task"] if row["request"] is None else f"  └ {row['request']}",
                # A task's iterations (what its target counts), a request name's requests.
                f"{row['achieved_ips'] if row['request'] is None else row['achieved_rps']:,.0f}",
                load,
                _ms(row["p50_ms"]),
                _ms(row["p99_ms"]),
                _ms(row["service_p50_ms"]),
                _ms(row["service_p99_ms"]),
                _errors(row),
                str(row["missed"]),
            )
    else:
        body.add_row("(the first second is not closed yet)")
    title = f"{plan.name} · {plan.load.model} model · {plan.target}"
    return Panel(Group(head, body), title=title, title_align="left")


def live_progress(
    r: _run.Run,
    total_s: float,
    abort_on: list[thresholds.Threshold] | None,
    console: Console,
    stop: Callable[[Literal["stopped", "aborted"]], None],
) -> list[thresholds.Verdict]:
    """Redraws the panel about four times a second until the run ends. With ``abort_on`` the
    thresholds are checked on each closed second and the first failure stops the run (through
    ``stop``); the failing verdicts are returned."""
    seen_rows = 0
    #: The task rows of the last second closed while sending (the drain's are not shown).
    last = _store.empty_metrics()
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while True:
            ended = r.wait(0.25)
            # At the end, the run's own sending time (the planned duration, or up to a stop).
            elapsed = r.summary().duration_s if ended else r.elapsed_s
            new, seen_rows = r._rows_after(seen_rows)
            sending = _store.task_rows(new).filter(pl.col("elapsed_s") < total_s)
            if len(sending):
                last = sending.filter(pl.col("elapsed_s") == sending["elapsed_s"].max())
            live.update(panel(r, total_s, elapsed, last))
            if ended:
                return []
            if abort_on and new.height:
                failed = [
                    v for v in thresholds.evaluate(r.summary_so_far(), abort_on) if not v.passed
                ]
                if failed:
                    live.update(panel(r, total_s, elapsed, last))
                    stop("aborted")
                    return failed


def summary_table(s: Summary, verdicts: list[thresholds.Verdict]) -> Group:
    """The final summary: one row per task and overall, then the thresholds, coloured."""
    t = Table(title=f"{s.name}: {s.ended}", header_style="bold", title_justify="left")
    for col in (
        "task",
        "path",
        "requests",
        "rps",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "missed",
        "cancelled",
        "unsent",
    ):
        t.add_column(col, justify="left" if col in ("task", "path") else "right")

    def row(name: str, path: str, st: object) -> None:
        from loadpilot.summary import Stats

        assert isinstance(st, Stats)
        lat = st.latency_ms
        t.add_row(
            name,
            path,
            f"{st.requests:,}",
            f"{st.achieved_rps:,.1f}",
            _ms(lat.p50),
            _ms(lat.p99),
            _ms(lat.p999),
            _ms(lat.max),
            Text(f"{st.errors:,}", style="red" if st.errors else ""),
            f"{st.missed:,}",
            f"{st.cancelled:,}",
            f"{st.unsent:,}",
        )

    for task in s.tasks:
        row(task.name, task.path, task)
        for r in s.requests:
            if r.task == task.name:
                row(f"  └ {r.name}", "", r)
    row("all", "", s.overall)
    parts: list[Table | Text] = [t]
    if s.failures:
        parts.append(Text("failures (most frequent first):"))
        for f in s.failures[:10]:
            parts.append(Text(f"  {f.count:>10,}  {f.request} ({f.task}): {f.message}"))
        if len(s.failures) > 10:
            parts.append(Text(f"  and {len(s.failures) - 10} more in summary.json"))
    if s.validity is not None:
        judged = s.validity
        style = {"valid": "bold green", "suspect": "bold yellow", "invalid": "bold red"}
        parts.append(Text.assemble("validity: ", (judged.headline, style[judged.verdict])))
        for reason in judged.reasons:
            parts.append(Text(f"  {reason.level}: {reason.text}"))
    if verdicts:
        parts.append(Text("thresholds:"))
        for v in verdicts:
            parts.append(
                Text.assemble(
                    (
                        "  PASS  " if v.passed else "  FAIL  ",
                        "bold green" if v.passed else "bold red",
                    ),
                    v.detail,
                )
            )
    return Group(*parts)
