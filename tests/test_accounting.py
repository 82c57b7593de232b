"""Every due request is accounted for exactly once: answered (``requests``, errors among them),
``cancelled`` (sent, unanswered when the run stopped or its drain ended) or ``unsent`` (due,
never sent); and a run whose requests never came back does not pass."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import assert_served, constant, get, read_line
from hostile import (
    bad_chunking,
    huge_headers,
    malformed_status,
    short_body,
    silent,
)

import loadpilot as lp


def hanging(url: str, rate: float, seconds: float, connections: int, **kw: Any) -> lp.Plan:
    """A plan of one task against a server that never answers."""
    load = constant(rate, seconds, connections=connections)
    return lp.Plan(target=url, load=load, tasks=[get("hang")], **kw)


def assert_accounted(s: lp.Summary, one_request: bool = True) -> None:
    """The accounting identity, overall and per task (open model): a sanity line, true by
    construction unless a counter runs ahead of the one before it. The tests' claims are held
    to what the server counted and to the schedule's own count."""
    assert s.target_requests is not None
    for stats, target in [(s.overall, s.target_requests)] + [
        (t, t.target_requests) for t in s.tasks
    ]:
        assert target == stats.iterations + stats.cancelled + stats.unsent, stats
        if one_request:
            assert target == stats.requests + stats.cancelled + stats.unsent, stats
    assert s.target_requests == sum(t.target_requests or 0 for t in s.tasks)


def rows_add_up(run: lp.LoadedRun | lp.Run, s: lp.Summary) -> None:
    m = run.metrics
    for col, total in [
        ("requests", s.overall.requests),
        ("cancelled", s.overall.cancelled),
        ("unsent", s.overall.unsent),
        ("missed", s.overall.missed),
    ]:
        assert m[col].sum() == total, col


@pytest.mark.slow
def test_a_server_that_never_answers_cancels_every_request_and_fails_the_run(out: Path) -> None:
    with silent() as server:
        plan = hanging(server.url, 20, 2, connections=8, max_drain_s=1)
        started = time.monotonic()
        run = lp.run(plan, out)
        took = time.monotonic() - started
        s = run.summary()
    assert_accounted(s)
    assert s.ended == "drain_timeout"
    assert s.overall.requests == 0
    # Eight connections, each holding one request that never came back; the rest never left.
    assert s.overall.cancelled == 8 == server.received
    assert s.overall.unsent == 40 - 8
    assert s.overall.error_rate == 1.0
    assert s.duration_s == 2.0
    assert 1.0 <= s.drain_s < 3.0  # the drain's limit, and the moment workers take to stop
    # The planned end, the drain and the stop's grace, with room for a busy machine: never the
    # 30 s timeout.
    assert took < 2 + 1 + 1 + 4
    rows_add_up(run, s)
    failed = lp.thresholds.evaluate(s, lp.thresholds.parse_all({"error_rate": "< 1%"}))
    assert not failed[0].passed


@pytest.mark.slow
def test_slow_requests_past_the_end_are_drained_into_their_own_row(
    target: lp.TargetServer, out: Path
) -> None:
    plan = lp.Plan(
        target=target.url,
        load=constant(50, 2),
        tasks=[get("slow", "/?delay_ms=300")],
    )
    run = lp.run(plan, out)
    s = run.summary()
    assert_accounted(s)
    assert s.ended == "completed"
    assert (s.overall.requests, s.overall.cancelled, s.overall.unsent) == (100, 0, 0)
    assert target.served == 100
    assert 0.25 < s.drain_s < 1.0
    m = run.metrics
    drain = m.filter(pl.col("elapsed_s") == 2.0)
    assert len(drain) == 1
    # About 0.3 s of arrivals were in flight at the end: they completed in the drain, not in
    # the last second, whose rate stays that of the schedule.
    assert 10 <= drain["requests"].item() <= 20
    assert drain["achieved_rps"].item() == 0.0
    assert drain["interval_s"].item() == pytest.approx(s.drain_s, abs=0.05)
    last = m.filter(pl.col("elapsed_s") == 1.0)
    assert last["interval_s"].item() == 1.0
    assert s.overall.achieved_rps == pytest.approx(50.0)
    rows_add_up(run, s)


@pytest.mark.slow
def test_requests_longer_than_the_drain_are_cancelled(target: lp.TargetServer, out: Path) -> None:
    plan = lp.Plan(
        target=target.url,
        load=constant(10, 2, connections=64),
        tasks=[get("forever", "/?delay_ms=20000")],
        max_drain_s=0.5,
    )
    run = lp.run(plan, out)
    s = run.summary()
    assert_accounted(s)
    assert s.ended == "drain_timeout"
    assert (s.overall.requests, s.overall.cancelled, s.overall.unsent) == (0, 20, 0)
    assert target.served == 20, "every cancelled request had been sent"
    rows_add_up(run, s)


