"""The slowest requests, kept with their context and trace ids: against a full record of
every request the engine sent (its test-only log), on one process and across agents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import loadpilot as lp
from loadpilot.running.runs import _bucket_floor_ms
from tests.conftest import Recorder, constant, get

LOADPILOT = [sys.executable, "-c", "import sys; from loadpilot.cli import main; sys.exit(main())"]


def _full_log(path: Path) -> list[tuple[int, float, str]]:
    """The test-only record: ``(entry, latency in ms, trace id)`` of every request sent."""
    out = []
    for line in path.read_text().splitlines():
        entry, _slot, us, _answered, trace = line.split("\t")
        out.append((int(entry), int(us) / 1000, trace))
    return out


def _assert_tail_kept(run: lp.RunResult, log: Path, keep: int) -> int:
    """Every request at or above its task's p99.9 is among the kept ones (by trace id), and
    each request name's slowest `keep` of the run are: returns how many were in the tail."""
    every = _full_log(log)
    slow = run.slowest()
    everything = run.slowest(above=None)
    kept = set(everything["trace_id"].to_list())
    assert len(set(t for _, _, t in every)) == len(every), "each request its own trace id"
    tail = 0
    for i, task in enumerate(run.tasks):
        p999 = _bucket_floor_ms(run.histogram(task).percentile(99.9))
        assert p999 is not None
        above = {t for e, ms, t in every if e == i and ms >= p999}
        tail += len(above)
        assert above <= kept, f"{task}: {len(above - kept)} of {len(above)} tail requests lost"
        assert above == set(slow.filter(pl.col("task") == task)["trace_id"].to_list())
        slowest_of_task = sorted((ms for e, ms, _ in every if e == i), reverse=True)[:keep]
        of_task = everything.filter(pl.col("task") == task)["latency_ms"].to_list()
        assert of_task[:keep] == slowest_of_task, "slowest first, the run's slowest all there"
    return tail


@pytest.mark.slow
def test_every_request_at_or_above_its_tasks_p999_is_kept_with_its_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "every-request.tsv"
    monkeypatch.setenv("LOADPILOT_TEST_REQUEST_LOG", str(log))
    with lp.start_target(delay_ms=1, delay_max_ms=12, seed=3) as target:
        plan = lp.Plan(
            target=target.url,
            load=constant(1000, 6),
            tasks=[get("a", "/echo?id={{__iter}}", weight=3), get("b", "/json")],
        )
        run = lp.run(plan, tmp_path / "run")
        seen = dict(target.traces)
    assert _assert_tail_kept(run, log, keep=5) >= 4
    slow = run.slowest(above=None)
    # At most 5 a second per request name, and the sample: 2 a second per name.
    per_second = slow.group_by("request", pl.col("elapsed_s").floor()).len()
    assert per_second["len"].max() <= 5
    sample = run.slowest(sample=True)
    assert sample.group_by("request", pl.col("elapsed_s").floor()).len()["len"].max() <= 2
    assert len(sample) >= 2 * 2 * 6
    # Each kept request's context is the one it was sent with: its URL and trace id reached
    # the server together, its times are in order, its latency is due to end.
    # (Task a's URLs are each sent once: the server's record of each says which trace it was.)
    for r in slow.filter(pl.col("task") == "a").iter_rows(named=True):
        assert seen[r["url"]][3:35] == r["trace_id"], r
    for r in slow.iter_rows(named=True):
        assert r["due"] <= r["sent"] < r["end"]
        due_to_end = (r["end"] - r["due"]).total_seconds() * 1000
        assert abs(due_to_end - r["latency_ms"]) < 0.01, r
        assert r["status"] == 200 and r["error"] is None and r["connection"] >= 1
    assert slow.filter(pl.col("task") == "a")["url"].str.starts_with("/echo?id=").all()
    # The same frame from the run directory, and from its Parquet file once finished.
    assert (tmp_path / "run" / "slow.parquet").exists()
    assert lp.load_run(tmp_path / "run").slowest().equals(run.slowest())


@pytest.mark.slow
def test_agents_kept_requests_merge_to_the_slowest_of_the_whole_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "every-request.tsv"
    monkeypatch.setenv("LOADPILOT_TEST_REQUEST_LOG", str(log))
    with lp.start_target(delay_ms=1, delay_max_ms=12, seed=4) as target:
        plan = lp.Plan(target=target.url, load=constant(800, 5), tasks=[get("a", "/echo")])
        run = lp.run(plan, tmp_path / "run", agents=2)
    assert _assert_tail_kept(run, log, keep=5) >= 3
    agents = run.slowest(above=None)["agent"]
    assert agents.null_count() == 0 and agents.n_unique() == 2, agents.value_counts()
    per_second = run.slowest(above=None).group_by(pl.col("elapsed_s").floor()).len()
    assert per_second["len"].max() <= 5, "the top 5 of the union, not 5 per agent"


@pytest.mark.slow
def test_traceparent_is_sent_at_the_plans_share_and_a_requests_own_is_kept(
    recorder: Recorder, tmp_path: Path
) -> None:
    def sent(trace: float | bool, **kw: object) -> tuple[list[str | None], lp.LoadedRun]:
        out = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
        before = len(recorder.traces)
        plan = lp.Plan(
            target=recorder.url, load=constant(200, 2), tasks=[get("a", "/x", **kw)],
            trace=trace, keep_slowest=1000,
        )  # fmt: skip
        lp.run(plan, out)
        return recorder.traces[before:], lp.load_run(out)

    every, run = sent(True)
    assert len(every) == 400 and len(set(every)) == 400
    assert all(t is not None and len(t) == 55 and t.startswith("00-") for t in every)
    kept = run.slowest(above=None)["trace_id"].to_list()
    assert {f"00-{k}" for k in kept} <= {t[:35] for t in every if t}
    none, run = sent(False)
    assert none == [None] * 400 and run.slowest(above=None)["trace_id"].null_count() == 400
    some, _ = sent(0.25)
    share = sum(t is not None for t in some) / 400
    assert 0.25 - 5 * 0.0217 < share < 0.25 + 5 * 0.0217, share  # 5 sigma of a binomial
    own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    theirs, run = sent(True, headers={"traceparent": own})
    assert theirs == [own] * 400, "a request's own trace context is sent as it is, once"
    assert set(run.slowest(above=None)["trace_id"]) == {"0af7651916cd43dd8448eb211c80319c"}


