"""Interval logs written by other tools: read as Java HdrHistogram reads them (the values its
own tests assert on these files), analysed like runs, and percentile rows by Java's rules."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
from hdrh.histogram import HdrHistogram

import loadpilot as lp
from loadpilot import _engine
from loadpilot.analysis.spectra import hgrm
from tests.conftest import read_with_hdrh

DATA = Path(__file__).parent / "data" / "hdrhistogram"
#: Java HdrHistogram, Debian's libhdrhistogram-java (make test installs it).
JAVA_HDRHISTOGRAM = "/usr/share/java/hdrhistogram.jar"


def ns(ms: float | None) -> int:
    assert ms is not None
    return round(ms * 1e6)


@pytest.mark.parametrize(
    ("file", "start_time", "whole", "window", "in_window"),
    [
        (
            "jHiccup-2.0.7S.logV2.hlog",
            1441812279.474,
            (62, 48761, 1745879039, 1796210687),
            (5, 20),
            (15, 11664, 1536163839, 1544552447),
        ),
        (
            "jHiccup-2.0.6.logV1.hlog",
            1438867590.285,
            (88, 65964, 1829765119, 1888485375),
            (50, 80),
            (29, 22630, 1871708159, 1888485375),
        ),
        (
            "jHiccup-2.0.1.logV0.hlog",
            1438869961.225,
            (81, 61256, 1510998015, 1569718271),
            (20, 45),
            (25, 18492, 459007, 623103),
        ),
        (
            "ycsb.logV1.hlog",
            1438613579.295,
            (602, 300056, 1214463, 1546239),
            (0, 180),
            (180, 90033, 1375231, 1546239),
        ),
    ],
    ids=["jhiccup-v2", "jhiccup-v1", "jhiccup-v0", "ycsb-v1"],
)
def test_upstream_logs_give_the_counts_and_percentiles_java_asserts(
    file: str,
    start_time: float,
    whole: tuple[int, int, int, int],
    window: tuple[float, float],
    in_window: tuple[int, int, int, int],
) -> None:
    log = lp.load_hlog(DATA / file, unit="ns")
    assert log.start_time == pytest.approx(start_time, abs=1e-6)
    h = log.histogram()
    assert (len(log.interval_histograms()), h.count) == whole[:2]
    assert (ns(h.percentile(99.9)), ns(h.max)) == whole[2:]
    assert log.metrics["requests"].sum() == whole[1]
    # Java's window is [start, end] on each interval's start; none starts on an edge here.
    w = log.interval_histograms(start=window[0], end=window[1])
    hw = log.histogram(start=window[0], end=window[1])
    assert (len(w), hw.count) == in_window[:2]
    assert (ns(hw.percentile(99.9)), ns(hw.max)) == in_window[2:]


def test_a_tagged_log_has_its_tags_as_tasks() -> None:
    log = lp.load_hlog(DATA / "tagged-Log.logV2.hlog", unit="ns")
    assert log.tasks == ["untagged", "A"]
    assert len(log.interval_histograms()) == 21  # the same 21 instants, both tags added up
    assert log.histogram().count == 32290
    assert log.histogram("A") == log.histogram("untagged")
    s = log.summary()
    assert [t.name for t in s.tasks] == ["untagged", "A"] and s.overall.requests == 32290
    with pytest.raises(KeyError, match="no task named 'B'"):
        log.histogram("B")


def test_each_interval_keeps_its_own_layout() -> None:
    # The first interval of the jHiccup V2 log: max 2768895 ns in the file and in Java.
    log = lp.load_hlog(DATA / "jHiccup-2.0.7S.logV2.hlog", unit="ns")
    first = log.interval_histograms()[0][1]
    assert ns(first.max) == 2768895
    assert log.metrics["max_ms"][0] == first.max


def _write_log(path: Path, lines: list[tuple[float, HdrHistogram]], header: str = "") -> None:
    """A log written by Python's hdrh (an independent writer), start time 1000 s."""
    out = [
        "#[Histogram log format version 1.3]",
        "#[StartTime: 1000.000 (seconds since epoch)]",
        header,
        '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"',
    ]
    for start, h in lines:
        out.append(f"{start:.3f},1.000,0.0,{h.encode().decode()}")
    path.write_text("\n".join(x for x in out if x) + "\n")