@pytest.mark.slow
def test_an_overloaded_target_leaves_unsent_requests_not_vanished_ones(out: Path) -> None:
    with lp.start_target(delay_ms=10, concurrency=1) as slow:
        plan = lp.Plan(
            target=slow.url,
            load=constant(1000, 3, connections=32),
            tasks=[get("a", weight=5), get("b")],
        )
        run = lp.run(plan, out)
        served = slow.served
    s = run.summary()
    assert_accounted(s)
    assert s.target_requests == 3000
    # The target serves ~100/s: most arrivals found every connection busy and were never sent,
    # and the server saw only what was sent: the unsent did not reach it, nothing vanished.
    assert s.overall.unsent > 2000
    assert_served(s.overall, served)
    assert served + s.overall.unsent >= 3000 - s.overall.cancelled
    # The 32 connections stayed busy: past their first requests, almost every request sent
    # went out late (an arrival waiting for a connection), and was counted as missed.
    assert s.overall.missed > s.overall.requests - 2 * 32
    rows_add_up(run, s)


@pytest.mark.slow
def test_an_unreachable_rate_ends_on_time_and_says_what_was_due(
    target: lp.TargetServer, out: Path
) -> None:
    plan = lp.Plan(
        target=target.url,
        load=constant(1e12, 2, connections=4),
        tasks=[get("a", weight=2), get("b")],
    )
    started = time.monotonic()
    run = lp.run(plan, out)
    took = time.monotonic() - started
    s = run.summary()
    assert took < 2 + 5, "the planned end, not the time to send 2e12 requests"
    assert s.target_requests == 2e12
    assert_accounted(s)
    assert s.overall.unsent > 1e12
    assert s.tasks[0].target_requests == pytest.approx(2 * s.tasks[1].target_requests, rel=1e-9)
    per_second = (
        run.metrics.filter(pl.col("elapsed_s") < 2)
        .group_by("elapsed_s")
        .agg(pl.col("target_rps").sum(), pl.col("achieved_rps").sum())
    )
    assert len(per_second) == 2
    assert per_second["target_rps"].to_list() == pytest.approx([1e12, 1e12])
    assert per_second["achieved_rps"].max() < 1e6


def test_a_stopped_run_counts_in_flight_requests_as_cancelled(out: Path) -> None:
    with silent() as server:
        plan = hanging(server.url, 20, 30, connections=4)
        run = lp.start(plan, out)
        deadline = time.monotonic() + 30
        while server.received < 4:
            assert time.monotonic() < deadline, f"only {server.received} requests arrived"
            time.sleep(0.05)
        time.sleep(0.5)
        run.stop()
    s = run.summary()
    assert s.ended == "stopped"
    assert_accounted(s)
    assert s.overall.cancelled == 4
    assert s.overall.requests == 0
    assert s.duration_s < 30
    assert s.target_requests == pytest.approx(20 * s.duration_s, abs=1.5)


@pytest.mark.slow
def test_exactly_the_due_requests_are_sent(recorder: object, out: Path) -> None:
    from conftest import Recorder

    assert isinstance(recorder, Recorder)
    plan = lp.Plan(target=recorder.url, load=constant(200, 2), tasks=[get("a")])
    run = lp.start(plan, out)
    run.wait()
    s = run.summary()
    assert_accounted(s)
    assert len(recorder.arrivals) == s.overall.requests == 400


@pytest.mark.slow
def test_nothing_is_sent_after_the_planned_end(recorder: object, out: Path) -> None:
    """What was due before the planned end but could not be sent by it (plus the engine's
    20 ms grace) is unsent, never sent late."""
    from conftest import Recorder

    assert isinstance(recorder, Recorder)
    # One connection, answers taking 450 ms: it is free to send at about 0, 0.45, 0.9, 1.35
    # and 1.8 s, and next at about 2.25 s, past the planned end. Timed on the server's side,
    # a request sent then would be ~0.25 s past the end, well clear of scheduling noise.
    plan = lp.Plan(
        target=recorder.url, load=constant(10, 2, connections=1), tasks=[get("a", "/sleep/450")]
    )
    run = lp.start(plan, out)
    run.wait()
    s = run.summary()
    assert_accounted(s)
    times = [t for t, _ in recorder.arrivals]
    assert max(times) - min(times) < 2.1, times
    assert len(times) == s.overall.requests
    assert s.overall.requests in (4, 5), s.overall
    assert s.overall.unsent == 20 - s.overall.requests


