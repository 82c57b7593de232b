"""Reports: one HTML file with everything inline, safe to open offline."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import loadpilot as lp
from loadpilot import thresholds
from tests.conftest import constant, get


@pytest.mark.slow
def test_a_report_is_one_offline_file_with_the_summary_and_charts(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    plan = lp.Plan(
        name="<b>shop</b> & co",
        target=target.url,
        load=constant(100, 2),
        tasks=[get("browse", "/json", weight=3), get("missing", "/status/404")],
    )
    run = lp.run(plan, tmp_path / "r")
    checks = thresholds.parse_all({"p99": "< 1s", "error_rate": "< 1%"})

    page = lp.report(run, tmp_path / "report.html", checks).read_text()

    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page), "nothing is fetched"
    assert "@import" not in page
    assert "&lt;b&gt;shop&lt;/b&gt; &amp; co" in page and "<b>shop</b>" not in page
    assert "<td>browse</td>" in page and "<td>150</td>" in page and "<td>50</td>" in page
    assert '<tr class="pass"><td>pass</td><td>p99 &lt; 1s</td>' in page
    assert '<tr class="fail"><td>FAIL</td><td>error_rate &lt; 1%</td>' in page
    assert "<li>status: 50</li>" in page
    assert 'id="lp-chart-1"' in page and "vegaEmbed" in page
    assert page.rstrip().endswith("</html>")


@pytest.mark.parametrize(
    ("checks", "code", "word"),
    [
        ('{"p99": "< 1s"}', 0, "PASS"),
        ('{"p99": "< 1s", "p50": "< 0.001ms"}', 1, "FAIL"),
        ("None", 0, "DONE"),
    ],
)
def test_a_run_s_report_opens_on_what_its_exit_code_says(
    browser: Any, target: lp.TargetServer, tmp_path: Path, checks: str, code: int, word: str
) -> None:
    f = tmp_path / "s.py"
    f.write_text(
        textwrap.dedent(
            f"""
            import loadpilot as lp

            @lp.scenario(profile=lp.constant(rps=50, duration="1s"), thresholds={checks})
            class S(lp.VUser):
                @lp.task
                def get(self):
                    self.client.get("/")
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "loadpilot.cli", "run", str(f), "--target", target.url,
         "--out", str(tmp_path / "r"), "--report", str(tmp_path / "out.html")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == code, done.stdout + done.stderr
    assert f"report: {tmp_path / 'out.html'}" in done.stdout
    page = (tmp_path / "out.html").read_text()
    if word != "DONE":
        assert '<tr class="pass"><td>pass</td><td>p99 &lt; 1s</td>' in page
    if word == "FAIL":
        # The failed threshold and its measured value in the banner, the passed one counted.
        assert re.search(r"<li>p50 &lt; 0.001ms: measured [\d.]+ ms</li>", page), page[:3000]
        assert "<li>1 of 2 thresholds passed</li>" in page
    seen = render_offline(browser, tmp_path / "out.html")
    assert seen["state"] == word and seen["first_screen"], seen
    assert seen["errors"] == [] and seen["failed"] == 0, seen


def render_offline(browser: Any, page_file: Path, screenshot: Path | None = None) -> dict[str, Any]:
    """Opens ``page_file`` in headless Chromium with every non-file request refused, waits for
    its charts, and returns what rendered: data marks per chart, refused requests, console
    errors."""
    refused: list[str] = []
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()

    def route(r: Any) -> None:
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_file.as_uri())
    charts = page.eval_on_selector_all(".lp-chart", "els => els.length")
    page.wait_for_function(
        "n => document.querySelectorAll('.lp-chart svg.marks').length === n",
        arg=charts,
        timeout=30_000,
    )
    marks = page.eval_on_selector_all(
        ".lp-chart",
        """els => els.map(e => e.querySelectorAll(
            'g.mark-line path, g.mark-symbol path, g.mark-rect path, g.mark-rule line'
        ).length)""",
    )
    failed = page.eval_on_selector_all(
        ".lp-chart", "els => els.filter(e => e.textContent.includes('chart failed')).length"
    )
    dashed_legend = page.eval_on_selector_all(
        "g.role-legend-symbol path[stroke-dasharray]", "els => els.length"
    )
    # The first screen: the banner's word, and whether the banner and the first table of key
    # figures lie wholly within the first 900 pixels; each chart's width against the page's.
    first = page.evaluate(
        """() => {
            const bottom = s => { const e = document.querySelector(s);
                                  return e ? e.getBoundingClientRect().bottom : Infinity; };
            const state = document.querySelector('.lp-banner .lp-state');
            return {state: state ? state.textContent : null,
                    banner: bottom('.lp-banner'), glance: bottom('table.lp-glance'),
                    body: document.body.clientWidth};
        }"""
    )
    widths = page.eval_on_selector_all(
        ".lp-chart svg.marks", "els => els.map(e => e.getBoundingClientRect().width)"
    )
    if screenshot is not None:
        page.screenshot(path=str(screenshot), full_page=True)
    context.close()
    return {
        "charts": charts,
        "marks": marks,
        "refused": refused,
        "errors": errors,
        "failed": failed,
        "dashed_legend": dashed_legend,
        "state": first["state"],
        "first_screen": first["banner"] <= 900 and first["glance"] <= 900,
        # each chart's share of the page's width (its margins taken out)
        "widths": [w / first["body"] for w in widths],
    }