def test_http2_requests_carry_their_trace_context(tmp_path: Path) -> None:
    with lp.start_target() as target:
        plan = lp.Plan(target=target.url, load=constant(50, 1), tasks=[get("a", "/")], http="2")
        run = lp.run(plan, tmp_path / "run")
        assert target.served_h2 == 50
        traces = [t for _, t in target.traces]
    assert len(set(traces)) == 50
    assert set(run.slowest(above=None)["trace_id"]) <= {t[3:35] for t in traces}


def test_the_targets_trace_log_keeps_what_it_is_told(tmp_path: Path) -> None:
    for keep, kept in ((15, 15), (0, 0)):
        with lp.start_target(keep_traces=keep) as target:
            plan = lp.Plan(target=target.url, load=constant(40, 1), tasks=[get("a", "/json")])
            lp.run(plan, tmp_path / f"k{keep}")
            assert target.served == 40
            assert len(target.traces) == kept
    with pytest.raises(ValueError, match="keep_traces"):
        lp.start_target(keep_traces=-1)


@pytest.mark.slow
def test_the_cli_lists_the_slowest_and_says_what_is_wrong(tmp_path: Path) -> None:
    with lp.start_target(delay_ms=1, delay_max_ms=5) as target:
        plan = lp.Plan(target=target.url, load=constant(100, 2), tasks=[get("a", "/echo")])
        lp.run(plan, tmp_path / "run")
    run = lp.load_run(tmp_path / "run")
    slowest = run.slowest(above=None).row(0, named=True)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*LOADPILOT, "slowest", *args], capture_output=True, text=True)

    p = cli(str(tmp_path / "run"), "--above", "all", "--limit", "3")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:3] == ["ended", "(UTC)", "latency"]
    assert slowest["trace_id"] in lines[1] and f"{slowest['latency_ms']:.2f}" in lines[1]
    assert len(lines) == 5 and lines[-1].startswith("… and ")
    p = cli(str(tmp_path / "run"), "--json", "--above", "0", "--limit", "2")
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["trace_id"] for r in rows][0] == slowest["trace_id"] and len(rows) == 2
    for bad, says in [
        ([str(tmp_path / "nothing")], "not a run directory"),
        ([str(tmp_path / "run"), "--above", "fast"], "--above 'fast'"),
        ([str(tmp_path / "run"), "--above", "p100"], "give a percentile"),
    ]:
        p = cli(*bad)
        assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.slow
def test_a_run_cut_short_keeps_what_it_wrote_and_keeping_can_be_off(tmp_path: Path) -> None:
    with lp.start_target() as target:
        plan = lp.Plan(target=target.url, load=constant(100, 2), tasks=[get("a", "/")])
        off = plan.model_copy(update={"keep_slowest": 0, "keep_sample": 0})
        lp.run(off, tmp_path / "off")
        lp.run(plan, tmp_path / "on")
    assert not (tmp_path / "off" / "slow.jsonl").exists()
    assert lp.load_run(tmp_path / "off").slowest(above=None).is_empty()
    # A run killed before its end has its JSON lines only (the last one torn).
    (tmp_path / "on" / "slow.parquet").unlink()
    lines = (tmp_path / "on" / "slow.jsonl").read_bytes()
    (tmp_path / "on" / "slow.jsonl").write_bytes(lines + lines[:40])
    loaded = lp.load_run(tmp_path / "on").slowest(above=None)
    assert len(loaded) == lines.count(b'"kind":"slowest"')


@pytest.mark.slow
def test_the_report_lists_the_slowest_requests_with_their_trace_ids(tmp_path: Path) -> None:
    traced = lp.load_run(Path(__file__).parent.parent / "datasets" / "traced")
    top = traced.slowest(above=None).head(10)
    text = traced.report(tmp_path / "traced.html").read_text()
    section = text[text.index("<h2>Slowest requests</h2>") :]
    assert all(t in section for t in top["trace_id"])
    assert traced.slowest(above=None).row(10, named=True)["trace_id"] not in text, "ten of them"
    # A run recorded before requests were kept has no such section.
    older = lp.load_run(Path(__file__).parent.parent / "datasets" / "baseline")
    assert "Slowest requests" not in older.report(tmp_path / "older.html").read_text()


def test_a_scenario_sets_its_trace_share_and_what_it_keeps(
    recorder: Recorder, tmp_path: Path
) -> None:
    @lp.scenario(profile=lp.constant(50, "1s"), trace=False, keep_slowest=1, keep_sample=0)
    class Quiet(lp.VUser):
        @lp.task
        def a(self) -> None:
            self.client.get("/x")

    run = lp.run(Quiet, tmp_path / "run", target=recorder.url)
    assert (run.plan.trace, run.plan.keep_slowest, run.plan.keep_sample) == (0.0, 1, 0)
    assert recorder.traces == [None] * 50
    kept = run.slowest(above=None)
    assert 1 <= len(kept) <= 2 and kept["trace_id"].null_count() == len(kept)  # one a second
    with pytest.raises(lp.ScenarioError, match="trace"):
        lp.scenario(profile=lp.constant(1, "1s"), trace=2)
