"""`loadpilot run FILE.py`: scenarios from files, thresholds as CI gates, and bad input."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import loadpilot as lp
from tests.conftest import Recorder, assert_stopped_on_time, interrupt_cli

CLI = [sys.executable, "-m", "loadpilot.cli"]

SHOP = """
import loadpilot as lp

@lp.scenario(profile=lp.constant(rps=100, duration="2s"), thresholds={"error_rate": "< 1%"})
class Shop(lp.VUser):
    @lp.task(weight=3)
    def browse(self):
        self.client.get("/json", expect=lp.expect(status=200, json_path="$.ok", equals=True))

    @lp.task
    def echo(self):
        self.client.post("/echo", json={"n": "{{__iter}}"}, expect=lp.expect(body_contains="n"))

@lp.scenario(profile=lp.users(4, "2s", think="50ms"), name="Idle")
class Quiet(lp.VUser):
    @lp.task
    def look(self):
        self.client.get("/")
"""


def _write(tmp_path: Path, text: str, name: str = "shop.py") -> Path:
    f = tmp_path / name
    f.write_text(textwrap.dedent(text))
    return f


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_scenario_file_runs_and_its_thresholds_pass(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    f = _write(tmp_path, SHOP)

    done = _run(
        "run", str(f), "--scenario", "Shop", "--target", target.url, "--out", str(tmp_path / "r")
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "browse (weight 3, engine)" in done.stdout
    assert "pass  error_rate < 1%" in done.stdout
    summary = lp.load_run(tmp_path / "r").summary()
    assert summary.overall.requests == 200
    assert [t.requests for t in summary.tasks] == [150, 50]


@pytest.mark.slow
def test_a_failed_threshold_exits_1(target: lp.TargetServer, tmp_path: Path) -> None:
    f = _write(tmp_path, SHOP)

    done = _run(
        "run",
        str(f),
        "--scenario",
        "Shop",
        "--target",
        target.url,
        "--threshold",
        "p99<0.001ms",
        "--out",
        str(tmp_path / "r"),
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  p99 < 0.001ms" in done.stdout  # one spelling, however it was written


def test_target_comes_from_the_environment_and_overrides_apply(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    f = _write(tmp_path, SHOP)

    done = subprocess.run(
        [
            *CLI,
            "run",
            str(f),
            "--scenario",
            "Idle",
            "--duration",
            "1s",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "LOADPILOT_TARGET": target.url},
    )

    assert done.returncode == 0, done.stdout + done.stderr
    s = lp.load_run(tmp_path / "r").summary()
    assert s.model == "closed" and s.planned_duration_s == 1


@pytest.mark.slow
def test_an_unreachable_target_completes_and_exits_3(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = _write(tmp_path, SHOP.replace('thresholds={"error_rate": "< 1%"}', "thresholds={}"))

    done = _run(
        "run",
        str(f),
        "--scenario",
        "Shop",
        "--target",
        f"http://127.0.0.1:{port}",
        "--out",
        str(tmp_path / "r"),
    )

    assert done.returncode == 3, done.stdout + done.stderr
    assert "requests failed: connect 200" in done.stdout
    assert lp.load_run(tmp_path / "r").summary().ended == "completed"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import loadpilot as lp\ndef broken(:\n", "bad.py:2: syntax error"),
        (
            "import loadpilot as lp\nx = 1\nraise RuntimeError('boom')\n",
            "bad.py:3: RuntimeError: boom",
        ),
        ("import loadpilot as lp\n", "no scenario"),
        (
            "import loadpilot as lp\n"
            "@lp.scenario(profile=lp.constant(1, 'soon'))\n"
            "class S(lp.VUser):\n"
            "    @lp.task\n"
            "    def t(self):\n"
            "        self.client.get('/')\n",
            "bad.py:2: PlanError: invalid duration: 'soon'",
        ),
    ],
)
def test_a_broken_scenario_file_is_one_line_with_file_and_line(
    tmp_path: Path, source: str, message: str
) -> None:
    f = _write(tmp_path, source, "bad.py")

    done = _run("run", str(f), "--target", "http://127.0.0.1:9")

    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "Nope"], "no scenario 'Nope'; scenarios: Shop, Idle"),
        ([], "several scenarios (Shop, Idle); pick one with --scenario"),
        (["--scenario", "Shop", "--threshold", "p98<1ms"], "unknown threshold metric 'p98'"),
        (["--scenario", "Shop", "--duration", "5 minutes"], "invalid duration"),
    ],
)
def test_usage_errors_exit_2_with_one_clear_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    f = _write(tmp_path, SHOP)

    done = _run("run", str(f), "--target", "http://127.0.0.1:9", *args)

    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_an_invalid_target_url_exits_2(tmp_path: Path) -> None:
    f = _write(tmp_path, SHOP)

    done = _run("run", str(f), "--scenario", "Shop", "--target", "localhost:8080")

    assert done.returncode == 2
    assert "invalid target" in done.stderr


@pytest.mark.slow
def test_ctrl_c_stops_within_a_second_and_prints_the_partial_summary(
    recorder: Recorder, tmp_path: Path
) -> None:
    f = _write(tmp_path, SHOP.replace('duration="2s"', 'duration="60s"'))
    code, out, err, sent = interrupt_cli(
        [
            "run",
            str(f),
            "--scenario",
            "Shop",
            "--target",
            recorder.url,
            "--out",
            str(tmp_path / "r"),
        ]
    )

    assert code == 130, out + err
    assert "stopping: keeping everything measured so far" in out and "ended: stopped" in out
    s = lp.load_run(tmp_path / "r").summary()
    # Nothing was sent after the stop, on the server's clock; what was due up to the stop ran,
    # or is counted as cancelled or unsent.
    assert_stopped_on_time(recorder, sent, s)
    assert s.target_requests == pytest.approx(100 * s.duration_s, abs=2)
    assert s.overall.errors == 0, s.overall
    assert s.target_requests == s.overall.iterations + s.overall.cancelled + s.overall.unsent
    assert s.overall.requests >= s.target_requests - 10


@pytest.mark.slow
def test_abort_on_fail_stops_the_run_at_the_first_failed_threshold(tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        """
        import loadpilot as lp

        @lp.scenario(profile=lp.constant(rps=50, duration="60s"),
                     thresholds={"p99": "< 5ms"}, abort_on_fail=True)
        class Slow(lp.VUser):
            @lp.task
            def get(self):
                self.client.get("/")
        """,
    )
    with lp.start_target(delay_ms=20) as target:
        started = time.monotonic()
        done = _run("run", str(f), "--target", target.url, "--out", str(tmp_path / "r"))
        took = time.monotonic() - started

    assert done.returncode == 1, done.stdout + done.stderr
    assert "aborting: FAIL  p99 < 5ms" in done.stdout
    assert took < 15, f"took {took:.1f} s of a 60 s run"
    assert lp.load_run(tmp_path / "r").summary().ended == "aborted"
