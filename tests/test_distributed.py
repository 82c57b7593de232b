"""Distributed runs on real nats-server processes and real agent processes, against the
built-in target over loopback: exact split and merge, faults (an agent killed, the coordinator
killed, NATS restarted), and agents that refuse what their operator did not allow."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from conftest import Recorder, assert_served, get, wait_for_rows
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

import loadpilot as lp
from loadpilot.allowlist import target_allowed
from loadpilot.cluster.protocol import AGENT_LOST_S, COORDINATOR_LOST_S, data_subject
from loadpilot.cluster.server import NatsServer

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


def agent(url: str, name: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loadpilot.cli", "agent", "--nats", url, "--name", name, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`loadpilot ARGS` to its end, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "loadpilot.cli", *args], capture_output=True, text=True, timeout=60
    )


def end(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def plan(target: str, rate: float, duration_s: float, **kw: object) -> lp.Plan:
    return lp.Plan(
        name="spread",
        target=target,
        load=lp.OpenLoad(stages=[lp.Constant(rate=rate, duration_s=duration_s)], connections=64),
        tasks=[get("browse", "/", weight=5), get("buy", "/json", weight=1)],
        **kw,  # type: ignore[arg-type]
    )


def events(run_dir: Path) -> list[dict[str, object]]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def hlog_total(path: Path, tag_prefix: str = "") -> HdrHistogram:
    total = HdrHistogram(1, 3_600_000_000, 3)
    reader = HistogramLogReader(str(path), HdrHistogram(1, 3_600_000_000, 3))
    while (h := reader.get_next_interval_histogram()) is not None:
        if h.get_tag().startswith(tag_prefix):
            total.add(h)
    return total


def lose_an_agent(r: lp.Run, index: int, sig: int = signal.SIGKILL) -> float:
    """Once every agent of ``r`` has reported two seconds, sends local agent ``index`` the
    signal; returns the instant (``time.monotonic()``) it was sent."""
    wait_for_rows(r.path, 2 * len(r._handle._children))  # type: ignore[attr-defined]
    sent = time.monotonic()
    os.kill(r._handle._children[index].proc.pid, sig)  # type: ignore[attr-defined]
    return sent


def test_three_agents_add_up_to_the_plan_and_the_server_exactly(tmp_path: Path) -> None:
    with lp.start_target() as target:
        r = lp.start(plan(target.url, 3000, 10), tmp_path / "run", agents=3)
        r.wait()
        s = r.summary()
        served = target.served
    assert s.ended == "completed"
    assert s.target_requests == 30_000
    assert s.overall.requests == 30_000 == served, (s.overall.requests, served)
    assert s.overall.errors == 0
    assert [(t.name, t.requests) for t in s.tasks] == [("browse", 25_000), ("buy", 5_000)]
    # Every agent did its third, and every 3rd arrival (not a third of the run): each agent's
    # schedule is a thousand a second in every second, and so is what it sent.
    agents = r.agents
    assert agents.height == 3 and set(agents["state"]) == {"done"}
    assert sorted(agents["requests"].to_list()) == [10_000, 10_000, 10_000]
    seconds = pl.read_parquet(r.path / "agents.parquet").filter(pl.col("interval_s") == 1.0)
    assert seconds.height == 3 * 10
    assert set(seconds["target_rps"]) == {1000.0}
    # (Answers are counted in the second they come back: a hiccup at a second's edge moves a
    # few between neighbours, never a third of the run.)
    assert all(abs(n - 1000) <= 200 for n in seconds["requests"]), seconds["requests"].to_list()
    # The merged distribution is the three agents' histograms added up, not an average.
    per_agent = hlog_total(r.path / "agents.hlog")
    merged = hlog_total(r.path / "latency.hlog")
    assert per_agent.get_total_count() == merged.get_total_count() == 30_000
    for q in (50, 99, 99.9):
        assert per_agent.get_value_at_percentile(q) == merged.get_value_at_percentile(q)
    assert s.overall.latency_ms.p99 == pytest.approx(
        merged.get_value_at_percentile(99) / 1000, rel=1e-3
    )
    # Rows add up to the summary, as a local run's do; the run directory has the same files.
    m = r.metrics
    assert int(m["requests"].sum()) == 30_000
    assert m.filter(m["task"] == "browse")["target_rps"].max() == pytest.approx(2500)
    loaded = lp.load_run(r.path)
    assert loaded.summary().overall.requests == 30_000
    assert (r.path / "metrics.parquet").exists() and (r.path / "agents.parquet").exists()
    # One instant: every agent's interval n starts at the same moment (each row's time is its
    # interval's start, from the start instant the coordinator gave every agent).
    starts = seconds.group_by("elapsed_s").agg(
        (pl.col("time").max() - pl.col("time").min()).dt.total_microseconds().alias("spread_us")
    )
    assert starts["spread_us"].max() <= 1000, starts
    # Each local agent's output is kept beside the run.
    logs = sorted((r.path / "agents").glob("*.log"))
    assert len(logs) == 3 and all("waiting for work" in f.read_text() for f in logs)


def test_closed_model_users_are_split_exactly(tmp_path: Path) -> None:
    with lp.start_target(delay_ms=5) as target:
        p = lp.Plan(
            name="users",
            target=target.url,
            load=lp.ClosedLoad(stages=[lp.Constant(rate=7, duration_s=3)], think_s=0.05),
            tasks=[get("a", "/")],
        )
        r = lp.start(p, tmp_path / "run", agents=3)
        r.wait()
        served = target.served
    m = r.metrics
    full = m.filter((m["interval_s"] == 1.0) & (m["elapsed_s"] >= 1))
    assert set(full["active_users"].to_list()) == {7}
    # User u on agent u mod 3: three users on the first agent, two on each other.
    per_agent = (
        pl.read_parquet(r.path / "agents.parquet")
        .filter((pl.col("interval_s") == 1.0) & (pl.col("elapsed_s") >= 1))
        .group_by("agent")
        .agg(pl.col("active_users").unique())
        .sort("agent")
    )
    assert [set(u) for u in per_agent["active_users"]] == [{3}, {2}, {2}]
    s = r.summary()
    assert s.overall.errors == 0
    assert_served(s.overall, served)


def test_connections_are_split_between_the_agents(tmp_path: Path) -> None:
    # 150 a second answered in 30 ms wants two connections an agent (one serves ~33 a second);
    # the plan allows three in all, so each of the three agents has one and leaves the rest
    # unsent.
    with lp.start_target(delay_ms=30) as target:
        p = plan(target.url, 150, 2).model_copy(
            update={
                "load": lp.OpenLoad(stages=[lp.Constant(rate=150, duration_s=2)], connections=3)
            }
        )
        s = lp.run(p, tmp_path / "run", agents=3).summary()
        assert target.connections == 3
        o = s.overall
        assert o.unsent > 0
        assert_served(o, target.served)
    # Every agent judged its own slice (one connection each, all busy): the run says so, agent
    # by agent, beside what the merged figures show.
    v = s.validity
    assert v is not None and (v.verdict, v.limit) == ("invalid", "generator"), v
    by_agent = [r for r in v.reasons if r.text.startswith("agent ")]
    assert len({r.text.split(":")[0] for r in by_agent}) == 3, v
    # (An agent sees its connections busy, or, without its rows at hand, arrivals begun late.)
    assert {r.code for r in by_agent} <= {"connections", "late"}, v
    assert lp.load_run(tmp_path / "run").summary().validity == v


SCENARIO = """
import loadpilot as lp

