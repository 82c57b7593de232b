"""Reports: one self-contained HTML file per run (charts inline, no network), for CI artefacts
and for sharing. ``lp.report(run, "report.html")`` or ``loadpilot run ... --report FILE.html``."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from pathlib import Path

import altair as alt
import polars as pl

from loadpilot.runs import RunResult
from loadpilot.summary import Stats, Summary
from loadpilot.thresholds import Threshold, Verdict, evaluate


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.2f}"


def _stats_row(name: str, path: str, s: Stats) -> str:
    cells = [
        html.escape(name),
        html.escape(path),
        f"{s.requests:,}",
        f"{s.errors:,}",
        f"{s.error_rate * 100:.3g}%",
        f"{s.achieved_rps:,.1f}",
        *(_ms(getattr(s.latency_ms, k)) for k in ("p50", "p90", "p99", "p999", "max")),
        _ms(s.service_ms.p99),
        f"{s.missed:,}",
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _summary_table(s: Summary) -> str:
    head = [
        "task", "path", "requests", "errors", "error rate", "req/s", "p50 ms", "p90 ms",
        "p99 ms", "p99.9 ms", "max ms", "service p99 ms", "missed",
    ]  # fmt: skip
    rows = [_stats_row(t.name, t.path, t) for t in s.tasks]
    rows.append(_stats_row("all", "", s.overall))
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _errors(s: Summary) -> str:
    kinds = {k: n for k, n in s.overall.errors_by_kind.items() if n}
    if not kinds:
        return "<p>No failed requests.</p>"
    items = "".join(f"<li>{html.escape(k)}: {n:,}</li>" for k, n in sorted(kinds.items()))
    return f"<ul>{items}</ul>"


def _verdicts(verdicts: Sequence[Verdict]) -> str:
    if not verdicts:
        return ""
    rows = "".join(
        f'<tr class="{"pass" if v.passed else "fail"}"><td>{"pass" if v.passed else "FAIL"}</td>'
        f"<td>{html.escape(v.threshold.name)} {html.escape(v.threshold.text.strip())}</td>"
        f"<td>{html.escape(str(v).split('(actual ', 1)[-1].rstrip(')'))}</td></tr>"
        for v in verdicts
    )
    return f"<h2>Thresholds</h2><table><tbody>{rows}</tbody></table>"


def _charts(m: pl.DataFrame) -> alt.VConcatChart | None:
    if m.is_empty():
        return None
    frame = m.select(
        "elapsed_s", "task", "achieved_rps", "target_rps", "p50_ms", "p99_ms", "max_ms",
        "service_p99_ms", "errors",
    )  # fmt: skip
    rate = (
        frame.unpivot(index=["elapsed_s", "task"], on=["achieved_rps", "target_rps"])
        .drop_nulls("value")
        .rename({"variable": "series"})
    )
    latency = frame.unpivot(
        index=["elapsed_s", "task"], on=["p50_ms", "p99_ms", "max_ms", "service_p99_ms"]
    ).rename({"variable": "series"})
    x = alt.X("elapsed_s:Q", title="seconds")
    rate_chart = (
        alt.Chart(rate)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("value:Q", title="requests per second"),
            color=alt.Color("task:N"),
            strokeDash=alt.StrokeDash("series:N", title="rate"),
            tooltip=["elapsed_s", "task", "series", "value"],
        )
        .properties(title="Achieved vs target rate", width=640, height=200)
    )
    latency_chart = (
        alt.Chart(latency)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("value:Q", title="ms"),
            color=alt.Color("series:N", title="latency"),
            strokeDash=alt.StrokeDash("task:N"),
            tooltip=["elapsed_s", "task", "series", "value"],
        )
        .properties(title="Latency per second (corrected; service p99)", width=640, height=240)
    )
    errors_chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(x=x, y=alt.Y("errors:Q", title="errors"), color="task:N")
        .properties(title="Errors per second", width=640, height=120)
    )
    charts: alt.VConcatChart = alt.vconcat(rate_chart, latency_chart, errors_chart)
    resolved: alt.VConcatChart = charts.resolve_scale(color="independent", strokeDash="independent")
    return resolved


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child, td:nth-child(2) { text-align: left; }
tr.fail td { background: #fde2e2; } tr.pass td { background: #e5f5e5; }
pre { background: #f6f6f6; padding: 1rem; overflow-x: auto; }
"""


def report(run: RunResult, path: str | Path, thresholds: Sequence[Threshold] | None = None) -> Path:
    """Writes ``run``'s report to ``path``: summary per task, thresholds (when given), charts
    of rate, latency and errors over time, and the plan. One file that opens offline."""
    s = run.summary()
    verdicts = evaluate(s, list(thresholds or []))
    started = dt.datetime.fromtimestamp(s.started_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = (
        f"<h1>LoadPilot report: {html.escape(s.name)}</h1>"
        f"<p>Target {html.escape(run.plan.target)} · started {started} · "
        f"{s.duration_s:.1f} s of {s.planned_duration_s:.1f} s planned ({html.escape(s.ended)})"
        f" · {html.escape(s.model)} model · run directory {html.escape(str(run.path))}</p>"
        + _verdicts(verdicts)
        + "<h2>Summary</h2>"
        + "<p>Latency is measured from the instant each request was due (corrected for "
        "coordinated omission); service time from the instant it was sent. Percentiles come "
        "from the run's merged histograms.</p>"
        + _summary_table(s)
        + "<h2>Errors</h2>"
        + _errors(s)
        + "<h2>Over time</h2>"
    )
    tail = f"<h2>Plan</h2><pre>{html.escape(run.plan.to_json())}</pre>"
    chart = _charts(run.metrics)
    if chart is None:
        page = (
            f"<!DOCTYPE html><html><head><meta charset='UTF-8'><style>{_STYLE}</style></head>"
            f"<body>{body}<p>No interval closed.</p>{tail}</body></html>"
        )
    else:
        page = chart.to_html(inline=True, output_div="lp-charts")
        # The inlined JavaScript holds tag-like strings of its own, so the insertion points are
        # found from the chart's div and the document's last closing tag, not the first match.
        div = page.rfind('<div class="vega-visualization" id="lp-charts">')
        end = page.rfind("</body>")
        if div < 0 or end < div:
            raise RuntimeError("unexpected chart HTML from Altair")
        head = f"<head>\n<title>{html.escape(s.name)}</title><style>{_STYLE}</style>"
        page = page[:div] + body + page[div:end] + tail + page[end:]
        page = page.replace("<head>", head, 1)
    out = Path(path)
    out.write_text(page, encoding="utf-8")
    return out
