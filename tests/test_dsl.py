"""The scenario DSL read as a user writes it: profiles, tasks, thresholds."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

import loadpilot as lp
from loadpilot import thresholds
from loadpilot.scenarios.scenario import scenario_of
from loadpilot.summary import Summary


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), (2.5, 2.5), ("30", 30), ("1.5", 1.5)],
)
def test_durations_read_as_users_write_them(text: str | float, seconds: float) -> None:
    assert lp.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "-1s", "0s", "", True, "inf", 1e300, float("nan")])
def test_invalid_durations_say_what_is_accepted(bad: object) -> None:
    with pytest.raises(lp.PlanError, match="invalid duration"):
        lp.parse_duration(bad)  # type: ignore[arg-type]


def test_profiles_join_in_sequence() -> None:
    p = lp.ramp(0, 100, "10s") + lp.hold(100, "1m") + lp.spike(100, 500, "5s", "20s")

    assert p.duration_s == 90
    assert [s.kind for s in p.stages] == ["ramp", "constant", "spike"]
    assert p.to_load().model == "open"


def test_open_and_closed_profiles_do_not_mix() -> None:
    with pytest.raises(lp.PlanError, match="cannot join"):
        lp.constant(10, "1s") + lp.users(5, "1s")


def test_users_ramp_then_hold_within_the_duration() -> None:
    p = lp.users(20, "1m", ramp="10s", think="500ms")
    # The duration is the whole run, ramp included (as k6 and Locust count it).
    assert p.duration_s == 60 and [s.duration_s for s in p.stages] == [10, 50]
    assert p.describe() == "ramp 0→20 users over 10s, then 20 users for 50s, 0.5s think time"
    with pytest.raises(lp.PlanError, match="ramp 60s is not shorter than the duration 60s"):
        lp.users(20, "1m", ramp="1m")

    load = p.to_load()
    assert load.model == "closed" and load.think_s == 0.5
    assert [s.kind for s in p.stages] == ["ramp", "constant"]


def test_a_task_of_fixed_requests_runs_in_the_engine() -> None:
    @lp.scenario(profile=lp.constant(10, "1s"))
    class Shop(lp.VUser):
        @lp.task(weight=5)
        def browse(self) -> None:
            """Look around."""
            self.client.get("/items", params={"user": "{{__vu}}"}, expect=lp.expect(status=200))

        @lp.task
        def buy(self) -> None:
            self.client.post(
                "/cart", json={"item": "{{__iter}}"}, expect=lp.expect(range(200, 300))
            )

    sc = scenario_of(Shop)
    assert sc is not None
    plan = sc.plan("http://127.0.0.1:1")

    assert [(t.name, t.weight) for t in plan.tasks] == [("browse", 5), ("buy", 1)]
    assert plan.tasks[0].requests[0].path == "/items?user={{__vu}}"
    assert plan.tasks[1].requests[0].expect.status_range == (200, 299)  # type: ignore[union-attr]
    assert sc.paths == {"browse": "engine", "buy": "engine"}


def test_a_python_logic_task_runs_in_python_says_why_and_leaves_the_others_in_the_engine() -> None:
    @lp.scenario(profile=lp.constant(10, "1s"))
    class Dice(lp.VUser):
        @lp.task
        def roll(self) -> None:
            import random

            self.client.get(f"/roll/{random.randint(1, 6)}")

        @lp.task
        def look(self) -> None:
            self.client.get("/")

    sc = scenario_of(Dice)
    assert sc is not None
    assert sc.path == "mixed" and sc.paths == {"roll": "python", "look": "engine"}
    assert sc.reason is not None and "task 'roll'" in sc.reason and "import random" in sc.reason
    assert "test_dsl.py" in sc.reason
    assert [t.path for t in sc.plan("http://127.0.0.1:1").tasks] == ["python", "engine"]


def test_weight_zero_is_refused_where_it_is_written() -> None:
    with pytest.raises(lp.ScenarioError, match=r"test_dsl\.py:\d+: task 'x' has weight 0"):

        class _U(lp.VUser):
            @lp.task(weight=0)
            def x(self) -> None:
                self.client.get("/")


def test_unknown_threshold_metrics_are_refused() -> None:
    with pytest.raises(lp.ScenarioError, match="unknown threshold metric 'p98'"):

        @lp.scenario(profile=lp.constant(1, "1s"), thresholds={"p98": "< 1s"})
        class _U(lp.VUser):
            @lp.task
            def x(self) -> None:
                self.client.get("/")


def test_feed_reads_a_csv_into_placeholders(tmp_path: Path) -> None:
    csv = tmp_path / "users.csv"
    csv.write_text("user,id\nann,1\nbob,2\n")

    f = lp.feed(csv, mode="unique")

    assert f.columns == ["user", "id"] and f.rows == [["ann", "1"], ["bob", "2"]]


def _summary(p99: float, error_rate: float, rps: float) -> Summary:
    stats = {
        "requests": 100,
        "errors": int(error_rate * 100),
        "errors_by_kind": {},
        "error_rate": error_rate,
        "missed": 0,
        "bytes_in": 0,
        "achieved_rps": rps,
        "latency_ms": {"p99": p99},
        "service_ms": {},
    }
    return Summary.model_validate(
        {
            "name": "s",
            "started_at": 0,
            "duration_s": 1,
            "planned_duration_s": 1,
            "ended": "completed",
            "model": "open",
            "target_requests": 100,
            "overall": stats,
            "tasks": [{"name": "a", "path": "engine", **stats}],
        }
    )


def test_thresholds_compare_with_units() -> None:
    checks = thresholds.parse_all(
        {"p99": "< 25ms", "error_rate": "< 0.1%", "rps": ">= 90", "a.p99": "<= 0.02s"}, ["a"]
    )

    verdicts = thresholds.evaluate(_summary(p99=20.0, error_rate=0.0, rps=100), checks)

    assert [v.passed for v in verdicts] == [True, True, True, True]
    failing = thresholds.evaluate(_summary(p99=30.0, error_rate=0.01, rps=50), checks)
    assert [v.passed for v in failing] == [False, False, False, False]
    assert "FAIL  p99 < 25ms  (actual 30.000 ms)" == str(failing[0])


def test_cli_thresholds_parse_compactly() -> None:
    t = thresholds.parse_cli("browse.p99<=20ms", ["browse"])
    assert (t.task, t.metric, t.op, t.value) == ("browse", "p99", "<=", 20.0)
    with pytest.raises(lp.PlanError, match="names no task and no request"):
        thresholds.parse_cli("nope.p99<1ms", ["browse"], ["GET /items"])
    # A request name, with spaces and dots; when Python tasks may send any name, any.
    t = thresholds.parse_cli("GET /v1.2/items.p99 < 5ms", ["browse"], ["GET /v1.2/items"])
    assert (t.request, t.task, t.metric, t.value) == ("GET /v1.2/items", None, "p99", 5.0)
    assert thresholds.parse_cli("cart.error_rate<1%", ["browse"], None).request == "cart"


def test_a_scenario_without_source_code_at_hand_runs_as_python_users() -> None:
    import subprocess
    import sys

    code = (
        "import loadpilot as lp\n"
        "@lp.scenario(profile=lp.constant(1, '1s'))\n"
        "class S(lp.VUser):\n"
        "    @lp.task\n"
        "    def t(self):\n"
        "        self.client.get('/')\n"
        "from loadpilot.scenarios.scenario import scenario_of\n"
        "sc = scenario_of(S)\n"
        "print(sc.path, sc.reason)\n"
    )

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("python ") and "source code cannot be read" in done.stdout


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: lp.constant(-5, "1s"), "invalid rps: -5"),
        (lambda: lp.ramp(0, "fast", "1s"), "invalid to_rps: 'fast'"),
        (lambda: lp.users(-1, "1s"), "invalid users: -1"),
        (lambda: lp.step(1, 10, 0, "1s"), "invalid steps: 0"),
        (lambda: lp.spike(1, 10, "2s", "1s"), "shorter than its duration"),
    ],
)
def test_invalid_rates_and_shapes_say_what_is_wrong(make: object, message: str) -> None:
    with pytest.raises(lp.PlanError, match=re.escape(message)):
        make()  # type: ignore[operator]


def test_a_profile_knows_its_peak() -> None:
    p = lp.ramp(0, 300, "5s") + lp.hold(200, "5s") + lp.spike(50, 900, "1s", "4s")

    assert p.peak == 900
    assert lp.users(12, "1m", ramp="10s").peak == 12


@pytest.mark.slow
def test_a_feed_file_is_found_beside_its_scenario_or_named_with_its_line(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    import subprocess
    import sys

    work = tmp_path / "work"
    work.mkdir()
    (work / "users.csv").write_text("user\nalice\nbob\n")
    scenario = (
        "import loadpilot as lp\n\n"
        "@lp.scenario(profile=lp.constant(10, '1s'))\n"
        "class Shop(lp.VUser):\n"
        "    feed = lp.feed('users.csv')\n"
        "    @lp.task\n"
        "    def browse(self):\n"
        "        self.client.get('/json', params={'user': '{{user}}'})\n"
    )
    (work / "shop.py").write_text(scenario)
    run = [sys.executable, "-m", "loadpilot.cli", "run", "work/shop.py", "--target", target.url]
    done = subprocess.run(
        [*run, "--out", "r"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (work / "users.csv").unlink()
    missing = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "shop.py:5: feed 'users.csv': no such file" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_feed_takes_a_pandas_frame_like_a_polars_one() -> None:
    import pandas as pd

    frame = pd.DataFrame({"user": ["alice", "bob"], "n": [1, 2]})
    f = lp.feed(frame)
    assert (f.columns, f.rows) == (["user", "n"], [["alice", "1"], ["bob", "2"]])
    assert lp.feed(pl.from_dict({"user": ["alice", "bob"], "n": ["1", "2"]})).rows == f.rows


def test_run_metrics_convert_to_pandas_with_the_extra(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    run = lp.run(
        lp.Plan(
            target=target.url,
            load=lp.OpenLoad(stages=[lp.Constant(rate=20, duration_s=1)]),
            tasks=[lp.Task(name="a", requests=[lp.Request(path="/")])],
        ),
        tmp_path / "r",
    )
    frame = run.metrics.to_pandas()  # pandas and pyarrow: pip install '.[pandas]' from a checkout
    assert list(frame.columns) == run.metrics.columns and int(frame["requests"].sum()) == 20
    assert str(frame["time"].dt.tz) == "UTC"


@pytest.mark.slow
def test_profile_totals_are_the_engines_count_of_what_is_sent(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    # One step holds its target: the engine sends 100 a second, and the profile says so.
    one_step = lp.step(0, 100, 1, "1s")
    assert one_step.total == 100 and one_step.points() == [(0.0, 100.0), (1.0, 100.0)]
    # Worked by hand: a ramp from 0 to 60 over 1 s is 30; the step 100; the spike 10 for
    # 0.5 s and 50 for 0.5 s, 30.
    mixed = lp.ramp(0, 60, "1s") + one_step + lp.spike(10, 50, "0.5s", "1s")
    assert mixed.total == 30 + 100 + 30
    for profile, expected in ((one_step, 100), (mixed, 160)):
        before = target.served

        @lp.scenario(profile=profile)
        class S(lp.VUser):
            @lp.task
            def a(self) -> None:
                self.client.get("/")

        s = lp.run(S, tmp_path / f"r{len(profile.stages)}", target=target.url).summary()
        assert s.target_requests == expected, profile.describe()
        assert target.served - before == s.overall.requests == expected, profile.describe()


def test_a_subclass_scenario_runs_its_bases_tasks_with_its_own_settings() -> None:
    @lp.scenario(profile=lp.constant(400, "10s"))
    class Probe(lp.VUser):
        @lp.task
        def home(self) -> None:
            self.client.get("/")

        @lp.task(weight=2)
        def data(self) -> None:
            self.client.get("/json")

    @lp.scenario(profile=lp.constant(400, "10s"), connections=8)
    class FewConnections(Probe):
        @lp.task(weight=3)
        def data(self) -> None:  # replaces the base's
            self.client.get("/json?few=1")

    few = FewConnections.describe()
    assert [(t.name, t.weight) for t in few.tasks] == [("home", 1), ("data", 3)]
    assert few.path == "engine"
    assert few.plan("http://127.0.0.1:9").load.connections == 8  # type: ignore[union-attr]
    assert [(t.name, t.weight) for t in Probe.describe().tasks] == [("home", 1), ("data", 2)]
