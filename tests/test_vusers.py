"""Python-logic virtual users: Python between requests, time kept by the engine."""

from __future__ import annotations

import re
import textwrap
import threading
import time
from pathlib import Path

import pytest

import loadpilot as lp
from tests.conftest import Recorder, assert_stopped_on_time, interrupt_cli


@pytest.mark.slow
def test_async_and_sync_tasks_run_with_the_exact_mix(target: lp.TargetServer, out: Path) -> None:
    @lp.scenario(profile=lp.constant(100, "2s"))
    class Shop(lp.VUser):
        @lp.task(weight=3)
        async def browse(self) -> None:
            r = await self.client.get("/json")
            if r.json()["ok"]:
                await self.client.post("/echo", json={"item": r.json()["items"][0]["id"]})

        @lp.task
        def buy(self) -> None:
            r = self.client.post("/echo", content="one")
            assert r.text == "one" and r.status_code == 200

    summary = lp.run(Shop, out, target=target.url).summary()

    assert [t.path for t in summary.tasks] == ["python", "python"]
    assert summary.task("browse").requests == 300  # 150 iterations of two requests
    assert summary.task("buy").requests == 50
    assert summary.overall.errors == 0, summary.overall.errors_by_kind
    assert target.served == summary.overall.requests == 350


def test_values_drawn_in_python_vary_per_iteration(recorder: Recorder, out: Path) -> None:
    import random

    @lp.scenario(profile=lp.constant(50, "1s"))
    class Dice(lp.VUser):
        @lp.task
        async def roll(self) -> None:
            await self.client.get(f"/roll/{random.randint(1, 1_000_000)}")

    lp.run(Dice, out, target=recorder.url)

    paths = [p for _, p in recorder.arrivals]
    assert len(paths) == 50 and len(set(paths)) > 40


@pytest.mark.slow
def test_on_start_runs_for_every_user_concurrently_and_state_carries_on(
    target: lp.TargetServer, out: Path
) -> None:
    starts: list[float] = []
    lock = threading.Lock()

    @lp.scenario(profile=lp.users(20, "2s", think="100ms"))
    class Member(lp.VUser):
        def on_start(self) -> None:
            time.sleep(0.2)  # a slow login: blocks only this user
            r = self.client.get("/cookies/set?sid=s1")
            self.token = r.text
            with lock:
                starts.append(time.monotonic())

        @lp.task
        async def visit(self) -> None:
            r = await self.client.get("/cookies")
            if self.token != "set" or "sid=s1" not in r.text:
                raise AssertionError("state from on_start is gone")

    run = lp.run(Member, out, target=target.url)
    s = run.summary()

    assert len(starts) == 20
    # Concurrently: one after another, 20 logins of 200 ms take 4 s.
    assert max(starts) - min(starts) < 2.0, "logins ran one after another"
    assert s.overall.errors == 0, s.overall.errors_by_kind
    # Hooks' requests are set-up and not counted: the tasks' iterations and requests match.
    assert s.overall.requests == s.overall.iterations
    assert int(run.metrics["requests"].sum()) == s.overall.requests
    assert run.metrics["active_users"].max() == 20