@lp.scenario(profile=lp.constant(rps=200, duration="3s"))
class Shop(lp.VUser):
    feed = lp.feed("users.csv")

    @lp.task(weight=3)
    def browse(self):
        self.client.get("/", expect=lp.expect(status=200))

    @lp.task
    def login(self):
        if self.row["user"].startswith("u"):
            self.client.post("/echo", json={"user": self.row["user"]}, name="login")
"""


def test_python_scenarios_travel_to_agents_with_their_feed_files(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "shop.py").write_text(textwrap.dedent(SCENARIO))
    (work / "users.csv").write_text("user\nu1\nu2\nu3\n")
    shop = lp.load_scenario(work / "shop.py")
    with lp.start_target() as target:
        r = lp.start(shop, tmp_path / "run", target=target.url, agents=2)
        r.wait()
        s = r.summary()
        served = target.served
        by_path = target.served_by_path
    assert s.overall.requests == 600 == served
    assert [(t.name, t.path, t.requests) for t in s.tasks] == [
        ("browse", "engine", 450),
        ("login", "python", 150),
    ]
    assert s.overall.errors == 0
    # Per request name, merged by name from both agents, exactly what the server counted.
    named = {(q.task, q.name): q.requests for q in s.requests}
    assert named == {("browse", "GET /"): by_path["/"], ("login", "login"): by_path["/echo"]}
    assert r.histogram("login", request="login").count == 150
    assert lp.load_run(tmp_path / "run").histogram(request="GET /").count == 450


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "evicted"])
def test_an_agent_killed_mid_run_is_lost_and_the_survivors_take_its_share(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGKILL (a machine gone) and SIGTERM (a pod evicted: the agent stops its slice) alike:
    the survivors take over the rest of its share, from the last arrival it said it had sent,
    and the summary says how many arrivals may have reached the server twice."""
    with lp.start_target() as target:
        r = lp.start(plan(target.url, 1500, 12), tmp_path / "run", agents=3)
        killed = lose_an_agent(r, 0, sig)
        seen_lost = None
        while seen_lost is None and time.monotonic() - killed < 10:
            if "lost" in r.agents["state"].to_list():
                seen_lost = time.monotonic() - killed
            time.sleep(0.05)
        r.wait()
        s = r.summary()
        served = target.served
    # A local agent's exit is seen at once, not after the silence that loses a remote one.
    assert seen_lost is not None and seen_lost < 2.0, seen_lost
    journal = events(r.path)
    kinds = [e["event"] for e in journal]
    assert "exited" in kinds and "lost" in kinds and kinds.count("takeover") == 2, kinds
    assert any("from arrival" in str(e["detail"]) for e in journal if e["event"] == "takeover")
    # The survivors sent the lost agent's remaining arrivals: the schedule stays the plan's,
    # and every due arrival is accounted for (what the lost agent sent and never reported
    # has no known outcome: cancelled).
    assert s.target_requests == 18_000
    o = s.overall
    assert s.target_requests == (o.iterations or 0) + o.cancelled + o.unsent
    # The takeover starts from the lost agent's last progress (a tenth of a second old), so
    # the server's count is within 0.5% of the plan; what it received beyond what the run
    # accounts for was sent twice, and the summary's figure of arrivals of unknown fate
    # bounds it.
    assert abs(served - 18_000) <= 0.005 * 18_000, served
    twice = served - (o.requests + o.cancelled)
    assert 0 <= twice <= s.fate_unknown, (served, o.requests, o.cancelled, s.fate_unknown)
    assert s.fate_unknown <= 0.02 * 18_000, s.fate_unknown
    assert "unknown" in kinds
    assert o.service_ms.max is not None and o.service_ms.max < 500, o.service_ms


