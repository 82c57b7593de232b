"""Exact percentiles of windows and task subsets, percentile spectra, and exports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import loadpilot as lp
from loadpilot.analysis.spectra import hgrm
from tests.conftest import constant, get


@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory: pytest.TempPathFactory) -> lp.Run:
    out = tmp_path_factory.mktemp("an") / "run"
    with lp.start_target(delay_ms=1, delay_max_ms=6, seed=3) as t:
        plan = lp.Plan(
            name="mix",
            target=t.url,
            load=constant(300, 4),
            tasks=[get("a", "/", weight=3), get("b", "/json", weight=2), get("c", "/echo")],
        )
        return lp.run(plan, out)


@pytest.mark.slow
def test_window_and_task_percentiles_come_from_added_histograms(three_tasks: lp.Run) -> None:
    run, loaded = three_tasks, lp.load_run(three_tasks.path)
    # A window of two tasks, built by an independent reader (Python's hdrh) from the log:
    # the tagged interval histograms of those tasks that start in [1, 3), added.
    from hdrh.histogram import HdrHistogram

    manual = HdrHistogram(1, 3_600_000_000, 3)
    for line in (run.path / "latency.hlog").read_text().splitlines():
        if not line.startswith("Tag="):
            continue
        tag, start, _length, _max, blob = line[4:].split(",")
        if tag in ("a", "c") and 1 <= float(start) < 3:
            manual.add(HdrHistogram.decode(blob))
    for r in (run, loaded):
        window = r.histogram(["a", "c"], start=1, end=3)
        assert window.count == manual.get_total_count() > 0
        for p in (50, 90, 99, 99.9, 100):
            assert window.percentile(p) == manual.get_value_at_percentile(p) / 1000, p
    # The whole run, live from the engine or added from the log, is one histogram.
    assert run.histogram() == loaded.histogram()
    assert run.histogram("b", service=True) == loaded.histogram("b", service=True)
    whole = run.histogram()
    assert whole.count == sum(h.count for _, h in loaded.interval_histograms())
    with pytest.raises(KeyError, match="no task named 'nope'"):
        loaded.histogram(["a", "nope"])


def test_the_spectrum_runs_from_the_minimum_to_the_maximum(three_tasks: lp.Run) -> None:
    h = three_tasks.histogram()
    s = lp.spectrum(three_tasks)
    assert s.columns == ["run", "percentile", "inverse", "latency_ms", "count"]
    assert s["latency_ms"].is_sorted() and s["inverse"].is_sorted()
    assert s["percentile"][0] == 0 and s["percentile"][-1] == 100
    assert s["latency_ms"][-1] == h.max and s["count"][-1] == h.count
    at_half = s.filter(pl.col("percentile") == 50)["latency_ms"][0]
    assert at_half == h.percentile(50)
    # Several runs, labelled, or one task of one.
    both = lp.spectrum([three_tasks, three_tasks.path], labels=["live", "loaded"])
    assert set(both["run"]) == {"live", "loaded"}
    one = lp.spectrum(three_tasks, task="c")
    assert one["count"][-1] == three_tasks.histogram("c").count


def test_hgrm_is_hdrhistograms_percentile_distribution(three_tasks: lp.Run) -> None:
    h = three_tasks.histogram()
    text = hgrm(h)
    lines = text.splitlines()
    assert lines[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    assert lines[1] == ""
    rows = [ln.split() for ln in lines[2:] if not ln.startswith("#")]
    assert all(len(r) == 4 for r in rows[:-1]) and len(rows[-1]) == 3
    assert float(rows[-1][1]) == 1.0 and int(rows[-1][2]) == h.count
    assert float(rows[-1][0]) == pytest.approx(h.max, abs=0.0005)
    half = next(r for r in rows if float(r[1]) == 0.5)
    assert float(half[0]) == pytest.approx(h.percentile(50), abs=0.0005)
    assert lines[-3].startswith("#[Mean    =") and f"{h.count:12d}]" in lines[-2]


def test_export_writes_rows_and_distributions(three_tasks: lp.Run, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadpilot.cli",
            "export",
            str(three_tasks.path),
            "--to",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert names == [
        "latency-a--GET__.hgrm",
        "latency-a.hgrm",
        "latency-b--GET__json.hgrm",
        "latency-b.hgrm",
        "latency-c--GET__echo.hgrm",
        "latency-c.hgrm",
        "latency.hgrm",
        "metrics.csv",
        "metrics.parquet",
        "service.hgrm",
    ]
    # The rows of the tasks and of their request names, as the run directory holds them.
    m = pl.concat([three_tasks.metrics, three_tasks.request_metrics])
    csv = pl.read_csv(tmp_path / "x" / "metrics.csv")
    assert csv.shape == m.shape and csv["requests"].sum() == m["requests"].sum()
    assert set(csv["request"].drop_nulls()) == {"GET /", "GET /json", "GET /echo"}
    written = pl.read_parquet(tmp_path / "x" / "metrics.parquet")
    assert written.sort("elapsed_s", "task", "request", nulls_last=False).equals(
        m.sort("elapsed_s", "task", "request", nulls_last=False)
    )
    per_name = (tmp_path / "x" / "latency-b--GET__json.hgrm").read_text()
    assert per_name == (tmp_path / "x" / "latency-b.hgrm").read_text(), "one request per task"
    only = lp.export(three_tasks, tmp_path / "y", formats=["hgrm"])
    assert {p.suffix for p in only} == {".hgrm"}
    with pytest.raises(ValueError, match="xml"):
        lp.export(three_tasks, tmp_path / "z", formats=["xml"])


@pytest.mark.slow
def test_the_target_serves_at_most_its_workers_at_once(tmp_path: Path) -> None:
    # 2 workers, 20 ms each serve 100/s: of 200 offered in one second the last waits ~1 s.
    with lp.start_target(delay_ms=20, concurrency=2) as t:
        plan = lp.Plan(name="cap", target=t.url, load=constant(200, 1), tasks=[get("a")])
        run = lp.run(plan, tmp_path / "r")
    s = run.summary()
    assert s.overall.requests == 200
    assert s.overall.latency_ms.max is not None and s.overall.latency_ms.max > 700
    with pytest.raises(ValueError, match="concurrency"):
        lp.start_target(concurrency=-1)