@pytest.mark.slow
def test_a_report_renders_its_charts_in_chromium_with_the_network_off(
    browser: Any, target: lp.TargetServer, tmp_path: Path
) -> None:
    plan = lp.Plan(
        name="offline",
        target=target.url,
        load=constant(200, 3),
        tasks=[get("browse", "/json"), get("missing", "/status/500")],
    )
    run = lp.run(plan, tmp_path / "r")
    seen = render_offline(browser, run.report(tmp_path / "one.html"))
    assert seen["refused"] == [] and seen["errors"] == [] and seen["failed"] == 0, seen
    # spectrum, rate, latency, errors: each drew marks from data
    assert seen["charts"] == 4 and all(n > 0 for n in seen["marks"]), seen
    # The first screen says it failed (requests failed and no threshold judged them: exit 3)
    # above the key figures; the charts span the page.
    assert seen["state"] == "FAIL" and seen["first_screen"], seen
    assert all(w > 0.85 for w in seen["widths"]), seen


@pytest.mark.slow
def test_a_report_of_several_runs_compares_them_and_renders_offline(
    browser: Any, tmp_path: Path
) -> None:
    dirs = []
    for i, delay in enumerate((1.0, 4.0)):
        with lp.start_target(delay_ms=delay) as t:
            plan = lp.Plan(name=f"v{i}", target=t.url, load=constant(150, 2), tasks=[get("home")])
            dirs.append(lp.run(plan, tmp_path / f"run{i}").path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadpilot.cli",
            "report",
            *map(str, dirs),
            "-o",
            str(tmp_path / "both.html"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    page = (tmp_path / "both.html").read_text()
    assert "Comparison with the baseline" in page and '<tr class="regressed">' in page
    assert "<h2>1. run0: v0</h2>" in page and "<h2>2. run1: v1</h2>" in page
    # Nothing failed: a sentence for each run instead of an empty errors chart.
    assert page.count("No request failed") == 2
    # What changed, first: the candidate's latency verdict in the banner, its row marked.
    assert re.search(r"<li>2\. run1 against 1\. run0: p\d+ regressed \+", page), page[:3000]
    assert '<tr class="regressed"><td>2. run1: v1</td>' in page
    seen = render_offline(browser, tmp_path / "both.html")
    assert seen["refused"] == [] and seen["errors"] == [] and seen["failed"] == 0, seen
    # the overlaid spectrum, then rate and latency of each run
    assert seen["charts"] == 5 and all(n > 0 for n in seen["marks"]), seen
    assert seen["state"] == "REGRESSED" and seen["first_screen"], seen
    assert all(w > 0.85 for w in seen["widths"]), seen


@pytest.mark.slow
def test_two_closed_model_runs_of_one_scenario_read_apart_in_a_report(
    browser: Any, target: lp.TargetServer, tmp_path: Path
) -> None:
    plan = lp.Plan(
        name="Shop",
        target=target.url,
        load=lp.ClosedLoad(
            stages=[lp.Ramp(from_=0, to=6, duration_s=2), lp.Constant(rate=6, duration_s=2)],
            think_s=0.05,
        ),
        tasks=[get("browse", "/json")],
    )
    runs = [lp.run(plan, tmp_path / name) for name in ("monday", "tuesday")]
    page_file = lp.report(runs, tmp_path / "closed.html")
    page = page_file.read_text()
    assert "<h2>1. monday: Shop</h2>" in page and "<h2>2. tuesday: Shop</h2>" in page
    assert page.count("Virtual users") == 2 and "Achieved rate" in page
    seen = render_offline(browser, page_file, screenshot=tmp_path / "closed.png")
    assert seen["refused"] == [] and seen["errors"] == [] and seen["failed"] == 0, seen
    # the spectrum, then for each run its rate, its users and its latency
    assert seen["charts"] == 7 and all(n > 0 for n in seen["marks"]), seen
    assert (tmp_path / "closed.png").stat().st_size > 10_000
    # The legend of "measured from" draws strokes, one of them dashed, not two like dots.
    assert seen["dashed_legend"] >= 1, seen


def test_a_report_of_two_foreign_logs_compares_them_and_renders_offline(
    browser: Any, tmp_path: Path
) -> None:
    data = Path(__file__).parent / "data" / "hdrhistogram"
    logs = [
        lp.load_hlog(data / "jHiccup-2.0.6.logV1.hlog", unit="ns"),
        lp.load_hlog(data / "jHiccup-2.0.7S.logV2.hlog", unit="ns"),
    ]
    page_file = lp.report(logs, tmp_path / "logs.html")
    page = page_file.read_text()
    assert "Comparison with the baseline" in page
    assert page.count("values recorded in ns, shown in ms") == 2
    assert "65,964" in page and "48,761" in page  # the counts Java HdrHistogram gives
    seen = render_offline(browser, page_file)
    assert seen["refused"] == [] and seen["errors"] == [] and seen["failed"] == 0, seen
    # the overlaid spectrum, then each log's latency over time
    assert seen["charts"] == 3 and all(n > 0 for n in seen["marks"]), seen
    one = lp.report(logs[0], tmp_path / "one.html").read_text()
    assert "LoadPilot report: jHiccup-2.0.6.logV1.hlog" in one and "Latency by percentile" in one