def test_agents_stop_their_load_when_the_coordinator_is_killed(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    agents = [agent(nats_server.url, f"a{i}") for i in range(2)]
    try:
        with lp.start_target() as target:
            plan_file = tmp_path / "plan.json"
            plan_file.write_text(plan(target.url, 500, 60).to_json())
            coordinator = subprocess.Popen(
                [sys.executable, "-m", "loadpilot.cli", "run", str(plan_file), "--out",
                 str(tmp_path / "run"), "--nats", nats_server.url, "--external-agents", "2"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            try:
                wait_for_rows(tmp_path / "run", 2 * 2)
                os.kill(coordinator.pid, signal.SIGKILL)
                killed = time.monotonic()
            finally:
                coordinator.wait()
            last, last_change = target.served, time.monotonic()
            while time.monotonic() - killed < 10:
                time.sleep(0.1)
                if target.served != last:
                    last, last_change = target.served, time.monotonic()
            assert last > 0
            # Agents stop after COORDINATOR_LOST_S of silence, seen at their next tick (a busy
            # machine runs both agents and the target beside this test).
            assert last_change - killed < COORDINATOR_LOST_S + 3.0, last_change - killed
            assert target.served == last, "no load after the agents stopped"
        # The run directory has every interval closed so far and no summary; it loads, and
        # its summary is made from what is there.
        assert not (tmp_path / "run" / "summary.json").exists()
        loaded = lp.load_run(tmp_path / "run")
        assert not loaded.complete
        assert loaded.summary().overall.requests == int(loaded.metrics["requests"].sum()) > 0
        # Both agents are back to waiting for work.
        end(*agents)
        for a in agents:
            out = a.stdout.read() if a.stdout else ""
            assert "the coordinator went silent" in out, out
            assert out.count("waiting for work") >= 2, out
    finally:
        end(*agents)


def test_a_nats_outage_mid_run_loses_and_doubles_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """NATS away for 4 s, twice the time that marks a silent agent lost: nobody is marked
    lost (the coordinator hears nothing either), the agents hold their reports and publish
    them when NATS is back, and the counts are the server's exactly."""
    agents = [agent(nats_server.url, f"b{i}") for i in range(2)]
    try:
        with lp.start_target() as target:
            r = lp.start(
                plan(target.url, 1000, 10),
                tmp_path / "run",
                agents=lp.Agents(count=2, nats=nats_server.url, timeout_s=20),
            )
            wait_for_rows(r.path, 2 * 2)
            nats_server.kill()
            time.sleep(2 * AGENT_LOST_S)
            nats_server.start()
            r.wait()
            s = r.summary()
            served = target.served
    finally:
        end(*agents)
    logs = [a.stdout.read() if a.stdout else "" for a in agents]
    assert r.agents["state"].to_list() == ["done", "done"]
    kinds = [e["event"] for e in events(r.path)]
    assert "lost" not in kinds and "takeover" not in kinds, kinds
    held = [re.search(r"NATS is back; publishing (\d+) held reports", log) for log in logs]
    assert all(held) and all(int(m.group(1)) >= 2 for m in held if m), logs
    assert s.overall.requests == 10_000 == served
    assert s.target_requests == 10_000
    assert int(r.metrics["requests"].sum()) == 10_000


def test_an_agent_refuses_a_target_its_operator_did_not_allow(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    # Its operator allowed another loopback address only: the target is not it.
    a = agent(nats_server.url, "picky", "--allow-target", "127.0.0.2")
    try:
        with lp.start_target() as target:
            plan_file = tmp_path / "plan.json"
            plan_file.write_text(plan(target.url, 100, 2).to_json())
            done = run_cli("run", str(plan_file), "--out", str(tmp_path / "run"),
                           "--nats", nats_server.url, "--external-agents", "1",
                           "--agents-timeout", "20s")  # fmt: skip
            assert target.served == 0
    finally:
        end(a)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "agent picky refused the run" in done.stderr
    assert "is not allowed on this agent" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_agent_uploads_a_file_of_its_disk_only_when_allowed_code(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the target")
    a = agent(nats_server.url, "no-files")
    try:
        with lp.start_target() as target:
            upload = lp.Request(
                method="POST", path="/echo", files=[{"field": "f", "path": str(secret)}]
            )
            p = plan(target.url, 100, 2).model_copy(
                update={"tasks": [lp.Task(name="up", requests=[upload])]}
            )
            plan_file = tmp_path / "plan.json"
            plan_file.write_text(p.to_json())
            done = run_cli("run", str(plan_file), "--out", str(tmp_path / "run"),
                           "--nats", nats_server.url, "--external-agents", "1",
                           "--agents-timeout", "20s")  # fmt: skip
            assert target.served == 0
    finally:
        end(a)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "agent no-files refused the run" in done.stderr
    assert f"uploads files from this agent's disk ({secret})" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_agent_runs_scenario_code_only_when_allowed(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    (tmp_path / "shop.py").write_text(textwrap.dedent(SCENARIO))
    (tmp_path / "users.csv").write_text("user\nu1\n")
    a = agent(nats_server.url, "plans-only")
    try:
        with lp.start_target() as target:
            done = run_cli("run", str(tmp_path / "shop.py"), "--target", target.url, "--out",
                           str(tmp_path / "run"), "--nats", nats_server.url,
                           "--external-agents", "1", "--agents-timeout", "20s")  # fmt: skip
            assert target.served == 0
    finally:
        end(a)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "runs plans only" in done.stderr and "--allow-code" in done.stderr


def test_agents_that_do_not_come_are_a_clear_error(tmp_path: Path, nats_server: NatsServer) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan("http://127.0.0.1:9", 10, 1).to_json())
    done = subprocess.run(
        [sys.executable, "-m", "loadpilot.cli", "run", str(plan_file), "--out",
         str(tmp_path / "run"), "--nats", nats_server.url, "--external-agents", "2",
         "--agents-timeout", "1s"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "0 of 2 agents answered within 1 s" in done.stderr, done.stderr
    assert nats_server.token not in done.stderr, "the token is never printed"
    assert "Traceback" not in done.stderr


def test_target_allow_lists() -> None:
    # No pattern: loopback only (0.0.0.0, this machine's unspecified address, is not loopback).
    assert target_allowed("http://127.0.0.1:8080", [])
    assert target_allowed("http://localhost", [])
    assert target_allowed("http://[::1]:80/x", [])
    assert not target_allowed("http://0.0.0.0:9", [])
    assert not target_allowed("http://:80", [])
    # Patterns replace the default: hosts or host:port globs; `loopback` keeps it.
    assert not target_allowed("http://127.0.0.1", ["127.0.0.2"])
    assert target_allowed("http://127.0.0.2:8443", ["127.0.0.2"])
    assert target_allowed("http://127.0.0.7:8080", ["127.0.0.*:8080"])
    assert not target_allowed("http://127.0.0.7:9090", ["127.0.0.*:8080"])
    assert target_allowed("http://127.0.0.1:1", ["127.0.0.2", "loopback"])


def test_an_agent_serves_its_health_and_says_when_nats_is_away(nats_server: NatsServer) -> None:
    import urllib.error
    import urllib.request

    from loadpilot.cluster.server import free_port

    port = free_port()
    a = agent(nats_server.url, "healthy", "--health-port", str(port))
    try:
        deadline = time.monotonic() + 20
        body = None
        while body is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    body = json.loads(r.read())
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        assert body is not None and body["name"] == "healthy" and body["state"] == "idle"
        assert body["nats"] == "connected" and body["allow_targets"] == ["loopback"]
        nats_server.kill()
        status = 200
        while status == 200 and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            except urllib.error.HTTPError as e:
                status = e.code
            time.sleep(0.1)
        assert status == 503
    finally:
        end(a)


def test_an_unreachable_nats_is_a_clear_error(tmp_path: Path) -> None:
    from loadpilot.cluster.server import free_port

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan("http://127.0.0.1:9", 10, 1).to_json())
    token = "do-not-print-me"
    url = f"nats://{token}@127.0.0.1:{free_port()}"  # loopback, nobody listening
    done = run_cli("run", str(plan_file), "--out", str(tmp_path / "run"), "--nats", url,
                   "--external-agents", "1")  # fmt: skip
    assert done.returncode == 2
    assert "cannot connect to NATS at nats://***@127.0.0.1:" in done.stderr, done.stderr
    assert token not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_a_plan_larger_than_a_nats_message_reaches_its_agents(tmp_path: Path) -> None:
    rows = [[f"user-{i:06d}-" + "x" * 40] for i in range(40_000)]  # ~2 MB of feeder
    with Recorder.serving() as server:
        p = plan(server.url, 100, 2).model_copy(
            update={
                # Rows drawn at random from the whole feeder: a plan cut at a message's size
                # would lose the second half of them.
                "feeder": lp.Feeder(columns=["user"], rows=rows, mode="random", seed=7),
                "tasks": [get("a", "/echo?u={{user}}")],
            }
        )
        assert len(p.to_json()) > 1_000_000
        r = lp.run(p, tmp_path / "run", agents=2)
        paths = [path for _, path in server.arrivals]
    s = r.summary()
    assert s.overall.requests == 200 == len(paths)
    assert s.overall.errors == 0
    users = [path.removeprefix("/echo?u=") for path in paths]
    assert set(users) <= {row[0] for row in rows}
    assert max(int(u.split("-")[1]) for u in users) >= 20_000, "rows from the second megabyte"


def test_on_agent_loss_abort_ends_the_run_early(tmp_path: Path) -> None:
    with lp.start_target() as target:
        r = lp.start(
            plan(target.url, 500, 30),
            tmp_path / "run",
            agents=lp.Agents(count=2, on_loss="abort"),
        )
        lose_an_agent(r, 1)
        r.wait()
        served = target.served
    s = r.summary()
    assert s.ended == "aborted"
    assert s.duration_s < 15
    assert "lost" in [e["event"] for e in events(r.path)]
    assert "takeover" not in [e["event"] for e in events(r.path)]
    o = s.overall
    # What the lost agent sent in the seconds it had not reported reached the server: at most
    # two seconds of its share (250 a second) beyond what the run counts.
    assert_served(o, served, extra=2 * 250)
    assert s.target_requests == (o.iterations or 0) + o.cancelled + o.unsent


def test_a_report_of_another_shape_is_logged_once_acknowledged_and_the_run_goes_on(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    # What an agent of another version would send: a well-formed interval with three entries
    # (the run has two) or with another count of error kinds. Each must be logged once as a
    # bad report naming the agent, acknowledged (JetStream would otherwise redeliver it every
    # ack_wait for the rest of the run), and the run must go on exactly.
    import asyncio

    import nats

    kinds = len(lp._engine.ERROR_KINDS)
    entry = {"corrected": "", "service": "", "requests": 1, "errors": [0] * kinds,
             "status": [0] * 5, "bytes_in": 0, "missed": 0, "taken": 1, "started": 1,
             "iterations": 1, "unsent": 0, "cancelled": 0}  # fmt: skip
    fewer_kinds = {**entry, "errors": [0] * (kinds - 1)}
    shapes = [
        {"index": 1, "start_s": 1.0, "length_s": 1.0, "drain": False, "in_flight": 0,
         "active_users": 0, "target_rps": [None] * 3, "tasks": [entry] * 3},
        {"index": 1, "start_s": 1.0, "length_s": 1.0, "drain": False, "in_flight": 0,
         "active_users": 0, "target_rps": [None] * 2, "tasks": [fewer_kinds] * 2},
    ]  # fmt: skip

    async def send_bad_reports() -> None:
        nc = await nats.connect(nats_server.url)
        beat: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def on_beat(msg: object) -> None:
            if not beat.done():
                beat.set_result(msg.subject.split(".")[2])  # type: ignore[attr-defined]

        await nc.subscribe("loadpilot.run.*.beat", cb=on_beat)
        run_id = await asyncio.wait_for(beat, 30)
        for iv in shapes:
            head = json.dumps({"kind": "interval", "reporter": "b0"}).encode()
            await nc.publish(data_subject(run_id, "b0"), head + b"\n" + json.dumps(iv).encode())
        await nc.flush(5)
        await nc.close()

    agents = [agent(nats_server.url, f"b{i}") for i in range(2)]
    try:
        with lp.start_target() as target:
            r = lp.start(
                plan(target.url, 500, 8),
                tmp_path / "run",
                agents=lp.Agents(count=2, nats=nats_server.url, timeout_s=20),
            )
            # On a thread of its own: the test's thread may already have an event loop.
            sender = threading.Thread(target=lambda: asyncio.run(send_bad_reports()))
            sender.start()
            sender.join(60)
            assert not sender.is_alive(), "the bad reports were not sent"
            r.wait()
            s = r.summary()
            served = target.served
    finally:
        end(*agents)
    bad = [e for e in events(r.path) if e["event"] == "bad_report"]
    assert len(bad) == 2, bad
    assert {e["agent"] for e in bad} == {"b0"}
    assert "an interval of 3 entries, the run has 2" in str(bad[0]["detail"]), bad
    assert f"errors: {kinds - 1} counts, expected {kinds}" in str(bad[1]["detail"]), bad
    assert s.ended == "completed"
    assert s.overall.requests == 4000 == served
    assert r.agents["state"].to_list() == ["done", "done"]


def test_clock_offsets_are_measured_and_reported_past_their_bound(tmp_path: Path) -> None:
    # A bound of zero: every agent's measured offset (tiny on one machine, never exactly
    # nothing) is past it, and the run says so for each, before it starts.
    with lp.start_target() as target:
        r = lp.run(
            plan(target.url, 100, 1), tmp_path / "run", agents=lp.Agents(count=2, max_offset_ms=0)
        )
    clock = [e for e in events(r.path) if e["event"] == "clock"]
    assert len(clock) == 2 and all("clock off by" in str(e["detail"]) for e in clock), clock
    offsets = r.agents["clock_offset_ms"].to_list()
    assert all(abs(v) < 20 for v in offsets), offsets
    assert r.summary().overall.requests == 100


def test_on_agent_loss_continue_goes_on_without_the_lost_share(tmp_path: Path) -> None:
    with lp.start_target() as target:
        r = lp.start(
            plan(target.url, 400, 8),
            tmp_path / "run",
            agents=lp.Agents(count=2, on_loss="continue"),
        )
        lose_an_agent(r, 1)
        r.wait()
        served = target.served
    s = r.summary()
    kinds = [e["event"] for e in events(r.path)]
    assert s.ended == "completed" and "lost" in kinds and "takeover" not in kinds, kinds
    # The survivor sent its half; the lost agent's rest was never sent by anyone.
    per_agent = r.agents.sort("name")
    assert per_agent["state"].to_list() == ["done", "lost"]
    assert per_agent["requests"][0] == 1600
    o = s.overall
    assert 1600 <= o.requests < 3200 - 2 * 200
    assert_served(o, served, extra=2 * 200)


def test_a_lost_agents_users_are_started_by_the_survivors(tmp_path: Path) -> None:
    with lp.start_target(delay_ms=5) as target:
        p = lp.Plan(
            name="users",
            target=target.url,
            load=lp.ClosedLoad(stages=[lp.Constant(rate=6, duration_s=10)], think_s=0.05),
            tasks=[get("a", "/")],
        )
        r = lp.start(p, tmp_path / "run", agents=2)
        lose_an_agent(r, 0)
        r.wait()
    kinds = [e["event"] for e in events(r.path)]
    assert "lost" in kinds and "takeover" in kinds, kinds
    # The survivor runs all six users by the last seconds: its own three and the lost three.
    survivor = (
        pl.read_parquet(r.path / "agents.parquet")
        .filter(pl.col("interval_s") == 1.0)
        .group_by("elapsed_s")
        .agg(pl.col("active_users").sum())
        .sort("elapsed_s")
    )
    assert survivor["active_users"][-2:].to_list() == [6, 6], survivor
    assert r.summary().overall.errors == 0


def test_a_busy_agent_is_not_shared_with_a_second_coordinator(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    worker = agent(nats_server.url, "solo")
    try:
        with lp.start_target() as target:
            first = lp.start(
                plan(target.url, 200, 5),
                tmp_path / "first",
                agents=lp.Agents(count=1, nats=nats_server.url, timeout_s=20),
            )
            wait_for_rows(first.path, 2)
            # The only agent is busy: the second coordinator finds no agent for its run.
            with pytest.raises(lp.LoadPilotError, match="0 of 1 agents") as e:
                lp.run(
                    plan(target.url, 200, 2),
                    tmp_path / "second",
                    agents=lp.Agents(count=1, nats=nats_server.url, timeout_s=3),
                )
            assert "busy with another run: solo" in str(e.value)
            first.wait()
            served = target.served
    finally:
        end(worker)
    # The first run went on untouched: its plan's count, the server's count.
    s = first.summary()
    assert s.ended == "completed" and s.overall.requests == 1000 == served


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The parent is the 2nd field after the command, which is in parentheses.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def test_local_agents_start_whatever_the_working_directory_holds(tmp_path: Path) -> None:
    """A `loadpilot/` folder in the directory a run starts from (a checkout beside a
    non-editable install) is not what the local agents import."""
    shadow = tmp_path / "loadpilot"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('not the installed LoadPilot')\n")
    plan_file = tmp_path / "plan.json"
    with lp.start_target() as target:
        plan_file.write_text(plan(target.url, 200, 2).to_json())
        done = subprocess.run(
            [str(Path(sys.executable).parent / "loadpilot"), "run", str(plan_file),
             "--agents", "2", "--agents-timeout", "20s", "--out", str(tmp_path / "run"),
             # What is asserted is that the agents started and ran, not that two agents and the
             # target kept their schedule on two shared cores (a stall is rightly invalid).
             "--allow-invalid"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        served = target.served
    assert done.returncode == 0, done.stdout + done.stderr
    assert served == 400
    assert "accounted for: 400 due = 400 ran + 0 cancelled + 0 unsent" in done.stdout, done.stdout


def test_an_agent_that_dies_at_start_is_reported_at_once_with_its_last_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "site" / "loadpilot"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('this LoadPilot is broken')\n")
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))
    began = time.monotonic()
    with (
        lp.start_target() as target,
        pytest.raises(lp.LoadPilotError) as e,
    ):
        lp.start(plan(target.url, 100, 2), tmp_path / "run", agents=2)
    took = time.monotonic() - began
    assert re.search(
        r"agent local-\w+-\d exited at start \(exit code 1\): .*RuntimeError: this LoadPilot is "
        r"broken \(its log: .*\.log\)",
        str(e.value),
    ), str(e.value)
    # Not the minute a run waits for agents that have not come: the exit is seen at once
    # (the time is the NATS server's and the agents' own start).
    assert took < 10, took
    assert target.served == 0


def test_a_run_whose_agents_all_died_ends_with_exit_2_and_why(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    with lp.start_target() as target:
        plan_file.write_text(plan(target.url, 300, 20).to_json())
        run = tmp_path / "run"
        cli = subprocess.Popen(
            [sys.executable, "-m", "loadpilot.cli", "run", str(plan_file), "--agents", "2",
             "--out", str(run)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for_rows(run, 2)
            agents = [
                p
                for p in children_of(cli.pid)
                if b"agent" in Path(f"/proc/{p}/cmdline").read_bytes()
            ]
            assert len(agents) == 2, agents
            for p in agents:
                os.kill(p, signal.SIGKILL)
            out, err = cli.communicate(timeout=30)
        finally:
            end(cli)
    assert cli.returncode == 2, out + err
    assert "every agent was lost" in err and "exit code -9" in err, err
    assert "sent twice" not in out + err, "no survivor sent anything again"
    assert "Traceback" not in err
    # What was measured before is kept.
    s = lp.load_run(run).summary()
    assert s.overall.requests > 0
    assert s.target_requests == (s.overall.iterations or 0) + s.overall.cancelled + s.overall.unsent
