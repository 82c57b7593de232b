"""What the README and the docs promise, each held to it: exit codes and their precedence, where
the target comes from, stopping from a notebook, the run directory's formats, error kinds, the
load models' promises, the built-in target's flags, and compare and report options."""

from __future__ import annotations

import _thread
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pytest
from conftest import read_line
from hdrh.histogram import HdrHistogram
from hostile import HostileServer

import loadpilot as lp
from tests.conftest import (
    Recorder,
    assert_served,
    constant,
    get,
    read_with_hdrh,
    wait_for_rows,
)

CLI = [sys.executable, "-m", "loadpilot.cli"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, env=env or dict(os.environ)
    )


def plan_json(tmp_path: Path, plan: lp.Plan, name: str = "plan.json") -> Path:
    f = tmp_path / name
    f.write_text(plan.to_json())
    return f


# --- exit codes -------------------------------------------------------------------------------


def one_in_a_hundred_fails(target: str, seconds: float = 1) -> lp.Plan:
    return lp.Plan(
        target=target,
        load=constant(100, seconds),
        tasks=[get("ok", "/", weight=99), get("bad", "/status/500")],
    )


@pytest.mark.slow
def test_failed_requests_judged_by_a_passing_error_rate_threshold_exit_0(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    f = plan_json(tmp_path, one_in_a_hundred_fails(target.url))
    judged = cli("run", str(f), "--out", str(tmp_path / "a"), "--threshold", "error_rate<5%")
    unjudged = cli("run", str(f), "--out", str(tmp_path / "b"))
    assert judged.returncode == 0, judged.stdout
    assert unjudged.returncode == 3, unjudged.stdout
    assert "requests failed: status 1" in unjudged.stdout


@pytest.mark.slow
def test_a_failed_threshold_wins_over_failed_requests_and_ctrl_c_over_both(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    f = plan_json(tmp_path, one_in_a_hundred_fails(target.url))
    failed = cli("run", str(f), "--out", str(tmp_path / "a"), "--threshold", "p99<1us")
    assert failed.returncode == 1, failed.stdout
    long = plan_json(tmp_path, one_in_a_hundred_fails(target.url, 60), "long.json")
    proc = subprocess.Popen(
        [*CLI, "run", str(long), "--out", str(tmp_path / "b"), "--threshold", "p99<1us"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_rows(tmp_path / "b", 4)  # two seconds of two tasks: a failed request among them
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "FAIL  p99" in out


@pytest.mark.slow
def test_abort_on_fail_from_the_command_line(target: lp.TargetServer, tmp_path: Path) -> None:
    f = plan_json(tmp_path, one_in_a_hundred_fails(target.url, 60))
    done = cli(
        "run", str(f), "--out", str(tmp_path / "r"), "--threshold", "p99<1us", "--abort-on-fail"
    )
    assert done.returncode == 1, done.stdout
    s = lp.load_run(tmp_path / "r").summary()
    assert s.ended == "aborted" and s.duration_s < 10


def test_target_flag_wins_over_the_environment(target: lp.TargetServer, tmp_path: Path) -> None:
    f = plan_json(
        tmp_path, lp.Plan(target="http://127.0.0.1:9", load=constant(20, 1), tasks=[get("a")])
    )
    env = {**os.environ, "LOADPILOT_TARGET": "http://127.0.0.1:9"}
    done = cli("run", str(f), "--target", target.url, "--out", str(tmp_path / "r"), env=env)
    assert done.returncode == 0, done.stdout
    s = lp.load_run(tmp_path / "r").summary()
    assert (s.overall.requests, s.overall.errors) == (20, 0)
    assert json.loads((tmp_path / "r" / "plan.json").read_text())["target"] == target.url


# --- the notebook and the run directory --------------------------------------------------------


def test_a_kernel_interrupt_stops_the_run_and_keeps_its_data(
    target: lp.TargetServer, out: Path
) -> None:
    plan = lp.Plan(target=target.url, load=constant(100, 60), tasks=[get("a")])
    # A kernel's SIGINT goes to Python's own handler, as in Jupyter, whatever this process
    # inherited (a shell that starts a job in the background ignores SIGINT for it) or an
    # earlier test left behind (asyncio's).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # What Jupyter's "interrupt the kernel" does: SIGINT to the kernel's main thread.
        timer = threading.Timer(1.5, _thread.interrupt_main)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            lp.run(plan, out)
        timer.join()
    finally:
        signal.signal(signal.SIGINT, inherited)
    loaded = lp.load_run(out)
    s = loaded.summary()
    assert s.ended == "stopped" and 1.0 < s.duration_s < 3.0
    assert s.overall.requests == int(loaded.metrics["requests"].sum()) > 100
    # The interrupted run's Parquet was written, whole: the rows of its metrics.jsonl.
    parquet = pl.read_parquet(out / "metrics.parquet").filter(pl.col("request").is_null())
    assert parquet.height == len(loaded.metrics)
    assert int(parquet["requests"].sum()) == s.overall.requests


@pytest.mark.slow
def test_parquet_time_is_utc_and_a_torn_jsonl_line_is_dropped(
    target: lp.TargetServer, out: Path, tmp_path: Path
) -> None:
    run = lp.run(lp.Plan(target=target.url, load=constant(50, 2), tasks=[get("a")]), out)
    s = run.summary()
    raw = pl.read_parquet(out / "metrics.parquet")
    assert raw.schema["time"] == pl.Datetime("us", "UTC")
    assert raw["time"][0].timestamp() == pytest.approx(s.started_at, abs=0.001)
    # A writer killed mid-line leaves half a row: the reader keeps every complete one.
    cut = tmp_path / "cut"
    cut.mkdir()
    for name in ("plan.json", "latency.hlog", "service.hlog"):
        (cut / name).write_bytes((out / name).read_bytes())
    jsonl = (out / "metrics.jsonl").read_bytes()
    (cut / "metrics.jsonl").write_bytes(jsonl + jsonl.splitlines()[0][:40])
    loaded = lp.load_run(cut)
    assert len(loaded.metrics) == len(run.metrics)
    assert loaded.summary().ended == "interrupted"


@pytest.mark.slow
def test_service_hlog_reads_in_an_independent_reader(target: lp.TargetServer, out: Path) -> None:
    s = lp.run(lp.Plan(target=target.url, load=constant(300, 2), tasks=[get("a")]), out).summary()
    merged = HdrHistogram(1, 3_600_000_000, 3)
    for h in read_with_hdrh(out / "service.hlog"):
        merged.add(h)
    assert merged.get_total_count() == s.overall.requests == 600
    assert merged.get_value_at_percentile(99) / 1000 == s.overall.service_ms.p99


def test_transport_errors_stay_out_of_the_latency_histograms(out: Path) -> None:
    # A server that closes each connection as soon as it has read the request: no answer.
    with HostileServer(lambda head: b"", close_after=True) as server:
        plan = lp.Plan(target=server.url, load=constant(20, 1), tasks=[get("a")])
        run = lp.run(plan, out)
    s = run.summary()
    assert s.overall.requests == s.overall.errors_by_kind["reset"] == 20
    assert run.histogram().count == 0 and s.overall.latency_ms.p99 is None


def test_a_name_that_does_not_resolve_is_a_dns_error(out: Path) -> None:
    # A label longer than DNS allows (63 bytes): the resolver refuses it on this machine before
    # any query is sent, so nothing leaves loopback, and the name resolves nowhere.
    host = "x" * 64 + ".localhost"
    plan = lp.Plan(target=f"http://{host}:8080", load=constant(10, 1), tasks=[get("a")])
    s = lp.run(plan, out).summary()
    assert s.overall.errors_by_kind["dns"] == s.overall.requests == 10


# --- load models --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_ramp_down_stops_users(target: lp.TargetServer, out: Path) -> None:
    plan = lp.Plan(
        target=target.url,
        load=lp.ClosedLoad(
            stages=[lp.Constant(rate=10, duration_s=1), lp.Ramp(from_=10, to=0, duration_s=3)],
            think_s=0.05,
        ),
        tasks=[get("a")],
    )
    m = lp.run(plan, out).metrics.filter(pl.col("elapsed_s") < 4).sort("elapsed_s")
    active = m["active_users"].to_list()
    assert active[0] == 10 and active == sorted(active, reverse=True) and active[-1] <= 4, active
    assert m["requests"][-1] < m["requests"][0] / 2


def test_weights_are_exact_at_fifty_thousand_requests_a_second(
    target: lp.TargetServer, out: Path
) -> None:
    plan = lp.Plan(
        target=target.url,
        load=constant(50_000, 1),
        tasks=[get("a", "/a", weight=5), get("b", "/b")],
    )
    s = lp.run(plan, out).summary()
    # Exact in the arrivals, whatever this machine could send of them.
    assert [t.target_requests for t in s.tasks] == [41_667, 8_333]
    served = target.served_by_path
    for t, path in zip(s.tasks, ["/a", "/b"], strict=True):
        assert_served(t, served[path])
        assert t.target_requests == t.iterations + t.cancelled + t.unsent


@pytest.mark.slow
def test_connections_bound_the_requests_in_flight(out: Path) -> None:
    with lp.start_target(delay_ms=100) as slow:
        plan = lp.Plan(
            target=slow.url,
            load=constant(50, 2, connections=2),
            tasks=[get("a")],
        )
        run = lp.run(plan, out)
    s = run.summary()
    assert run.metrics["in_flight"].max() <= 2
    # Two connections, 100 ms a request: at most 20 a second get out; the rest say so.
    assert s.overall.requests <= 2 * 2 / 0.1 + 2
    assert s.overall.missed > 0 and s.overall.unsent > 0


@pytest.mark.slow
def test_feeder_rows_cycle_in_order_and_random_rows_repeat_with_their_seed(
    recorder: Recorder, tmp_path: Path
) -> None:
    rows = ["u0", "u1", "u2"]

    def rows_by_iteration(mode: str, seed: int, out: str) -> dict[int, str]:
        recorder.arrivals.clear()
        plan = lp.Plan(
            target=recorder.url,
            load=constant(20, 2, connections=8),
            tasks=[get("a", "/{{__iter}}/{{user}}")],
            feeder=lp.Feeder(columns=["user"], rows=[[r] for r in rows], mode=mode, seed=seed),  # type: ignore[arg-type]
        )
        lp.run(plan, tmp_path / out)
        seen = dict(p.strip("/").split("/") for _, p in recorder.arrivals)
        assert len(seen) >= 30, "most of the 40 iterations reached the server"
        return {int(k): v for k, v in seen.items()}

    cycle = rows_by_iteration("cycle", 0, "c")
    assert all(user == rows[k % 3] for k, user in cycle.items()), cycle
    first = rows_by_iteration("random", 7, "r1")
    again = rows_by_iteration("random", 7, "r2")
    other = rows_by_iteration("random", 8, "r3")
    both = first.keys() & again.keys()
    assert all(first[k] == again[k] for k in both), "the same seed, the same rows"
    assert any(first[k] != other[k] for k in first.keys() & other.keys()), "another seed"
    assert set(first.values()) == set(rows) and any(first[k] != rows[k % 3] for k in first)


def test_loadpilot_threads_sets_the_engine_threads(tmp_path: Path) -> None:
    # The runtime's threads start as the OS schedules them: count until the number asked for
    # is there (or 10 s pass), then once more a moment later, so none beyond it is missed.
    script = (
        "import os, sys, time, loadpilot as lp\n"
        "t = lp.start_target()\n"
        "def count():\n"
        "    names = [open(f'/proc/self/task/{i}/comm').read().strip()"
        " for i in os.listdir('/proc/self/task')]\n"
        "    return sum(n.startswith('loadpilot-engin') for n in names)\n"
        "deadline = time.monotonic() + 10\n"
        "while count() < int(sys.argv[1]) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "time.sleep(0.2)\n"
        "print(count())\n"
    )
    for n in ("1", "3"):
        done = subprocess.run(
            [sys.executable, "-c", script, n],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "LOADPILOT_THREADS": n},
        )
        assert done.stdout.strip() == n, done.stdout + done.stderr


# --- the built-in target's flags ----------------------------------------------------------------


def target_process(*flags: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*CLI, "target", "--port", "0", "--for-s", "60", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, read_line(proc.stdout).split()[-1]


@pytest.mark.slow
def test_the_target_flags_work_from_the_command_line(tmp_path: Path) -> None:
    procs = []
    try:
        tls, tls_url = target_process("--tls", "--error-rate", "0.5", "--seed", "3")
        stall, stall_url = target_process("--stall-ms", "400", "--stall-every-s", "1")
        busy, busy_url = target_process("--delay-ms", "50", "--concurrency", "1")
        procs = [tls, stall, busy]
        assert tls_url.startswith("https://")
        s = lp.run(
            lp.Plan(target=tls_url, insecure=True, load=constant(100, 1), tasks=[get("a")]),
            tmp_path / "tls",
        ).summary()
        assert s.overall.requests == 100 and 30 <= s.overall.errors_by_kind["status"] <= 70
        s = lp.run(
            lp.Plan(target=stall_url, load=constant(50, 2), tasks=[get("a")]), tmp_path / "stall"
        ).summary()
        assert s.overall.latency_ms.max is not None and s.overall.latency_ms.max >= 300
        s = lp.run(
            lp.Plan(target=busy_url, load=constant(40, 2), tasks=[get("a")]), tmp_path / "busy"
        ).summary()
        # One worker, 50 ms a request: at most 20 a second, whatever is offered; the queue
        # that builds up shows in latency.
        assert s.overall.requests <= 20 * (s.duration_s + s.drain_s) + 2
        assert s.overall.latency_ms.max is not None and s.overall.latency_ms.max > 500
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


# --- compare and report -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("pair") / "base"
    cand = base.with_name("cand")
    with lp.start_target(delay_ms=1, delay_max_ms=4, seed=2) as t:
        lp.run(
            lp.Plan(target=t.url, load=constant(200, 4), tasks=[get("a", weight=2), get("b")]),
            base,
        )
        lp.run(
            lp.Plan(target=t.url, load=constant(200, 4), tasks=[get("a", weight=2), get("c")]),
            cand,
        )
    return base, cand


@pytest.mark.slow
def test_compare_covers_shared_tasks_a_window_and_service_time(pair: tuple[Path, Path]) -> None:
    base, cand = pair
    c = lp.compare(base, cand, service=True, start=1)
    # Tasks in one run only are left out of the per-task rows; "all" holds everything.
    assert set(c.frame["task"]) == {"a", "all"}
    of_a = (pl.col("task") == "a") & (pl.col("metric") == "p99")
    p99 = c.frame.filter(of_a & pl.col("request").is_null())
    window = lp.load_run(base).histogram("a", service=True, start=1)
    assert p99["baseline"].item() == window.percentile(99)
    # Task a's one request name, "GET /", from its own log: the same requests, the same p99.
    named = c.frame.filter(of_a & (pl.col("request") == "GET /"))
    assert named["baseline"].item() == window.percentile(99)
    done = cli("compare", str(base), str(cand), "--service", "--from", "1s", "--json")
    assert done.returncode in (0, 1), done.stderr
    rows = json.loads(done.stdout)["changes"]
    a99 = next(
        r for r in rows if r["task"] == "a" and r["metric"] == "p99" and r["request"] is None
    )
    assert a99["baseline"] == window.percentile(99)


@pytest.mark.slow
def test_a_report_shows_the_plan(pair: tuple[Path, Path], tmp_path: Path) -> None:
    import html

    page = lp.report(pair[0], tmp_path / "r.html").read_text()
    start = page.index("<summary>Plan</summary>")
    section = html.unescape(page[start : page.index("</details>", start)])
    assert '"connections": 256' in section and '"weight": 2' in section
    shown = section[section.index("{") : section.rindex("}") + 1]
    assert lp.Plan.model_validate_json(shown) == lp.load_run(pair[0]).plan


def test_the_cli_run_prints_when_everything_is_accounted_for(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    f = plan_json(tmp_path, lp.Plan(target=target.url, load=constant(30, 1), tasks=[get("a")]))
    done = cli("run", str(f), "--out", str(tmp_path / "r"))
    assert done.returncode == 0
    assert "accounted for: 30 due = 30 ran + 0 cancelled + 0 unsent" in done.stdout
