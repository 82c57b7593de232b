"""The run directory: standard formats, written as the run goes, readable after a crash."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from hdrh.histogram import HdrHistogram

import loadpilot as lp
from tests.conftest import (
    Recorder,
    assert_stopped_on_time,
    constant,
    get,
    read_line,
    read_with_hdrh,
    wait_for_rows,
)


@pytest.mark.slow
def test_the_hlog_reads_back_in_hdrh_with_the_summary_figures(
    target: lp.TargetServer, out: Path
) -> None:
    plan = lp.Plan(
        target=target.url,
        load=constant(400, 3),
        tasks=[get("a", "/json", weight=3), get("b", "/echo")],
    )
    summary = lp.run(plan, out).summary()

    intervals = read_with_hdrh(out / "latency.hlog")
    lines = [ln for ln in (out / "latency.hlog").read_text().splitlines() if ln.startswith("Tag=")]
    schedule = [ln for ln in lines if float(ln.split(",")[1]) < 3]
    assert len(schedule) == 3 * 2, "one histogram per interval per task, no aggregate rows"
    assert len(intervals) == len(lines), "a drain interval, if any, is a line of its own"
    merged = HdrHistogram(1, 3_600_000_000, 3)
    for h in intervals:
        merged.add(h)
    assert merged.get_total_count() == summary.overall.requests == 1200
    assert merged.get_value_at_percentile(99) / 1000 == summary.overall.latency_ms.p99
    tags = {line.split(",")[0] for line in (out / "latency.hlog").read_text().splitlines()}
    assert {"Tag=a", "Tag=b"} <= tags


@pytest.mark.slow
def test_metrics_parquet_and_summary_agree(target: lp.TargetServer, out: Path) -> None:
    run = lp.run(
        lp.Plan(target=target.url, load=constant(200, 3), tasks=[get("x")]),
        out,
    )

    loaded = lp.load_run(out)

    assert (out / "metrics.parquet").exists() and (out / "summary.json").exists()
    assert loaded.metrics.equals(run.metrics)
    assert int(loaded.metrics["requests"].sum()) == loaded.summary().overall.requests == 600
    assert loaded.histogram().count == 600
    assert loaded.histogram("x").percentile(99) == run.summary().overall.latency_ms.p99
    assert json.loads((out / "plan.json").read_text())["tasks"][0]["name"] == "x"


@pytest.mark.slow
def test_metrics_grow_while_the_run_goes(target: lp.TargetServer, out: Path) -> None:
    run = lp.start(lp.Plan(target=target.url, load=constant(100, 4), tasks=[get("x")]), out)
    wait_for_rows(out, 1)

    seen = len(run.metrics)
    still_going = not run.done
    run.wait()

    assert still_going, "the first row came while the run went"
    assert 1 <= seen < 4
    assert len(run.metrics.filter(pl.col("elapsed_s") < 4)) == 4


_CHILD = """
import signal, sys, loadpilot as lp
# Ctrl-C raises here as in an interactive shell, whatever this test's runner inherited (a job
# started in the background by a script starts with SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
plan = lp.Plan(target=sys.argv[2], load=lp.OpenLoad(stages=[lp.Constant(rate=200, duration_s=60)]),
               tasks=[lp.Task(name="x", requests=[lp.Request(path="/")])])
