"""JUnit XML of a run's verdicts and of a comparison, so CI systems (GitLab, Jenkins, GitHub's
test reporters) show a load test's results as they show tests: ``loadpilot run ... --junit
FILE.xml`` and ``loadpilot compare ... --junit FILE.xml``.

A run is one test suite: one test case per threshold (failed: the measured value against the
limit), one per task (failed: requests that failed with no error-rate threshold to judge them, or
due requests never sent: what makes ``loadpilot run`` exit 3) and one for how the run ended. A
comparison is one test case per metric compared (failed: regressed)."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from loadpilot.analysis.comparing import Comparison
from loadpilot.summary import Stats, Summary
from loadpilot.thresholds import Verdict, unjudged

#: How a run may end and still pass (a feeder that ran out ends a run as planned).
_ENDED_OK = ("completed", "exhausted")


def _case(suite: ET.Element, classname: str, name: str, failure: str | None, out: str = "") -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
    if failure is not None:
        f = ET.SubElement(case, "failure", message=failure, type="loadpilot")
        f.text = failure
    if out:
        ET.SubElement(case, "system-out").text = out


def _figures(s: Stats) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f} ms"

    return (
        f"requests {s.requests}, errors {s.errors} ({s.error_rate:.3%}), cancelled "
        f"{s.cancelled}, unsent {s.unsent}, missed {s.missed}, {s.achieved_rps:.1f} req/s; "
        f"latency p50 {ms(s.latency_ms.p50)}, p99 {ms(s.latency_ms.p99)}, "
        f"max {ms(s.latency_ms.max)}; service p99 {ms(s.service_ms.p99)}"
    )


def _write(suites: ET.Element, path: Path) -> Path:
    tree = ET.ElementTree(suites)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return path


def _totals(suites: ET.Element, suite: ET.Element) -> None:
    cases = suite.findall("testcase")
    failures = sum(1 for c in cases if c.find("failure") is not None)
    for e in (suites, suite):
        e.set("tests", str(len(cases)))
        e.set("failures", str(failures))
        e.set("errors", "0")


def run_junit(s: Summary, verdicts: Sequence[Verdict], path: Path, run_dir: Path) -> Path:
    """Writes the JUnit XML of a run's summary and threshold verdicts to ``path``."""
    suites = ET.Element("testsuites", name="loadpilot")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"loadpilot run {s.name}",
        timestamp=dt.datetime.fromtimestamp(s.started_at, dt.UTC).isoformat(timespec="seconds"),
        time=f"{s.duration_s + s.drain_s:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (("run_directory", str(run_dir)), ("ended", s.ended)):
        ET.SubElement(props, "property", name=key, value=value)
    for v in verdicts:
        limit = v.threshold.text.strip()
        _case(
            suite,
            "thresholds",
            f"{v.threshold.name} {limit}",
            None if v.passed else f"{v.threshold.name} measured {v.measured}, limit {limit}",
        )
    for t in s.tasks:
        why = unjudged(t, verdicts, s.ended)
        _case(suite, "tasks", t.name, "; ".join(why) or None, _figures(t))
    _case(
        suite,
        "run",
        "ended as planned",
        None if s.ended in _ENDED_OK else f"the run ended {s.ended} after {s.duration_s:.2f} s",
        _figures(s.overall),
    )
    _totals(suites, suite)
    return _write(suites, path)


def compare_junit(c: Comparison, path: Path) -> Path:
    """Writes the JUnit XML of a comparison to ``path``: one test case per metric compared,
    failed where it regressed."""
    suites = ET.Element("testsuites", name="loadpilot")
    suite = ET.SubElement(
        suites, "testsuite", name=f"loadpilot compare {c.baseline} {c.candidate}", time="0"
    )
    for ch in c.changes:
        where = ch.task if ch.request is None else f"{ch.task} {ch.request}"
        _case(
            suite,
            f"compare.{where}",
            ch.metric,
            ch.describe() if ch.verdict == "regressed" else None,
            ch.describe(),
        )
    _totals(suites, suite)
    return _write(suites, path)