@pytest.mark.slow
def test_python_tasks_count_iterations_requests_and_exceptions_like_engine_tasks(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    @lp.scenario(profile=lp.constant(50, "2s"))
    class Raises(lp.VUser):
        @lp.task
        async def boom(self) -> None:
            await self.client.get("/")
            raise RuntimeError("after one request")

    run = lp.run(Raises, tmp_path / "r", target=target.url)
    s = run.summary()
    assert_accounted(s, one_request=True)
    t = s.task("boom")
    assert (t.requests, t.iterations, t.errors_by_kind["exception"]) == (100, 100, 100)
    assert t.achieved_rps == pytest.approx(50.0)
    assert t.error_rate == pytest.approx(0.5)  # 100 answered requests, 100 exceptions


@pytest.mark.slow
def test_sleeping_sync_tasks_are_accounted_and_end_with_the_drain(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    @lp.scenario(profile=lp.constant(100, "2s"), connections=4, max_drain="1s")
    class Sleepy(lp.VUser):
        @lp.task
        def nap(self) -> None:
            self.client.get("/")
            time.sleep(5)

    started = time.monotonic()
    run = lp.run(Sleepy, tmp_path / "r", target=target.url)
    took = time.monotonic() - started
    s = run.summary()
    assert_accounted(s, one_request=False)
    assert s.ended == "drain_timeout"
    assert s.overall.cancelled == 4  # four users, each asleep in its first iteration
    assert s.overall.unsent == 200 - 4
    assert took < 2 + 1 + 1 + 4, "the planned end, the drain and the stop's grace"


def test_a_failing_on_start_retires_users_and_their_arrivals_are_unsent(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    @lp.scenario(profile=lp.constant(50, "2s"), connections=8)
    class BadLogin(lp.VUser):
        def on_start(self) -> None:
            raise RuntimeError("login failed")

        @lp.task
        async def browse(self) -> None:
            await self.client.get("/")

    run = lp.run(BadLogin, tmp_path / "r", target=target.url)
    s = run.summary()
    assert_accounted(s, one_request=False)
    browse, hook = s.task("browse"), s.task("on_start")
    assert (browse.requests, browse.errors, browse.unsent) == (0, 0, 100)
    # Each user's failed on_start is an error of its own entry, not of a task.
    assert (hook.path, hook.iterations, hook.errors_by_kind["exception"]) == ("hook", 8, 8)


@pytest.mark.parametrize(
    "server",
    [malformed_status, bad_chunking, short_body, huge_headers],
    ids=["malformed-status", "bad-chunking", "short-body", "huge-headers"],
)
def test_broken_http_is_a_protocol_error_not_a_reset(server: object, out: Path) -> None:
    with server() as s:  # type: ignore[operator]
        plan = lp.Plan(
            target=s.url,
            load=constant(20, 1, connections=4),
            tasks=[get("a")],
        )
        summary = lp.run(plan, out).summary()
    assert_accounted(summary)
    kinds = summary.overall.errors_by_kind
    assert kinds["protocol"] == summary.overall.requests == 20, kinds
    assert kinds["reset"] == 0


@pytest.mark.slow
def test_the_cli_fails_a_run_whose_requests_never_came_back(tmp_path: Path) -> None:
    with silent() as server:
        plan = hanging(server.url, 10, 1, connections=2, max_drain_s=0.5)
        f = tmp_path / "plan.json"
        f.write_text(plan.to_json())
        base = [sys.executable, "-m", "loadpilot.cli", "run", str(f)]
        plain = subprocess.run(
            [*base, "--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=60
        )
        judged = subprocess.run(
            [*base, "--out", str(tmp_path / "b"), "--threshold", "error_rate<50%"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert plain.returncode == 3, plain.stdout + plain.stderr
    assert "cancelled 2" in plain.stdout
    assert "never sent" in plain.stdout
    assert judged.returncode == 1, judged.stdout
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["ended"] == "drain_timeout"
    assert summary["overall"]["cancelled"] == 2


_BIG_BODIES = """
import sys
import loadpilot as lp

path = sys.argv[2]
if path == "python":
    @lp.scenario(profile=lp.constant(10, "3s"), connections=16)
    class Big(lp.VUser):
        @lp.task
        async def big(self):
            r = await self.client.get("/bytes/20000000")
            assert len(r.content) == 1 << 20

    run = lp.run(Big, sys.argv[3], target=sys.argv[1])
else:
    plan = lp.Plan(
        target=sys.argv[1],
        load=lp.OpenLoad(stages=[lp.Constant(rate=10, duration_s=3)], connections=16),
        tasks=[lp.Task(name="big", requests=[lp.Request(
            path="/bytes/20000000", expect=lp.Expect(body_contains="xyz"))])],
    )
    run = lp.run(plan, sys.argv[3])
s = run.summary()
# This process's own peak (VmHWM): getrusage's maxrss would also count what the parent held
# when it forked this process, before exec.
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith("VmHWM:"))
print(s.overall.requests, s.overall.bytes_in, s.overall.errors_by_kind["check"],
      s.overall.errors_by_kind["exception"], peak_kib // 1024)
"""


@pytest.mark.slow
@pytest.mark.parametrize("path", ["engine", "python"])
def test_large_bodies_are_counted_but_only_their_first_mebibyte_is_kept(
    tmp_path: Path, path: str
) -> None:
    target = subprocess.Popen(
        [sys.executable, "-m", "loadpilot.cli", "target", "--port", "0", "--for-s", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert target.stdout is not None
        url = read_line(target.stdout).split()[-1]
        script = tmp_path / "big.py"
        script.write_text(_BIG_BODIES)
        done = subprocess.run(
            [sys.executable, str(script), url, path, str(tmp_path / "r")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        target.terminate()
        target.wait(10)
    assert done.returncode == 0, done.stderr
    requests, bytes_in, checks, exceptions, rss_mib = map(int, done.stdout.split())
    assert requests == 30
    assert bytes_in == 30 * 20_000_000, "every byte is read and counted"
    if path == "engine":
        assert checks == 30  # "xyz" is not in the body: the check ran on the kept part
    else:
        assert exceptions == 0  # the task saw 1 MiB of each body
    # 600 MB went through; what the process held stays small (a run alone is ~90 MiB here).
    assert rss_mib < 200, f"peak RSS {rss_mib} MiB"


@pytest.mark.slow
def test_closed_model_users_start_as_the_ramp_asks(recorder: object, out: Path) -> None:
    from conftest import Recorder

    assert isinstance(recorder, Recorder)
    plan = lp.Plan(
        target=recorder.url,
        load=lp.ClosedLoad(
            stages=[lp.Ramp(from_=0, to=20, duration_s=2), lp.Constant(rate=20, duration_s=0.5)],
            think_s=0.1,
        ),
        tasks=[get("a", "/u/{{__vu}}")],
        # Every request kept (under 1,000 a second), each with the instant it was sent: the
        # engine's own record, without the test server's delays (a Python server in this
        # process, whose garbage collector and threads can hold an arrival 100 ms or more).
        keep_slowest=1000,
        keep_sample=0,
    )
    run = lp.run(plan, out)
    sent = run.slowest(above=None).sort("sent")
    assert len(sent) == run.summary().overall.requests == len(recorder.arrivals)
    t0 = sent["sent"][0]
    first: dict[str, float] = {}
    for r in sent.iter_rows(named=True):
        first.setdefault(r["url"], (r["sent"] - t0).total_seconds())
    assert len(first) == 20
    # User k is wanted from k / 10 s on: its first request comes then, not at the start.
    for k in range(20):
        assert first[f"/u/{k}"] == pytest.approx(k / 10, abs=0.15), k


@pytest.mark.slow
def test_python_tasks_follow_the_scenarios_timeout(target: lp.TargetServer, tmp_path: Path) -> None:
    @lp.scenario(profile=lp.constant(10, "1s"), timeout="100ms")
    class Impatient(lp.VUser):
        @lp.task
        async def slow(self) -> None:
            await self.client.get("/?delay_ms=500")

    s = lp.run(Impatient, tmp_path / "r", target=target.url).summary()
    assert s.overall.errors_by_kind["timeout"] == s.overall.requests == 10
    # A timeout given to the request itself wins over the scenario's.

    @lp.scenario(profile=lp.constant(10, "1s"), timeout="100ms")
    class Patient(lp.VUser):
        @lp.task
        async def slow(self) -> None:
            await self.client.get("/?delay_ms=200", timeout="2s")

    s = lp.run(Patient, tmp_path / "p", target=target.url).summary()
    assert (s.overall.requests, s.overall.errors) == (10, 0)


def test_waiting_forever_is_not_an_error(target: lp.TargetServer, out: Path) -> None:
    run = lp.start(lp.Plan(target=target.url, load=constant(10, 1), tasks=[get("a")]), out)
    assert run.wait(float("inf")) and run.wait(1e300)


@pytest.mark.parametrize("path", ["engine", "python"])
def test_users_thinking_at_the_planned_end_do_not_hold_the_run_open(
    target: lp.TargetServer, tmp_path: Path, path: str
) -> None:
    if path == "engine":

        @lp.scenario(profile=lp.users(5, "1s", think="20s"))
        class Thinker(lp.VUser):
            @lp.task
            def look(self) -> None:
                self.client.get("/")

    else:

        @lp.scenario(profile=lp.users(5, "1s", think="20s"))
        class Thinker(lp.VUser):
            @lp.task
            async def look(self) -> None:
                await self.client.get("/")

    started = time.monotonic()
    s = lp.run(Thinker, tmp_path / "r", target=target.url).summary()
    assert s.ended == "completed" and s.task("look").path == path
    assert (s.overall.requests, s.overall.cancelled) == (5, 0)
    assert time.monotonic() - started < 1 + 5, "not the 20 s of thinking nor a 10 s drain"
