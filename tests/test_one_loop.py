"""One engine loop for every iteration: engine bodies and Python bodies run in the same worker
loop, so the same scenario means the same on both paths; per-user hooks are engine-driven and
their values feed engine requests."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import pytest

import loadpilot as lp
from loadpilot.scenarios.scenario import scenario_of
from tests.conftest import Recorder

USERS = pl.DataFrame({"user": [f"u{i}" for i in range(8)]})


def test_on_start_values_feed_engine_tasks(recorder: Recorder, tmp_path: Path) -> None:
    @lp.scenario(profile=lp.constant(200, "1s"), connections=4)
    class Shop(lp.VUser):
        feed = lp.feed(USERS)

        def on_start(self) -> None:
            login = self.client.post("/login", json={"user": self.row["user"]})
            self.token = login.json()["token"]

        @lp.task
        def browse(self) -> None:
            self.client.get(
                "/items/{{__vu}}", headers={"Authorization": "Bearer {{token}}"}, name="items"
            )

    sc = scenario_of(Shop)
    assert sc is not None
    assert sc.paths == {"browse": "engine"} and sc.hooks.values == ["token"]
    s = lp.run(Shop, tmp_path / "r", target=recorder.url).summary()
    browse, hook = s.task("browse"), s.task("on_start")
    assert (browse.path, browse.requests, browse.errors) == ("engine", 200, 0)
    assert (hook.path, hook.iterations, hook.requests, hook.errors) == ("hook", 4, 4, 0)
    seen = list(recorder.seen)
    logins = [i for i, (m, p, _) in enumerate(seen) if (m, p) == ("POST", "/login")]
    items = [(p.removeprefix("/items/"), auth) for m, p, auth in seen if p.startswith("/items/")]
    assert len(logins) == 4 and len(items) == 200
    # Every user logged in before the run's clock started, and each request carries the
    # user's own token (user i's on_start saw feeder row i).
    assert max(logins) < min(i for i, (_, p, _) in enumerate(seen) if p.startswith("/items/"))
    assert {(vu, auth) for vu, auth in items} == {(str(i), f"Bearer t-u{i}") for i in range(4)}
    # The summary's start is the clock's: the first interval holds the logins and the
    # iterations due in it, not the set-up time.
    assert s.duration_s == pytest.approx(1.0, abs=0.05)


def test_on_start_that_does_not_set_a_value_it_promised_retires_the_user(
    recorder: Recorder, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    @lp.scenario(profile=lp.constant(20, "1s"), connections=2)
    class Forgetful(lp.VUser):
        def on_start(self) -> None:
            if False:  # noqa: SIM108 - the assignment the scenario reader sees
                self.token = "never"

        @lp.task
        def browse(self) -> None:
            self.client.get("/items", headers={"Authorization": "Bearer {{token}}"})

    s = lp.run(Forgetful, tmp_path / "r", target=recorder.url).summary()
    assert s.task("on_start").errors_by_kind["exception"] == 2
    assert s.task("browse").unsent == 20 and s.task("browse").requests == 0
    assert "did not set self.token" in capfd.readouterr().err


def test_on_stop_runs_when_a_run_is_stopped(recorder: Recorder, tmp_path: Path) -> None:
    @lp.scenario(profile=lp.users(3, "60s", think="50ms"))
    class Session(lp.VUser):
        def on_stop(self) -> None:
            self.client.get("/logout")

        @lp.task
        def look(self) -> None:
            self.client.get("/look")

    run = lp.start(Session, tmp_path / "r", target=recorder.url)
    deadline = time.monotonic() + 20
    while sum(p == "/look" for _, p, _ in list(recorder.seen)) < 10:
        assert time.monotonic() < deadline, "the run sends"
        time.sleep(0.02)
    run.stop()
    assert run.wait(timeout_s=15)
    s = run.summary()
    assert s.ended == "stopped" and s.task("look").path == "engine"
    logouts = [p for _, p, _ in list(recorder.seen) if p == "/logout"]
    assert len(logouts) == 3, "every user's on_stop ran, after the stop"
    # on_stop comes after the measurement: its requests are not counted. A look the stop cut
    # short reached the server but counts as cancelled, not as a request.
    looks = sum(p == "/look" for _, p, _ in list(recorder.seen))
    assert s.overall.requests <= looks <= s.overall.requests + s.overall.cancelled
    assert s.overall.requests + s.overall.cancelled >= 10


def _rows_scenario(python: bool) -> type[lp.VUser]:
    profile = lp.users(1, "1s", think="20ms")
    if python:

        @lp.scenario(profile=profile)
        class Rows(lp.VUser):
            feed = lp.feed(USERS, "random", seed=3)

            @lp.task
            async def pick(self) -> None:
                assert self.row is not None
                await self.client.get("/r/" + self.row["user"])

        return Rows

    @lp.scenario(profile=profile)
    class EngineRows(lp.VUser):
        feed = lp.feed(USERS, "random", seed=3)

        @lp.task
        def pick(self) -> None:
            self.client.get("/r/{{user}}")

    return EngineRows


@pytest.mark.slow
def test_feeder_rows_are_the_same_on_both_paths(tmp_path: Path) -> None:
    sequences = []
    for python in (False, True):
        with Recorder.serving() as server:
            cls = _rows_scenario(python)
            sc = scenario_of(cls)
            assert sc is not None and sc.path == ("python" if python else "engine")
            lp.run(cls, tmp_path / f"r{python}", target=server.url)
            sequences.append([p for _, p, _ in server.seen])
    engine, python_ = sequences
    n = min(len(engine), len(python_))
    assert n >= 20, (len(engine), len(python_))
    assert engine[:n] == python_[:n], "iteration k gets the same row on both paths"


@pytest.mark.slow
@pytest.mark.parametrize("python", [False, True], ids=["engine", "python"])
def test_closed_users_start_when_the_profile_wants_them_on_both_paths(
    python: bool, tmp_path: Path
) -> None:
    # 0 -> 4 users over 2 s: user i is wanted from i/4 * 2 s = 0.5 i s on.
    profile = lp.users(4, "3s", ramp="2s", think="100ms")
    if python:

        @lp.scenario(profile=profile)
        class Ramp(lp.VUser):
            @lp.task
            async def look(self) -> None:
                await self.client.get(f"/u/{id(self)}")

    else:

        @lp.scenario(profile=profile)
        class Ramp(lp.VUser):  # type: ignore[no-redef]
            @lp.task
            def look(self) -> None:
                self.client.get("/u/{{__vu}}")

    with Recorder.serving() as server:
        s = lp.run(Ramp, tmp_path / "r", target=server.url).summary()
        first: dict[str, float] = {}
        for at, path in server.arrivals:
            first.setdefault(path, at)
    t0 = s.started_at - time.time() + time.monotonic()  # the run's start on the monotonic clock
    starts = sorted(first.values())
    assert len(starts) == 4
    # Each user starts when the ramp reaches it (every 0.5 s): near its instant on the wall
    # clock (a busy 2-core machine may delay a Python-path start), and 0.5 s after the last.
    for i, at in enumerate(starts):
        late = at - t0 - 0.5 * i
        assert -0.15 < late < 0.15, f"user {i} started {late * 1000:.0f} ms off its instant"
    for a, b in zip(starts, starts[1:], strict=False):
        assert b - a == pytest.approx(0.5, abs=0.1), starts


@pytest.mark.parametrize("python", [False, True], ids=["engine", "python"])
def test_the_scenario_timeout_and_options_hold_on_both_paths(
    python: bool, target: lp.TargetServer, tmp_path: Path
) -> None:
    if python:

        @lp.scenario(profile=lp.constant(10, "1s"), timeout="100ms")
        class Slow(lp.VUser):
            @lp.task
            async def slow(self) -> None:
                await self.client.get("/?delay_ms=400")

            @lp.task
            async def opts(self) -> None:
                r = await self.client.options("/")
                assert r.status_code == 200

    else:

        @lp.scenario(profile=lp.constant(10, "1s"), timeout="100ms")
        class Slow(lp.VUser):  # type: ignore[no-redef]
            @lp.task
            def slow(self) -> None:
                self.client.get("/?delay_ms=400")

            @lp.task
            def opts(self) -> None:
                self.client.options("/")

    s = lp.run(Slow, tmp_path / "r", target=target.url).summary()
    slow, opts = s.task("slow"), s.task("opts")
    assert slow.errors_by_kind["timeout"] == slow.requests == 5
    assert (opts.requests, opts.errors) == (5, 0)


def test_the_cli_says_which_path_each_task_takes_and_what_on_start_feeds(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    import subprocess
    import sys

    scenario = tmp_path / "member.py"
    scenario.write_text(
        "import loadpilot as lp\n"
        "\n"
        '@lp.scenario(profile=lp.constant(20, "1s"), connections=2)\n'
        "class Member(lp.VUser):\n"
        "    def on_start(self):\n"
        '        self.token = self.client.post("/echo", content="t1").text\n'
        "\n"
        "    @lp.task\n"
        "    def browse(self):\n"
        '        self.client.get("/json", headers={"Authorization": "Bearer {{token}}"})\n'
        "\n"
        "    @lp.task\n"
        "    async def cart(self):\n"
        '        await self.client.get("/json")\n'
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadpilot.cli",
            "run",
            str(scenario),
            "--target",
            target.url,
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "browse (weight 1, engine), cart (weight 1, python)" in done.stdout
    assert "per-user values from on_start: token" in done.stdout
    assert "python path: task 'cart'" in done.stdout
    s = lp.load_run(tmp_path / "r").summary()
    assert s.task("on_start").requests == 2 and s.task("browse").errors == 0
