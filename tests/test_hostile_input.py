"""Bad input gets one clear line that says what and where, exit 2, no traceback, no hang; and
input that used to be silently wrong is either made right or refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Recorder, assert_stopped_on_time, constant, get, read_line

import loadpilot as lp


def cli(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadpilot.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def one_clean_error(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    last = lines[-1]
    for e in expected:
        assert e in last, last
    return last


def plan_file(tmp_path: Path, **changes: object) -> Path:
    plan = {
        "target": "http://127.0.0.1:9",
        "load": {"model": "open", "stages": [{"kind": "constant", "rate": 10, "duration_s": 1}]},
        "tasks": [{"name": "a", "requests": [{"path": "/"}]}],
    }
    plan.update(changes)
    f = tmp_path / "plan.json"
    f.write_text(json.dumps(plan))
    return f


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"timeout_s": 1e300}, ["plan.json", "timeout_s", "1e+300"]),
        (
            {
                "load": {
                    "model": "open",
                    "stages": [{"kind": "constant", "rate": 1, "duration_s": 1e300}],
                }
            },
            ["plan.json", "duration_s", "1e+300"],
        ),
        (
            {
                "load": {
                    "model": "closed",
                    "stages": [{"kind": "constant", "rate": 1e9, "duration_s": 1}],
                }
            },
            ["plan.json", "1000000000 virtual users", "max_users"],
        ),
        ({"target": "http://127.0.0.1:99999"}, ["99999", "is not a port"]),
    ],
    ids=["timeout", "duration", "users", "port"],
)
def test_a_plan_beyond_any_sense_is_refused_with_its_field(
    tmp_path: Path, change: dict[str, object], expected: list[str]
) -> None:
    f = plan_file(tmp_path, **change)
    done = cli("run", str(f), "--out", str(tmp_path / "r"))
    one_clean_error(done, *expected)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_inf_and_nan_in_a_plan_name_the_field_and_the_value(tmp_path: Path) -> None:
    f = tmp_path / "plan.json"
    f.write_text(
        '{"target": "http://127.0.0.1:9", "load": {"model": "open", "stages": '
        '[{"kind": "constant", "rate": Infinity, "duration_s": NaN}]}, '
        '"tasks": [{"name": "a", "requests": [{"path": "/"}]}]}'
    )
    last = one_clean_error(cli("run", str(f)), "plan.json", "rate", "inf")
    assert "null" not in last
    with pytest.raises(ValueError, match="finite"):
        lp.Constant(rate=float("nan"), duration_s=1)


def test_a_deeply_nested_or_binary_plan_file_is_named(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    one_clean_error(cli("run", str(deep)), "deep.json", "nested too deeply")
    binary = tmp_path / "blob.json"
    binary.write_bytes(bytes(range(128, 256)) * 3)
    one_clean_error(cli("run", str(binary)), "blob.json", "not a text file")


@pytest.mark.slow
def test_huge_durations_and_rates_from_the_command_line_are_refused(tmp_path: Path) -> None:
    scenario = tmp_path / "s.py"
    scenario.write_text(
        textwrap.dedent(
            """
            import loadpilot as lp

            @lp.scenario(profile=lp.constant(10, "1s"))
            class S(lp.VUser):
                @lp.task
                def a(self):
                    self.client.get("/")
            """
        )
    )
    base = ["run", str(scenario), "--target", "http://127.0.0.1:9"]
    one_clean_error(cli(*base, "--duration", "99999999999999999999h"), "at most a year")
    one_clean_error(cli(*base, "--rps", "inf"), "invalid rps", "inf")
    one_clean_error(cli(*base, "--rps", "nan"), "invalid rps", "nan")


def test_a_scenario_given_by_a_relative_path_keeps_its_line_number(tmp_path: Path) -> None:
    (tmp_path / "raises.py").write_text("import loadpilot as lp\n\n\nraise RuntimeError('boom')\n")
    one_clean_error(cli("run", "raises.py", cwd=tmp_path), "raises.py:4", "boom")


def test_paths_with_characters_that_need_escaping_are_percent_encoded(
    recorder: object, out: Path
) -> None:
    from conftest import Recorder

    assert isinstance(recorder, Recorder)
    plan = lp.Plan(
        target=recorder.url,
        load=constant(5, 1),
        tasks=[get("q", "/search?q=<b>x</b> {{word}}&city=Zürich")],
        vars={"word": "two words"},
    )
    s = lp.run(plan, out).summary()
    assert (s.overall.requests, s.overall.errors) == (5, 0)
    assert {p for _, p in recorder.arrivals} == {
        "/search?q=%3Cb%3Ex%3C/b%3E%20two%20words&city=Z%C3%BCrich"
    }


def test_a_report_to_a_directory_or_a_missing_parent_is_refused_before_the_run(
    tmp_path: Path,
) -> None:
    f = plan_file(tmp_path)
    for bad in [tmp_path, tmp_path / "missing" / "r.html"]:
        done = cli("run", str(f), "--out", str(tmp_path / "r"), "--report", str(bad))
        one_clean_error(done, str(bad))
        assert not (tmp_path / "r").exists(), "refused before anything ran"


@pytest.mark.slow
def test_broken_run_directories_are_one_line_errors(
    tmp_path: Path, target: lp.TargetServer
) -> None:
    good = tmp_path / "good"
    lp.run(lp.Plan(target=target.url, load=constant(20, 1), tasks=[get("a")]), good)
    blocked = tmp_path / "file"
    blocked.write_text("x")
    one_clean_error(cli("export", str(good), "--to", str(blocked)), str(blocked), "not a directory")

    corrupt = tmp_path / "corrupt"
    subprocess.run(["cp", "-r", str(good), str(corrupt)], check=True, timeout=60)
    (corrupt / "metrics.parquet").write_bytes(b"PAR1 not really")
    (corrupt / "summary.json").write_text('{"name": 3}')
    for args in (
        ["report", str(corrupt), "-o", str(tmp_path / "r.html")],
        ["compare", str(good), str(corrupt)],
        ["export", str(corrupt), "--to", str(tmp_path / "x")],
    ):
        one_clean_error(cli(*args), "corrupt")
    (corrupt / "metrics.parquet").unlink()  # the rows are read from metrics.jsonl then
    with pytest.raises(lp.RunDirError, match="summary.json"):
        lp.load_run(corrupt).summary()


def test_a_run_needing_more_descriptors_than_allowed_says_so_before_it_starts(
    tmp_path: Path,
) -> None:
    f = plan_file(
        tmp_path,
        load={
            "model": "open",
            "stages": [{"kind": "constant", "rate": 10, "duration_s": 1}],
            "connections": 5000,
        },
    )
    done = subprocess.run(
        ["bash", "-c", f"ulimit -n 1024 && exec {sys.executable} -m loadpilot.cli run {f}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    one_clean_error(done, "plan.json", "file descriptors", "limit is 1024", "ulimit -n")


@pytest.mark.slow
def test_the_built_in_target_warns_when_it_listens_beyond_loopback() -> None:
    done = cli("target", "--host", "0.0.0.0", "--port", "0", "--for-s", "0.2")
    assert done.returncode == 0
    assert "warning: --host 0.0.0.0" in done.stderr
    quiet = cli("target", "--port", "0", "--for-s", "0.2")
    assert "warning" not in quiet.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("keep", "fills"), [(0, "metrics.jsonl"), (5, "slow.jsonl")], ids=["rows", "slowest"]
)
def test_a_full_disk_stops_the_run_with_one_line_and_leaves_no_half_written_file(
    tmp_path: Path, target: lp.TargetServer, keep: int, fills: str
) -> None:
    # RLIMIT_FSIZE makes every file past 12 KiB fail to grow, as a full disk would (Python
    # ignores SIGXFSZ, so the write fails with EFBIG instead of killing the process). With
    # the slowest requests kept, their file (about 8 KiB a second here) is the first to fill.
    plan = lp.Plan(
        target=target.url,
        load=constant(200, 5),
        tasks=[get("a"), get("b", "/json"), get("c", "/?delay_ms=1")],
        keep_slowest=keep,
        keep_sample=min(keep, 2),
    )
    f = tmp_path / "plan.json"
    f.write_text(plan.to_json())
    out = tmp_path / "r"
    done = subprocess.run(
        [
            "bash",
            "-c",
            f"ulimit -f 12 && exec {sys.executable} -m loadpilot.cli run {f} --out {out}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    last = one_clean_error(done, fills)
    assert "File too large" in last
    assert not list(out.glob("*.tmp")), "no temporary file left behind"
    loaded = lp.load_run(out)
    assert len(loaded.metrics) >= 3, "the rows written before the disk filled are kept"
    if keep:
        assert not loaded.slowest(above=None).is_empty(), "and the slowest kept before it"
    # The summary is small enough to be written under this limit, and says the run failed.
    assert (out / "summary.json").exists()
    assert loaded.summary().ended == "failed"


def test_sigterm_stops_a_run_like_ctrl_c_and_exits_143(tmp_path: Path) -> None:
    import signal
    import time

    ten_s = {"model": "open", "stages": [{"kind": "constant", "rate": 50, "duration_s": 10}]}
    with Recorder.serving() as target:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadpilot.cli",
                "run",
                str(plan_file(tmp_path, load=ten_s)),
                "--target",
                target.url,
                "--out",
                str(tmp_path / "r"),
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        head = read_line(proc.stdout)
        assert head.startswith("run directory:")
        deadline = time.monotonic() + 30
        while len(target.arrivals) < 10:
            assert time.monotonic() < deadline, "the run sent nothing"
            time.sleep(0.02)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, out + err
    assert "Traceback" not in err
    s = lp.load_run(tmp_path / "r").summary()
    assert s.ended == "stopped"
    assert_stopped_on_time(target, sent, s)
    assert s.target_requests == s.overall.iterations + s.overall.cancelled + s.overall.unsent
