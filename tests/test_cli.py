"""The `loadpilot` command as a user runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import loadpilot as lp
from tests.conftest import constant, get, read_line

CLI = [sys.executable, "-m", "loadpilot.cli"]


@pytest.mark.slow
def test_demo_runs_against_the_built_in_target_and_says_where_everything_is(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [*CLI, "demo", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "built-in target on http://127.0.0.1:" in done.stdout
    assert f"everything is in {tmp_path / 'demo'}" in done.stdout
    summary = lp.load_run(tmp_path / "demo").summary()
    assert summary.ended == "completed" and summary.overall.errors == 0
    assert summary.overall.requests == 8750  # a 5 s ramp to 500 rps, then 15 s at 500 rps


def test_target_command_serves_until_told_to_stop(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [*CLI, "target", "--port", "0", "--delay-ms", "2", "--for-s", "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = read_line(server.stdout).split()[-1]
        assert url.startswith("http://127.0.0.1:")
        r = lp.run(lp.Plan(target=url, load=constant(50, 1), tasks=[get("x")]), tmp_path / "r")
        assert r.summary().overall.errors == 0
        assert (r.summary().overall.service_ms.min or 0) >= 2.0
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0


def test_a_broken_plan_file_is_one_clear_line_and_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text('{"target": "http://127.0.0.1:1", "load": ')

    done = subprocess.run([*CLI, "run", str(bad)], capture_output=True, text=True, timeout=60)

    assert done.returncode == 2
    assert str(bad) in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_invalid_target_url_is_refused_with_exit_code_2(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "target": "http//127.0.0.1:8080",
                "load": {
                    "model": "open",
                    "stages": [{"kind": "constant", "rate": 1, "duration_s": 1}],
                },
                "tasks": [{"name": "x", "requests": [{"path": "/"}]}],
            }
        )
    )

    done = subprocess.run(
        [*CLI, "run", str(plan), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert "invalid target" in done.stderr and "http//127.0.0.1:8080" in done.stderr
    assert not (tmp_path / "r").exists()


def test_an_error_a_library_raises_for_a_stop_signal_is_that_signal(monkeypatch: Any) -> None:
    # Polars checks for signals inside a read: the KeyboardInterrupt raised there can come out
    # as an error of its own (a TypeError). After a stop signal, it is the signal: the run is
    # stopped and kept, and the exit code is Ctrl-C's.
    from loadpilot import cli

    class FakeRun:
        plan = lp.Plan(name="x", target="http://127.0.0.1:9", load=constant(1, 1), tasks=[get("a")])
        stopped = 0

        def stop(self) -> None:
            self.stopped += 1

    def progress(*_: object) -> list[object]:
        raise TypeError("'<unprintable str object>' is not a Polars data type")

    monkeypatch.setattr(cli, "_progress", progress)
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # this process's handlers stay
    run = FakeRun()
    once = cli._StopOnce()
    monkeypatch.setattr(cli, "_STOP", once)
    # No signal came: the error is an error.
    with pytest.raises(TypeError):
        cli._follow(run, None, None)  # type: ignore[arg-type]
    assert run.stopped == 0
    with pytest.raises(KeyboardInterrupt):
        once(signal.SIGINT, None)
    aborted, interrupted = cli._follow(run, None, None)  # type: ignore[arg-type]
    assert aborted == [] and type(interrupted) is KeyboardInterrupt and run.stopped == 1


def test_the_command_line_reference_is_made_from_the_parser() -> None:
    """docs/cli.md lists every verb and option the parser has, with defaults and help: a verb or
    flag added, renamed or removed without the docs fails here."""
    from tests.cli_reference import DOC, render

    made = render()
    assert DOC.read_text() == made, "docs/cli.md is stale: run `python tests/cli_reference.py`"
    from loadpilot.cli import _parser

    help_text = _parser().format_help()
    verbs = help_text.split("{", 1)[1].split("}", 1)[0].split(",")
    assert verbs and all(f"## loadpilot {v}\n" in made for v in verbs), verbs
    assert "`--junit` `JUNIT`" in made and "`--max-streams` `MAX_STREAMS`" in made
