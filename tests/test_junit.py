"""`--junit FILE` on `loadpilot run` and `loadpilot compare`: JUnit XML that CI systems read,
checked with an independent reader (junitparser) against what the run and the comparison said."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from junitparser import Failure, JUnitXml

import loadpilot as lp

ROOT = Path(__file__).resolve().parent.parent

SCENARIO = """
import loadpilot as lp

@lp.scenario(profile=lp.constant(rps=50, duration="2s"))
class Shop(lp.VUser):
    @lp.task(weight=3)
    def browse(self):
        self.client.get("/json")

    @lp.task
    def broken(self):
        self.client.get("/status/500")
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadpilot.cli", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip


def cases(path: Path) -> dict[tuple[str, str], str | None]:
    """(classname, name) of every test case, with its failure's message (None: passed)."""
    out: dict[tuple[str, str], str | None] = {}
    for suite in JUnitXml.fromfile(str(path)):
        for case in suite:
            failures = [r for r in case.result if isinstance(r, Failure)]
            out[(case.classname, case.name)] = failures[0].message if failures else None
    return out


@pytest.mark.slow
def test_a_runs_junit_has_a_case_per_threshold_per_task_and_for_its_end(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    (tmp_path / "shop.py").write_text(textwrap.dedent(SCENARIO))
    # A file that cannot be written is refused before anything is sent.
    done = cli("run", "shop.py", "--target", target.url, "--junit", "no/j.xml", cwd=tmp_path)
    assert done.returncode == 2 and "--junit no/j.xml: directory no does not exist" in done.stderr
    assert target.served == 0
    (tmp_path / "out").mkdir()
    done = cli(
        "run", "shop.py", "--target", target.url, "--out", "r", "--junit", "out/junit.xml",
        "--threshold", "p99<10s", "--threshold", "browse.p50<0.001ms", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr  # a threshold failed
    assert f"junit: {Path('out/junit.xml')}" in done.stdout
    s = lp.load_run(tmp_path / "r").summary()
    got = cases(tmp_path / "out" / "junit.xml")
    assert set(got) == {
        ("thresholds", "p99 < 10s"),
        ("thresholds", "browse.p50 < 0.001ms"),
        ("tasks", "browse"),
        ("tasks", "broken"),
        ("run", "ended as planned"),
    }
    assert got[("thresholds", "p99 < 10s")] is None
    failed = got[("thresholds", "browse.p50 < 0.001ms")]
    p50 = s.task("browse").latency_ms.p50
    assert failed == f"browse.p50 measured {p50:.3f} ms, limit < 0.001ms", failed
    assert got[("tasks", "browse")] is None
    # Every request of "broken" failed, and no error-rate threshold judged them.
    assert got[("tasks", "broken")] == "requests failed: status 25"
    assert got[("run", "ended as planned")] is None
    suite = next(iter(JUnitXml.fromfile(str(tmp_path / "out" / "junit.xml"))))
    assert (suite.tests, suite.failures, suite.errors) == (5, 2, 0)


@pytest.mark.slow
def test_an_error_rate_threshold_judges_the_failed_requests(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    (tmp_path / "shop.py").write_text(textwrap.dedent(SCENARIO))
    done = cli(
        "run", "shop.py", "--target", target.url, "--out", "r", "--junit", "j.xml",
        "--threshold", "error_rate<50%", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    got = cases(tmp_path / "j.xml")
    assert got[("thresholds", "error_rate < 50%")] is None
    assert got[("tasks", "broken")] is None and got[("tasks", "browse")] is None


def test_a_comparisons_junit_fails_exactly_the_regressed_metrics(tmp_path: Path) -> None:
    base, cand = ROOT / "datasets" / "baseline", ROOT / "datasets" / "regressed"
    done = cli("compare", str(base), str(cand), "--json", "--junit", "c.xml", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    changes = json.loads(done.stdout)["changes"]
    got = cases(tmp_path / "c.xml")
    assert len(got) == len(changes)
    regressed = {
        (f"compare.{c['task']}" + (f" {c['request']}" if c.get("request") else ""), c["metric"])
        for c in changes
        if c["verdict"] == "regressed"
    }
    assert regressed and {k for k, v in got.items() if v is not None} == regressed
    assert all("regressed" in (got[k] or "") for k in regressed)