def test_exceptions_and_failed_requests_are_counted_and_users_go_on(out: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    @lp.scenario(profile=lp.constant(20, "1s"))
    class Broken(lp.VUser):
        @lp.task
        async def fail(self) -> None:
            await self.client.get("/")  # nobody listens: RequestError, counted as connect
            raise AssertionError("never reached")

        @lp.task
        async def boom(self) -> None:
            raise ValueError("a bug in the task")

    s = lp.run(Broken, out, target=f"http://127.0.0.1:{port}").summary()

    assert s.task("fail").errors_by_kind["connect"] == 10
    assert s.task("fail").errors_by_kind["exception"] == 0
    assert s.task("boom").errors_by_kind["exception"] == 10


_SLOW = """
import loadpilot as lp

@lp.scenario(profile=lp.constant(rps=50, duration="60s"))
class Slow(lp.VUser):
    @lp.task
    async def wait(self):
        await self.client.get("/sleep/20")
"""


@pytest.mark.slow
def test_ctrl_c_stops_python_users_within_a_second(recorder: Recorder, tmp_path: Path) -> None:
    f = tmp_path / "slow.py"
    f.write_text(textwrap.dedent(_SLOW))
    code, out, err, sent = interrupt_cli(
        ["run", str(f), "--target", recorder.url, "--out", str(tmp_path / "r")]
    )

    assert code == 130, out + err
    assert "(weight 1, python)" in out
    assert re.search(r"^wait\s+python\s", out, re.M), out
    s = lp.load_run(tmp_path / "r").summary()
    assert_stopped_on_time(recorder, sent, s)
    assert s.target_requests == pytest.approx(50 * s.duration_s, abs=2)
    assert s.target_requests == s.overall.iterations + s.overall.cancelled + s.overall.unsent
    # 50 a second, each answered in 20 ms by the server: only the last one or two are cut.
    assert s.overall.requests >= s.target_requests - 3


def test_python_users_get_a_feeder_row_per_iteration(recorder: Recorder, out: Path) -> None:
    @lp.scenario(profile=lp.constant(20, "1s"))
    class Fed(lp.VUser):
        feed = lp.feed(
            __import__("polars").DataFrame({"user": [f"u{i}" for i in range(5)]}), mode="unique"
        )

        @lp.task
        async def visit(self) -> None:
            assert self.row is not None
            await self.client.get(f"/hello/{self.row['user'].upper()}")

    s = lp.run(Fed, out, target=recorder.url).summary()

    assert sorted(p for _, p in recorder.arrivals) == [f"/hello/U{i}" for i in range(5)]
    assert s.ended == "exhausted" and s.overall.requests == 5


def test_expect_is_checked_for_python_users_too(target: lp.TargetServer, out: Path) -> None:
    @lp.scenario(profile=lp.constant(20, "1s"))
    class Checked(lp.VUser):
        def on_start(self) -> None:
            self.client.get("/")  # a hook alone puts the tasks on the Python path

        @lp.task
        def gone(self) -> None:
            r = self.client.get("/status/404", expect=lp.expect(status=404))
            assert r.status_code == 404

        @lp.task
        def wrong(self) -> None:
            self.client.get("/json", expect=lp.expect(json_path="$.ok", equals=False))

    s = lp.run(Checked, out, target=target.url).summary()

    assert s.task("gone").errors == 0, s.task("gone").errors_by_kind
    assert s.task("wrong").errors_by_kind["check"] == 10
    assert s.task("wrong").errors_by_kind["exception"] == 0


def test_plain_bodies_share_the_users_thread_and_a_sleep_pauses_its_own_user(
    target: lp.TargetServer, out: Path
) -> None:
    threads: set[int] = set()

    @lp.scenario(profile=lp.users(10, "1.5s"))
    class Napper(lp.VUser):
        @lp.task
        def nap(self) -> None:
            threads.add(threading.get_ident())
            time.sleep(0.25)
            self.client.get("/")

    s = lp.run(Napper, out, target=target.url).summary()

    assert s.task("nap").path == "python"
    # Every user's body ran on the one thread of the Python users (as greenlets)...
    assert len(threads) == 1 and threading.get_ident() not in threads
    # ... and yet the naps overlapped: one after another, 1.5 s holds at most 6 of them.
    assert s.task("nap").requests >= 30, s.task("nap").requests
    assert s.overall.errors == 0, s.overall.errors_by_kind


@pytest.mark.slow
def test_a_body_that_blocks_the_thread_goes_on_in_a_thread_per_user(
    target: lp.TargetServer, out: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    @lp.scenario(profile=lp.users(8, "2s"))
    class Blocker(lp.VUser):
        @lp.task
        def hold(self) -> None:
            threading.Event().wait(0.2)  # blocks its thread: not a sleep LoadPilot can see
            self.client.get("/")

    s = lp.run(Blocker, out, target=target.url).summary()

    err = capfd.readouterr().err
    assert "task 'hold' kept the Python users' thread waiting for" in err, err
    assert err.count("kept the Python users' thread waiting") == 1
    # Held on the one thread, 2 s would hold at most 10 iterations; in a thread per user the
    # eight users overlap.
    assert s.task("hold").requests >= 30, s.task("hold").requests
    assert s.overall.errors == 0, s.overall.errors_by_kind


@pytest.mark.slow
def test_users_asleep_or_waiting_at_the_end_are_cancelled_at_once(
    recorder: Recorder, out: Path
) -> None:
    turns = iter(range(1_000_000))
    ended: list[str] = []

    @lp.scenario(profile=lp.users(6, "1s"), max_drain="1s")
    class Sleepy(lp.VUser):
        @lp.task
        def doze(self) -> None:
            self.client.get("/")
            try:
                if next(turns) % 2:
                    time.sleep(60)
                else:
                    self.client.get("/sleep/20000")
            except lp.RequestError as e:
                ended.append(e.kind)
                raise

    began = time.monotonic()
    s = lp.run(Sleepy, out, target=recorder.url).summary()

    # One second of run, one of drain: then every iteration still going is cancelled.
    assert time.monotonic() - began < 6
    assert s.task("doze").cancelled == 6, s.task("doze")
    assert s.ended == "drain_timeout"
    # Each was interrupted where it waited, so its own handlers ran before the run returned.
    assert ended == ["cancelled"] * 6


@pytest.mark.slow
def test_on_stop_runs_at_once_for_a_user_whose_iteration_outlived_the_drain(
    recorder: Recorder, out: Path
) -> None:
    seen: list[str] = []

    @lp.scenario(profile=lp.users(3, "1s"), max_drain="1s")
    class Stuck(lp.VUser):
        @lp.task
        def wait(self) -> None:
            self.client.get("/")
            try:
                time.sleep(20)  # the engine cancels requests at the drain's end, not sleeps
            except lp.RequestError as e:
                seen.append(e.kind)
                raise

        def on_stop(self) -> None:
            self.client.get("/bye")  # sent: the iteration it followed was cancelled first
            seen.append("stopped")

    began = time.monotonic()
    s = lp.run(Stuck, out, target=recorder.url).summary()

    # Run, drain, then on_stop at once (not after the engine's 10 s limit for on_stop).
    assert time.monotonic() - began < 6
    assert seen.count("cancelled") == 3 and seen.count("stopped") == 3, seen
    assert [p for _, p in recorder.arrivals].count("/bye") == 3
    assert s.task("wait").cancelled == 3 and s.ended == "drain_timeout"


@pytest.mark.slow
def test_a_body_that_computes_for_long_stays_a_greenlet(
    target: lp.TargetServer, out: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    threads: set[int] = set()

    @lp.scenario(profile=lp.users(4, "1.5s"))
    class Busy(lp.VUser):
        @lp.task
        def work(self) -> None:
            threads.add(threading.get_ident())
            began = time.thread_time()
            while time.thread_time() - began < 0.15:  # computing, not waiting
                sum(range(1000))
            self.client.get("/")

    s = lp.run(Busy, out, target=target.url).summary()

    assert "kept the Python users' thread waiting" not in capfd.readouterr().err
    assert len(threads) == 1, "a body that only computes was moved to threads"
    assert s.task("work").requests >= 4 and s.overall.errors == 0