def test_values_past_an_hour_in_nanoseconds_and_negative_and_gapped_intervals(
    tmp_path: Path,
) -> None:
    pause = HdrHistogram(1, 10**12, 3)
    pause.record_value(5_000_000_000)  # a 5 s pause, in ns: past 1 h of microseconds' layout
    pause.record_value(1_000, 99)
    quiet = HdrHistogram(1, 10**12, 3)
    quiet.record_value(2_000)
    path = tmp_path / "service.hlog"
    _write_log(path, [(999.5, quiet), (1000.5, pause), (1010.5, quiet)])
    log = lp.load_hlog(path, unit="ns")
    # Absolute times: offsets from the start time, the first one before it; a 9 s gap.
    assert [t for t, _ in log.interval_histograms()] == pytest.approx([-0.5, 0.5, 10.5])
    h = log.histogram()
    assert h.count == 102
    assert ns(h.max) == pause.get_max_value()
    assert ns(h.percentile(50)) == 1_000
    assert h.percentile(100) == pytest.approx(pause.get_max_value() / 1e6)
    assert log.histogram(start=0, end=5).count == 100


def test_a_bad_last_line_is_an_error_and_only_a_line_without_newline_is_torn(
    tmp_path: Path,
) -> None:
    h = HdrHistogram(1, 10**6, 3)
    h.record_value(10)
    good = tmp_path / "good.hlog"
    _write_log(good, [(0.5, h)])
    torn = tmp_path / "torn.hlog"
    torn.write_text(good.read_text() + "1.5,1.000,0.0,HISTFAAAA")
    assert lp.load_hlog(torn).histogram().count == 1
    bad = tmp_path / "bad.hlog"
    bad.write_text(good.read_text() + "1.5,1.000,0.0,HISTFAAAA\n")
    lines = len(bad.read_text().splitlines())
    with pytest.raises(lp.RunDirError, match=rf"bad\.hlog.*line {lines}"):
        lp.load_hlog(bad)


