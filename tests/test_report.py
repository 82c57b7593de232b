"""Reports: one HTML file with everything inline, safe to open offline."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import loadpilot as lp
from loadpilot import thresholds
from tests.conftest import constant, get


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
    assert 'id="lp-charts"' in page and "vegaEmbed" in page
    assert page.rstrip().endswith("</html>")


def test_run_writes_the_report_asked_for(target: lp.TargetServer, tmp_path: Path) -> None:
    f = tmp_path / "s.py"
    f.write_text(
        textwrap.dedent(
            """
            import loadpilot as lp

            @lp.scenario(profile=lp.constant(rps=50, duration="1s"), thresholds={"p99": "< 1s"})
            class S(lp.VUser):
                @lp.task
                def get(self):
                    self.client.get("/")
            """
        )
    )

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadpilot.cli",
            "run",
            str(f),
            "--target",
            target.url,
            "--out",
            str(tmp_path / "r"),
            "--report",
            str(tmp_path / "out.html"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    page = (tmp_path / "out.html").read_text()
    assert '<tr class="pass"><td>pass</td><td>p99 &lt; 1s</td>' in page
    assert f"report: {tmp_path / 'out.html'}" in done.stdout
