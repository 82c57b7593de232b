"""Reports: one self-contained HTML file (charts inline, no network) for one run or several, for
CI artefacts and for sharing. ``lp.report(run, "r.html")``, ``lp.report([base, cand], "r.html")``,
``loadpilot run ... --report FILE.html`` or ``loadpilot report RUN_DIR... -o r.html``."""

from __future__ import annotations

import datetime as dt
import functools
import html
import json
from collections.abc import Sequence
from pathlib import Path

import altair as alt

from loadpilot.analysis import charts
from loadpilot.analysis.comparing import compare
from loadpilot.analysis.logs import LoadedLog
from loadpilot.analysis.planning import capacity
from loadpilot.plan import Step
from loadpilot.running.runs import RunResult, load_run
from loadpilot.summary import Summary
from loadpilot.thresholds import Threshold, Verdict, evaluate


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.2f}"


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
        f"<td>{html.escape(v.measured)}</td></tr>"
        for v in verdicts
    )
    return f"<h2>Thresholds</h2><table><tbody>{rows}</tbody></table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 72rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child, td:nth-child(2) { text-align: left; }
tr.fail td, tr.regressed td { background: #fde2e2; }
tr.pass td, tr.improved td { background: #e5f5e5; }
pre { background: #f6f6f6; padding: 1rem; overflow-x: auto; }
.lp-chart { margin: 0.5rem 0 1.5rem; }
section.run { border-top: 2px solid #ddd; margin-top: 2rem; }
"""


@functools.cache
def _vega_bundle() -> str:
    """The Vega, Vega-Lite and vega-embed JavaScript (as Altair inlines it), once per page."""
    page: str = alt.Chart().mark_point().to_html(inline=True)
    head = page[: page.rfind("</head>")]
    start = head.find('<script type="text/javascript">')
    end = head.rfind("</script>")
    if start < 0 or end < start:
        raise RuntimeError("unexpected chart HTML from Altair")
    return head[start : end + len("</script>")]


class _Page:
    """Collects sections and charts; charts render as SVG from specs inlined in the page."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.charts = 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def chart(self, chart: alt.TopLevelMixin) -> None:
        self.charts += 1
        div = f"lp-chart-{self.charts}"
        # "</" would end the script element early: spec text (task names, run names) is data.
        spec = json.dumps(chart.to_dict()).replace("</", "<\\/")
        self.parts.append(
            f'<div class="lp-chart" id="{div}"></div><script type="text/javascript">'
            f'vegaEmbed("#{div}", {spec}, {{"renderer": "svg", "actions": false}})'
            f".catch(function (e) {{ document.getElementById('{div}').textContent = "
            f"'chart failed: ' + e; }});</script>"
        )

    def html(self, title: str) -> str:
        return (
            f"<!DOCTYPE html><html><head><meta charset='UTF-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style>{_vega_bundle()}</head><body>"
            + "".join(self.parts)
            + "</body></html>"
        )


def _started(s: Summary) -> str:
    return dt.datetime.fromtimestamp(s.started_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _log_section(
    page: _Page, log: LoadedLog, s: Summary, checks: Sequence[Threshold], level: int, label: str
) -> None:
    """A foreign interval log: what it holds, its figures per tag, spectrum and latency."""
    h, sub = f"h{level}", f"h{level + 1}"
    verdicts = evaluate(s, list(checks))
    page.add(
        f"<{h}>{'LoadPilot report: ' if level == 1 else ''}{html.escape(label)}</{h}>"
        f"<p>Interval log {html.escape(str(log.path))} · started {_started(s)} · "
        f"{s.duration_s:.1f} s · {len(log.interval_histograms())} intervals · values recorded "
        f"in {html.escape(log.unit)}, shown in ms</p>"
        + _verdicts(verdicts).replace("<h2>", f"<{sub}>").replace("</h2>", f"</{sub}>")
        + f"<{sub}>Summary</{sub}><p>Per tag; percentiles from the log's merged histograms. "
        "A log holds one latency (no service time, no errors).</p>" + s.html()
    )
    if not log.metrics.is_empty():
        if level == 1:
            page.add(f"<{sub}>Latency by percentile</{sub}>")
            page.chart(charts.spectrum_chart(log))
        page.add(f"<{sub}>Over time</{sub}>")
        page.chart(charts.latency_chart(log))


def _run_section(
    page: _Page,
    run: RunResult,
    s: Summary,
    checks: Sequence[Threshold],
    level: int,
    label: str | None = None,
) -> None:
    if isinstance(run, LoadedLog):
        _log_section(page, run, s, checks, level, label or s.name)
        return
    verdicts = evaluate(s, list(checks))
    h = f"h{level}"
    sub = f"h{level + 1}"
    heading = label or s.name
    page.add(
        f"<{h}>{'LoadPilot report: ' if level == 1 else ''}{html.escape(heading)}</{h}>"
        f"<p>Target {html.escape(run.plan.target)} · started {_started(s)} · "
        f"{s.duration_s:.1f} s of {s.planned_duration_s:.1f} s planned ({html.escape(s.ended)})"
        f" · {html.escape(s.model)} model · run directory {html.escape(str(run.path))}</p>"
        + _verdicts(verdicts).replace("<h2>", f"<{sub}>").replace("</h2>", f"</{sub}>")
        + f"<{sub}>Summary</{sub}>"
        "<p>Latency is measured from the instant each request was due (corrected for "
        "coordinated omission); service time from the instant it was sent. Percentiles come "
        "from the run's merged histograms.</p>" + s.html() + f"<{sub}>Errors</{sub}>" + _errors(s)
    )
    if run.metrics.is_empty():
        page.add("<p>No interval closed.</p>")
    else:
        if level == 1:
            page.add(f"<{sub}>Latency by percentile</{sub}>")
            page.chart(charts.spectrum_chart(run))
        page.add(f"<{sub}>Over time</{sub}>")
        page.chart(charts.rate_chart(run))
        if run.plan.load.model == "closed":
            page.chart(charts.users_chart(run))
        page.chart(charts.latency_chart(run))
        if s.overall.errors:
            page.chart(charts.errors_chart(run))
        else:
            page.add("<p>No request failed: there are no errors over time to chart.</p>")
        if any(isinstance(st, Step) for st in run.plan.load.stages):
            _capacity_section(page, run, sub)
    page.add(
        f"<details><summary>Plan</summary><pre>{html.escape(run.plan.to_json())}</pre></details>"
    )


def _capacity_section(page: _Page, run: RunResult, tag: str) -> None:
    cap = capacity(run)
    knee = cap.knee()
    page.add(
        f"<{tag}>Capacity</{tag}><p>Each level measured over its full seconds after a 1 s "
        "settle, percentiles exact per level. "
        + (
            f"Knee at {knee.offered:g} offered (p99 {_ms(knee.p99_ms)} ms, achieved "
            f"{knee.achieved_rps:,.1f}/s).</p>"
            if knee is not None
            else "No knee within the run.</p>"
        )
    )
    page.chart(charts.capacity_chart(cap))


def report(
    runs: RunResult | str | Path | Sequence[RunResult | str | Path],
    path: str | Path,
    thresholds: Sequence[Threshold] | None = None,
) -> Path:
    """Writes one self-contained HTML file to ``path`` (it opens offline: Vega is inlined).

    For one run: summary per task, thresholds (when given), errors, the percentile spectrum,
    rate, latency (corrected and service time) and errors over time, capacity per level for a
    step run, and the plan. For several (run handles or run directories): the comparison of
    each with the first (the baseline), their spectra overlaid, and each run's section."""
    items = [runs] if isinstance(runs, RunResult | str | Path) else list(runs)
    if not items:
        raise ValueError("report needs at least one run")
    resolved = [r if isinstance(r, RunResult) else load_run(r) for r in items]
    checks = list(thresholds or [])
    page = _Page()
    if len(resolved) == 1:
        summary = resolved[0].summary()
        _run_section(page, resolved[0], summary, checks, 1)
        title = summary.name
    else:
        title = f"{len(resolved)} runs"
        base = resolved[0]
        summaries = [r.summary() for r in resolved]
        listing = "".join(
            f"<li>{html.escape(s.name)}: <code>{html.escape(str(r.path))}</code>"
            f"{' (baseline)' if i == 0 else ''}</li>"
            for i, (r, s) in enumerate(zip(resolved, summaries, strict=True))
        )
        page.add(f"<h1>LoadPilot report: {title}</h1><ul>{listing}</ul>")
        page.add("<h2>Comparison with the baseline</h2>")
        for other in resolved[1:]:
            page.add(compare(base, other).html())
        page.add("<h2>Latency by percentile</h2>")
        labels = [f"{i + 1}. {r.path.name}" for i, r in enumerate(resolved)]
        page.chart(charts.spectrum_chart(resolved, labels=labels))
        for label, r, s in zip(labels, resolved, summaries, strict=True):
            # Runs of one scenario share a name: the number and directory tell them apart.
            page.add('<section class="run">')
            _run_section(page, r, s, checks, 2, label=f"{label}: {s.name}")
            page.add("</section>")
    out = Path(path)
    out.write_text(page.html(title), encoding="utf-8")
    return out