@pytest.mark.slow
def test_a_run_reads_as_a_log_with_the_same_figures(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    plan = lp.Plan(
        target=target.url,
        load=lp.OpenLoad(stages=[lp.Constant(rate=200, duration_s=2)], connections=8),
        tasks=[lp.Task(name="a", requests=[lp.Request(path="/")])],
    )
    run = lp.run(plan, tmp_path / "r")
    log = lp.load_hlog(run.path / "latency.hlog", unit="us")
    assert log.tasks == ["a"]
    assert log.histogram() == run.histogram()
    assert log.histogram().percentile(99) == run.summary().overall.latency_ms.p99
    # The same figures from a reader that is not the engine's.
    by_hdrh = HdrHistogram(1, 3_600_000_000, 3)
    for h in read_with_hdrh(run.path / "latency.hlog"):
        by_hdrh.add(h)
    assert by_hdrh.get_total_count() == run.histogram().count == 400
    assert by_hdrh.get_value_at_percentile(99) / 1000 == run.summary().overall.latency_ms.p99
    # A log and a run compare like two runs: alike with itself, and a slower run is a
    # regression against it. Slower by 25 ms a request: well above the tail a busy machine
    # gives the first run (whose p99 is its 4th slowest request: once seen at 5 ms and more).
    c = lp.compare(run, log)
    assert {ch.verdict for ch in c.changes if ch.metric != "max"} == {"no significant change"}
    with lp.start_target(delay_ms=25) as slow:
        slower = lp.run(plan.model_copy(update={"target": slow.url}), tmp_path / "slow")
    c = lp.compare(log, slower, metrics=["p50", "p99"])
    assert {ch.verdict for ch in c.changes} == {"regressed"}, c


@pytest.mark.slow
def test_hgrm_files_are_what_java_hdrhistogram_writes_for_the_same_log(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    """Each task's ``.hgrm`` against Java HdrHistogram's own ``HistogramLogProcessor`` (Debian's
    libhdrhistogram-java) reading the run's ``latency.hlog``: the same rows, line for line."""
    plan = lp.Plan(
        target=target.url,
        load=lp.OpenLoad(stages=[lp.Constant(rate=300, duration_s=3)], connections=8),
        tasks=[
            lp.Task(name="fast", weight=2, requests=[lp.Request(path="/")]),
            lp.Task(name="slow", requests=[lp.Request(path="/?delay_ms=3")]),
        ],
    )
    run = lp.run(plan, tmp_path / "r")
    lp.export(run, tmp_path / "out", formats=["hgrm"])
    for task in ("fast", "slow"):
        java = subprocess.run(
            ["java", "-cp", JAVA_HDRHISTOGRAM, "org.HdrHistogram.HistogramLogProcessor",
             "-i", str(run.path / "latency.hlog"), "-o", str(tmp_path / task), "-tag", task,
             "-outputValueUnitRatio", "1000", "-percentilesOutputTicksPerHalf", "5"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert java.returncode == 0, java.stderr
        theirs = (tmp_path / f"{task}.hgrm").read_text().splitlines()
        ours = (tmp_path / "out" / f"latency-{task}.hgrm").read_text().splitlines()
        # Java's processor adds two lines of its own first (the window and the start time).
        assert theirs[0].startswith("#[Overall percentile distribution")
        assert theirs[1].startswith("#[StartTime:")
        assert len(ours) > 30
        assert ours == theirs[2:], task


def _java_rows(h: _engine.Histogram, ticks: int) -> list[tuple[float, float, int]]:
    """Java's PercentileIterator, ported line by line over the recorded buckets: an
    independent check of the engine's rows."""
    values, counts = h.buckets()
    total = h.count
    rows: list[tuple[float, float, int]] = []
    level, running, index, fresh, reached_last = 0.0, 0, 0, True, False
    while True:
        if not running < total:
            if reached_last:
                return rows
            level, reached_last = 100.0, True
        while True:
            if index >= len(values):
                return rows
            if fresh:
                running += counts[index]
                fresh = False
            if 100.0 * running / total >= level:
                rows.append((values[index], level / 100.0, running))
                if level < 100.0:  # (at 100% Java's arithmetic goes to infinity: no step)
                    halvings = int(math.log(100.0 / (100.0 - level)) / math.log(2))
                    level += 100.0 / (ticks * 2 ** (halvings + 1))
                break
            index += 1
            fresh = True


@pytest.mark.parametrize("ticks", [1, 5, 10])
def test_percentile_rows_are_javas_and_percentile_agrees_with_them(ticks: int) -> None:
    h = _engine.Histogram()
    # 1,500 values with many ties, so running counts land exactly on q*N.
    h.record_many([0.1 * (1 + i % 300) for i in range(1500)])
    rows = h.quantiles(ticks)
    assert rows == _java_rows(h, ticks)
    levels = [q for _, q, _ in rows]
    assert 0.65 in levels or ticks != 5, "ticks are added in percent, as Java does"
    for value, q, _ in rows:
        # The row's level in percent (q * 100 can land a hair above it: 0.55 * 100).
        assert h.percentile(round(q * 100, 9)) == value, (value, q)
    text = hgrm(h, ticks=ticks)
    assert text.splitlines()[-1] == f"#[Buckets = {h.layout[0]:12d}, SubBuckets     = {2048:12d}]"


def test_a_logs_export_writes_its_percentile_distribution(tmp_path: Path) -> None:
    log = lp.load_hlog(DATA / "jHiccup-2.0.6.logV1.hlog", unit="ns")
    written = lp.export(log, tmp_path / "out", formats=["hgrm"])
    assert [p.name for p in written] == ["latency.hgrm", "latency-untagged.hgrm"]
    body = (tmp_path / "out" / "latency.hgrm").read_text()
    assert f"Total count    = {65964:12d}" in body
    with pytest.raises(lp.LoadPilotError, match="no service time"):
        log.histogram(service=True)
    with pytest.raises(lp.LoadPilotError, match="no plan"):
        _ = log.plan


def test_compare_reads_a_log_as_its_own_whole_log_figures() -> None:
    older = lp.load_hlog(DATA / "jHiccup-2.0.6.logV1.hlog", unit="ns")
    newer = lp.load_hlog(DATA / "jHiccup-2.0.7S.logV2.hlog", unit="ns")
    c = lp.compare(older, newer, metrics=["p50", "p999"])
    for ch in c.changes:
        metric = {"p50": 50.0, "p999": 99.9}[ch.metric]
        assert ch.baseline == older.histogram().percentile(metric), ch
        assert ch.candidate == newer.histogram().percentile(metric), ch
