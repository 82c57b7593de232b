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
