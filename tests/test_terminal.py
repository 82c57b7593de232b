"""What `loadpilot run` prints while a run goes and at its end."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import loadpilot as lp

SCENARIOS = """
import loadpilot as lp

@lp.scenario(profile=lp.ramp(0, 100, "2s") + lp.hold(100, "2s"), thresholds={"p99": "<25ms"})
class Open(lp.VUser):
    @lp.task
    def a(self):
        self.client.get("/")

@lp.scenario(profile=lp.users(5, "3s", ramp="1s", think="100ms"))
class Closed(lp.VUser):
    @lp.task
    def a(self):
        self.client.get("/")
"""


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "s.py"
    f.write_text(textwrap.dedent(SCENARIOS))
    return subprocess.run(
        [sys.executable, "-m", "loadpilot.cli", "run", str(f), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def seconds_shown(out: str) -> list[str]:
    return re.findall(r"^\s+(\d+/\d+) s ", out, re.M)


@pytest.mark.slow
def test_duration_keeps_the_profiles_shape_and_says_so(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    done = run(tmp_path, "--scenario", "Open", "--target", target.url, "--duration", "2",
               "--out", str(tmp_path / "r"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "profile (from the command line): ramp 0→100/s over 1s, then 100/s for 1s" in done.stdout
    stages = json.loads((tmp_path / "r" / "plan.json").read_text())["load"]["stages"]
    assert [(s["kind"], s["duration_s"]) for s in stages] == [("ramp", 1.0), ("constant", 1.0)]
    # Every second is shown, the last one included.
    assert seconds_shown(done.stdout) == ["1/2", "2/2"]
    assert lp.load_run(tmp_path / "r").summary().overall.requests == 150


@pytest.mark.slow
def test_a_closed_model_shows_its_users_each_second(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    done = run(
        tmp_path, "--scenario", "Closed", "--target", target.url, "--out", str(tmp_path / "r")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert seconds_shown(done.stdout) == ["1/3", "2/3", "3/3"]
    lines = [ln for ln in done.stdout.splitlines() if re.match(r"^\s+\d+/3 s ", ln)]
    assert all("(users 5)" in ln for ln in lines[1:]), lines
    assert "target" not in "".join(lines)


def test_thresholds_read_alike_however_they_were_written(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    done = run(tmp_path, "--scenario", "Open", "--target", target.url, "--duration", "1",
               "--threshold", "p99 <= 30ms", "--out", str(tmp_path / "r"))  # fmt: skip
    # How each threshold reads, whatever its verdict (a hiccup may fail p99 < 25ms: this test is
    # about the spelling).
    verdicts = [
        re.sub(r"^(pass|FAIL)\s+", "", ln.strip())
        for ln in done.stdout.splitlines()
        if re.match(r"\s*(pass|FAIL)\s", ln)
    ]
    assert [v[: v.index("(")].strip() for v in verdicts] == ["p99 < 25ms", "p99 <= 30ms"]


def test_nothing_answered_reads_as_a_dash_live_and_in_the_summary(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = run(tmp_path, "--scenario", "Open", "--target", f"http://127.0.0.1:{port}",
               "--duration", "1", "--out", str(tmp_path / "r"))  # fmt: skip
    assert done.returncode == 1  # the p99 threshold has nothing to pass on
    live = [ln for ln in done.stdout.splitlines() if re.match(r"^\s+\d+/1 s ", ln)]
    assert live and "p50       - ms" in live[0] and "0.00" not in live[0], live
    assert re.search(r"^all .* -\s+-\s+-\s+-$", done.stdout, re.M), done.stdout


def test_help_is_plain_text() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadpilot.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "``" not in done.stdout and "143" in done.stdout
    run_help = subprocess.run(
        [sys.executable, "-m", "loadpilot.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "keeping its shape" in " ".join(run_help.stdout.split())


def run_in_terminal(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Runs ``loadpilot run`` with a pseudo-terminal as its standard output (as a user at a
    terminal sees it) and returns its exit code and everything it wrote, colours included."""
    import os
    import pty

    f = tmp_path / "s.py"
    f.write_text(textwrap.dedent(SCENARIOS))
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "LINES": "50", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadpilot.cli", "run", str(f), *args],
        stdout=follower,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(follower)
    import select

    chunks = []
    deadline = time.monotonic() + 120
    while True:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            os.close(leader)
            pytest.fail("the run in the terminal did not end within 120 s")
        ready, _, _ = select.select([leader], [], [], 1.0)
        if not ready:
            continue
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_a_terminal_gets_a_redrawn_panel_and_a_coloured_summary(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    code, out = run_in_terminal(
        tmp_path, "--scenario", "Open", "--target", target.url, "--out", str(tmp_path / "r"),
        "--threshold", "p99<1000ms", "--threshold", "p50<0.001ms",
    )  # fmt: skip
    assert code == 1, out  # the second threshold fails
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    # The panel: progress through the profile's stages, per-task figures of the last second.
    assert "Open · open model" in plain
    assert "stage 1/2: ramp 0→100/s" in plain and "stage 2/2: 100/s" in plain
    assert re.search(r"4\.0/4 s", plain), plain[-3000:]
    for column in ("rate/s", "target/s", "p50 ms", "p99 ms", "service p99", "errors", "missed"):
        assert column in plain
    # Redrawn in place (the cursor moves up over the previous frame), not appended.
    assert "\x1b[" in out and ("\x1b[1A" in out or "\x1b[2K" in out)
    assert not seconds_shown(plain), "no plain per-second lines at a terminal"
    # The summary as a table, each threshold coloured by its verdict.
    assert "p99.9 ms" in plain and "cancelled" in plain and "unsent" in plain
    assert re.search(r"\x1b\[[0-9;]*32m\s*PASS", out) and re.search(r"\x1b\[[0-9;]*31m\s*FAIL", out)
    # One word for each verdict.
    assert re.search(r"PASS\s+p99 < 1000ms", plain) and re.search(r"FAIL\s+p50 < 0.001ms", plain)
    assert not re.search(r"PASS\s+pass|FAIL\s+FAIL", plain), plain[-2000:]
    assert "accounted for: 300 due" in plain


@pytest.mark.slow
def test_a_closed_model_panel_shows_users_against_the_profile(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    code, out = run_in_terminal(
        tmp_path, "--scenario", "Closed", "--target", target.url, "--out", str(tmp_path / "r")
    )
    assert code == 0, out
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert "users" in plain and re.search(r"\b5/5\b", plain), plain[-3000:]