run = lp.start(plan, sys.argv[1])
print("started", flush=True)
run.wait()
"""


def _start_child(out: Path, target: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(out), target], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and read_line(p.stdout).strip() == "started"
    return p


@pytest.mark.slow
def test_a_killed_run_keeps_every_finished_interval(target: lp.TargetServer, out: Path) -> None:
    child = _start_child(out, target.url)
    wait_for_rows(out, 3)
    child.kill()
    child.wait(timeout=10)

    run = lp.load_run(out)

    assert not run.complete
    assert len(run.metrics) >= 3
    assert (run.metrics["requests"] == 200).all()
    assert run.histogram().count == int(run.metrics["requests"].sum())
    summary = run.summary()
    assert summary.ended == "interrupted" and summary.overall.requests == run.histogram().count


@pytest.mark.slow
def test_an_interrupted_run_stops_within_a_second_and_keeps_its_summary(
    recorder: Recorder, out: Path
) -> None:
    child = _start_child(out, recorder.url)
    wait_for_rows(out, 2)
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    child.wait(timeout=30)

    run = lp.load_run(out)
    s = run.summary()

    assert run.complete and s.ended == "stopped"
    assert_stopped_on_time(recorder, sent, s)
    # What was due up to the stop, at 200 a second from the run's start.
    assert s.target_requests == pytest.approx(200 * s.duration_s, abs=2)
    assert s.target_requests == s.overall.iterations + s.overall.cancelled + s.overall.unsent
    assert s.overall.requests >= s.target_requests - 5
    assert s.overall.requests == int(run.metrics["requests"].sum())
    # The partial interval is closed with its real length.
    assert run.metrics["interval_s"].sum() == pytest.approx(s.duration_s, abs=0.01)


def test_a_run_directory_is_never_overwritten(target: lp.TargetServer, out: Path) -> None:
    plan = lp.Plan(target=target.url, load=constant(10, 1), tasks=[get("x")])
    lp.run(plan, out)

    with pytest.raises(lp.RunDirError, match="already holds a run"):
        lp.start(plan, out)


def test_loading_something_that_is_not_a_run_says_so(tmp_path: Path) -> None:
    with pytest.raises(lp.RunDirError, match="not a run directory"):
        lp.load_run(tmp_path)


@pytest.mark.slow
def test_cli_run_of_a_plan_file_writes_the_directory(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        lp.Plan(target=target.url, load=constant(50, 2), tasks=[get("x")]).to_json()
    )

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadpilot.cli",
            "run",
            str(plan_file),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert "all" in done.stdout
    assert lp.load_run(tmp_path / "r").summary().overall.requests == 100


def test_reading_metrics_writes_nothing_and_the_end_writes_parquet(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    plan = lp.Plan(
        target=target.url,
        load=lp.OpenLoad(stages=[lp.Constant(rate=20, duration_s=1)], connections=4),
        tasks=[lp.Task(name="a", requests=[lp.Request(path="/")])],
    )
    run = lp.start(plan, tmp_path / "r")
    deadline = time.monotonic() + 20
    while not run.done:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert len(run.metrics) >= 1
    assert not (run.path / "metrics.parquet").exists(), "a property read has no side effect"
    run.wait()
    # The file holds every row: the tasks' and the request names'.
    written = pl.read_parquet(run.path / "metrics.parquet")
    assert written.height == len(run.metrics) + len(run.request_metrics)


def test_a_ctrl_c_while_the_run_is_being_set_up_stops_and_summarises_it(
    target: lp.TargetServer, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine has started the run when Ctrl-C lands in the Python around it: the run must
    # end, stopped, with its summary, not go on with nobody to wait for it.
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("loadpilot.running.runs._validity.Probe", interrupted)
    plan = lp.Plan(target=target.url, load=constant(50, 30), tasks=[get("x")])
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        lp.start(plan, out)
    assert time.monotonic() - started < 10, "stopped, not run to its end"
    summary = lp.load_run(out).summary()
    assert summary.ended == "stopped"


def test_an_exporter_that_cannot_bind_stops_the_run_it_was_for(
    target: lp.TargetServer, out: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        plan = lp.Plan(target=target.url, load=constant(50, 30), tasks=[get("x")])
        with pytest.raises(ValueError, match=f"127.0.0.1:{port}.*cannot serve there"):
            lp.start(plan, out, prometheus=f"127.0.0.1:{port}")
    assert lp.load_run(out).summary().ended == "stopped"


@pytest.mark.slow
def test_a_follower_reads_each_row_once_and_rows_stay_in_few_chunks(tmp_path: Path) -> None:
    """What the exporter, serve mode's stream, the CLI's progress and the dashboard read each
    second: the rows closed since their last look, every row exactly once; the run keeps its
    rows in chunks of doubling size, so there are few of them whatever the run's length."""
    with lp.start_target() as target:
        plan = lp.Plan(
            name="follow",
            target=target.url,
            load=lp.OpenLoad(stages=[lp.Constant(rate=200, duration_s=4)]),
            tasks=[get("a", "/"), get("b", "/json")],
        )
        r = lp.start(plan, tmp_path / "run")
        pieces, seen, most_chunks = [], 0, 0
        while True:
            done = r.done
            new, seen = r._rows_after(seen)
            pieces.append(new)
            most_chunks = max(most_chunks, len(r._frames))
            if done:
                break
            time.sleep(0.05)
        r.wait()
    followed = pl.concat(pieces)
    everything = r._rows
    assert seen == everything.height == followed.height
    assert followed.equals(everything)
    # Chunks of doubling size: never more than log2 of the rows + 1.
    assert most_chunks <= everything.height.bit_length() + 1, most_chunks
