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
from typing import Any

import altair as alt

from loadpilot.analysis import charts, traces
from loadpilot.analysis.comparing import Comparison, compare
from loadpilot.analysis.logs import LoadedLog
from loadpilot.analysis.planning import capacity
from loadpilot.plan import Step
from loadpilot.running.runs import RunResult, load_run
from loadpilot.summary import Stats, Summary
from loadpilot.thresholds import Threshold, Verdict, evaluate, unjudged


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
body { font-family: system-ui, sans-serif; margin: 2rem auto; padding: 0 2rem; color: #222;
       max-width: 80rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child, td:nth-child(2) { text-align: left; }
tr.fail td, tr.regressed td { background: #fde2e2; }
tr.pass td, tr.improved td { background: #e5f5e5; }
pre { background: #f6f6f6; padding: 1rem; overflow-x: auto; }
.lp-chart { margin: 0.5rem 0 1.5rem; width: 100%; overflow-x: auto; }
section.run { border-top: 2px solid #ddd; margin-top: 2rem; }
.lp-banner { display: flex; gap: 1.5rem; align-items: flex-start; padding: 1rem 1.5rem;
             border-radius: 6px; border: 2px solid; margin-bottom: 1.5rem; }
.lp-banner h1 { margin: 0 0 0.25rem; font-size: 1.4rem; }
.lp-banner p { margin: 0.25rem 0; }
.lp-banner ul { margin: 0.5rem 0 0; padding-left: 1.2rem; }
.lp-state { font-size: 2rem; font-weight: 700; letter-spacing: 0.05em; min-width: 9rem; }
.lp-banner.fail { background: #fde2e2; border-color: #c62828; }
.lp-banner.fail .lp-state { color: #b71c1c; }
.lp-banner.pass { background: #e5f5e5; border-color: #2e7d32; }
.lp-banner.pass .lp-state { color: #1b5e20; }
.lp-banner.invalid { background: #fff0d9; border-color: #e65100; }
.lp-banner.invalid .lp-state { color: #bf360c; }
.lp-banner.neutral { background: #eef2f7; border-color: #607d8b; }
.lp-banner.neutral .lp-state { color: #37474f; }
table.lp-glance td, table.lp-glance th { font-size: 1.05rem; padding: 0.35rem 0.8rem; }
table.lp-glance td:nth-child(2) { text-align: right; }
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


#: The plot width of a chart made of several (a capacity chart's two panels), in pixels: a single
#: chart takes its container's width instead.
_CONCAT_WIDTH = 980


def _full_width(spec: dict[str, Any]) -> dict[str, Any]:
    """A chart spec drawn across the page: a single (or layered) chart fits its container's
    width; the panels of a concatenated one get a wide fixed width (Vega-Lite sizes a
    concatenation's panels one by one, not from the container)."""
    panels = [k for k in ("vconcat", "hconcat", "concat") if k in spec]
    if not panels:
        return {**spec, "width": "container", "autosize": {"type": "fit-x", "contains": "padding"}}
    return {
        **spec,
        **{
            k: [{**p, "width": _CONCAT_WIDTH} if "width" in p else p for p in spec[k]]
            for k in panels
        },
    }


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
        spec = json.dumps(_full_width(chart.to_dict())).replace("</", "<\\/")
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


def _outcome(s: Summary, verdicts: Sequence[Verdict]) -> tuple[str, list[str]]:
    """A run's state as its exit code judges it (``invalid`` when it measured the generator,
    ``pass``, ``fail``, or ``neutral`` when no threshold was given and nothing failed) and the
    lines that say why."""
    failed = [v for v in verdicts if not v.passed]
    unjudged_failures = unjudged(s.overall, verdicts, s.ended)
    why = [f"{v.threshold.name} {v.threshold.text.strip()}: measured {v.measured}" for v in failed]
    why += unjudged_failures
    if s.ended not in ("completed", "exhausted"):
        why.append(
            f"the run ended early ({s.ended.replace('_', ' ')}) after {s.duration_s:.1f} s of "
            f"{s.planned_duration_s:.1f} s planned"
        )
    v = s.validity
    if v is not None and v.verdict == "invalid":
        return "invalid", [
            f"the run measured the load generator, not the system ({v.headline})",
            *(r.text for r in v.reasons if r.level != "info"),
            *why,
        ]
    if v is not None and v.reasons:
        why += [f"{v.headline}: {r.text}" for r in v.reasons]
    if failed or unjudged_failures:
        if len(failed) < len(verdicts):
            why.append(f"{len(verdicts) - len(failed)} of {len(verdicts)} thresholds passed")
        return "fail", why
    if verdicts:
        return "pass", [f"{len(verdicts)} threshold{'s' * (len(verdicts) != 1)} passed", *why]
    return "neutral", [
        "no thresholds were given; no request failed and every due request was sent",
        *why,
    ]


_STATE = {"pass": "PASS", "fail": "FAIL", "neutral": "DONE", "invalid": "INVALID"}


def _banner(state: str, label: str, title: str, facts: str, lines: Sequence[str]) -> str:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return (
        f'<header class="lp-banner {state}"><div class="lp-state">{html.escape(label)}</div>'
        f"<div><h1>{html.escape(title)}</h1><p>{facts}</p><ul>{items}</ul></div></header>"
    )


def _glance_row(name: str, st: Stats, change: str | None = None) -> str:
    """Key figures; ``change``: a run's verdict against the baseline, a last cell and the
    row's class."""
    cells = [
        html.escape(name),
        f"{st.requests:,}",
        f"{st.achieved_rps:,.1f}",
        *(_ms(getattr(st.latency_ms, k)) for k in ("p50", "p99", "p999", "max")),
        f"{st.errors:,} ({st.error_rate * 100:.3g}%)",
    ]
    if change is None:
        return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
    cells.append(html.escape(change))
    marked = f' class="{change}"' if change in ("regressed", "improved") else ""
    return f"<tr{marked}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


_GLANCE_HEAD = ["requests", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"]


def _glance(s: Summary) -> str:
    """One row per task and one for all: the figures people read first (latency corrected for
    coordinated omission)."""
    rows = [_glance_row(t.name, t) for t in s.tasks] + [_glance_row("all", s.overall)]
    head = "".join(f"<th>{h}</th>" for h in ["task", *_GLANCE_HEAD])
    return (
        f'<table class="lp-glance"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
        "</tbody></table>"
    )


def _facts(run: RunResult, s: Summary) -> str:
    return (
        f"Target {html.escape(run.plan.target)} · started {_started(s)} · "
        f"{s.duration_s:.1f} s of {s.planned_duration_s:.1f} s planned ({html.escape(s.ended)})"
        f" · {html.escape(s.model)} model · run directory {html.escape(str(run.path))}"
    )


def _run_section(
    page: _Page,
    run: RunResult,
    s: Summary,
    checks: Sequence[Threshold],
    level: int,
    label: str | None = None,
) -> None:
    """A run: at level 1 (a report of this run alone) its first screen is a banner with the
    verdict and a table of the key figures, then the charts at full width, then the detail."""
    if isinstance(run, LoadedLog):
        _log_section(page, run, s, checks, level, label or s.name)
        return
    verdicts = evaluate(s, list(checks))
    h = f"h{level}"
    sub = f"h{level + 1}"
    heading = label or s.name
    if level == 1:
        state, lines = _outcome(s, verdicts)
        page.add(
            _banner(state, _STATE[state], f"LoadPilot report: {heading}", _facts(run, s), lines)
        )
    else:
        page.add(f"<{h}>{html.escape(heading)}</{h}><p>{_facts(run, s)}</p>")
    page.add(_glance(s))
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
        f"<{sub}>Detail</{sub}>"
        + _verdicts(verdicts).replace("<h2>", f"<{sub}>").replace("</h2>", f"</{sub}>")
        + f"<{sub}>Summary</{sub}>"
        "<p>Latency is measured from the instant each request was due (corrected for "
        "coordinated omission); service time from the instant it was sent. Percentiles come "
        "from the run's merged histograms.</p>"
        + s.html()
        + f"<{sub}>Errors</{sub}>"
        + _errors(s)
        + traces.html_section(run, 10, f"<{sub}>Slowest requests</{sub}>")
    )
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


def _several(
    page: _Page, resolved: Sequence[RunResult], checks: Sequence[Threshold], title: str
) -> None:
    """Several runs: a banner with each comparison's verdict against the first (the baseline)
    and each run's thresholds, a row of key figures per run, the spectra overlaid, then the
    comparison tables and each run's section."""
    base = resolved[0]
    summaries = [r.summary() for r in resolved]
    labels = [f"{i + 1}. {r.path.name}" for i, r in enumerate(resolved)]
    comparisons: list[Comparison] = [compare(base, other) for other in resolved[1:]]
    outcomes = [_outcome(s, evaluate(s, list(checks))) for s in summaries]
    lines = [
        f"{label} against {labels[0]}: {c.verdict()}"
        for label, c in zip(labels[1:], comparisons, strict=True)
    ]
    for label, (state, why) in zip(labels, outcomes, strict=True):
        if state in ("fail", "invalid"):
            lines += [f"{label}: {w}" for w in why]
    changes = ["baseline"] + [
        "regressed" if c.regressed else "improved" if c.improvements else "no significant change"
        for c in comparisons
    ]
    if any(state == "invalid" for state, _ in outcomes):
        # A comparison with a run that measured its generator compares nothing.
        state, word = "invalid", "INVALID"
    elif "regressed" in changes:
        state, word = "fail", "REGRESSED"
    elif any(state == "fail" for state, _ in outcomes):
        state, word = "fail", "FAIL"
    elif "improved" in changes:
        state, word = "pass", "IMPROVED"
    else:
        state, word = "neutral", "NO CHANGE"
    listing = ", ".join(
        f"{html.escape(label)}: {html.escape(s.name)} (<code>{html.escape(str(r.path))}</code>"
        f"{', baseline' if i == 0 else ''})"
        for i, (label, r, s) in enumerate(zip(labels, resolved, summaries, strict=True))
    )
    page.add(_banner(state, word, f"LoadPilot report: {title}", listing, lines))
    rows = "".join(
        _glance_row(f"{label}: {s.name}", s.overall, change)
        for label, s, change in zip(labels, summaries, changes, strict=True)
    )
    head = "".join(f"<th>{h}</th>" for h in ["run", *_GLANCE_HEAD, "against the baseline"])
    page.add(
        f'<table class="lp-glance"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
    )
    page.add("<h2>Latency by percentile</h2>")
    page.chart(charts.spectrum_chart(list(resolved), labels=labels))
    page.add("<h2>Comparison with the baseline</h2>")
    for c in comparisons:
        page.add(c.html())
    for label, r, s in zip(labels, resolved, summaries, strict=True):
        # Runs of one scenario share a name: the number and directory tell them apart.
        page.add('<section class="run">')
        _run_section(page, r, s, checks, 2, label=f"{label}: {s.name}")
        page.add("</section>")


def report(
    runs: RunResult | str | Path | Sequence[RunResult | str | Path],
    path: str | Path,
    thresholds: Sequence[Threshold] | None = None,
) -> Path:
    """Writes one self-contained HTML file to ``path`` (it opens offline: Vega is inlined).

    For one run, its first screen answers "did it pass": a banner with the verdict its exit code
    gives (thresholds, when given; requests that failed or were never sent) and one row of key
    figures per task; then the percentile spectrum, rate, latency (corrected and service time)
    and errors over time at full width, capacity per level for a step run; then the detail
    (thresholds, the whole summary, errors, the plan). For several (run handles or run
    directories), "what changed": a banner with each comparison's verdict against the first
    (the baseline), a row per run, their spectra overlaid, then the comparison tables and each
    run's section."""
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
        _several(page, resolved, checks, title)
    out = Path(path)
    out.write_text(page.html(title), encoding="utf-8")
    return out
