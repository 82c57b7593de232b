"""HTTP/2 from Python: scenarios and plans that ask for it, on both paths, against the built-in
target (which speaks h2c and h2 over TLS)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import loadpilot as lp
from tests.conftest import constant, get
from tests.peers import Nginx


def test_a_plan_asking_for_http2_sends_every_request_over_it_on_shared_connections(
    target: lp.TargetServer, out: Path
) -> None:
    plan = lp.Plan(
        target=target.url,
        load=constant(400, 1, connections=40),
        tasks=[get("a", weight=3), get("b", "/json")],
        http="2",
        max_streams=20,
    )

    s = lp.run(plan, out).summary()

    assert s.overall.requests == 400 and s.overall.errors == 0
    assert [t.requests for t in s.tasks] == [300, 100]
    assert target.served == target.served_h2 == 400
    assert target.connections == 2, "40 workers, 20 streams a connection"
    assert s.overall.errors_by_kind["goaway"] == s.overall.errors_by_kind["rst_stream"] == 0


SCENARIO = """
import loadpilot as lp

@lp.scenario(profile=lp.constant(200, "1s"), http="2")
class Api(lp.VUser):
    @lp.task
    async def login(self):
        r = await self.client.post("/echo", json={"user": "ann"})
        assert r.json()["user"] == "ann"
        await self.client.get("/cookies/set?session=s1")
        r = await self.client.get("/cookies")
        assert "session=s1" in r.text
"""


def test_python_tasks_speak_http2_too_with_bodies_and_cookies(
    target: lp.TargetServer, out: Path, tmp_path: Path
) -> None:
    f = tmp_path / "api.py"
    f.write_text(SCENARIO)
    (sc,) = lp.load_scenarios(f)

    s = lp.run(sc, out, target=target.url).summary()

    assert s.tasks[0].path == "python"
    assert s.overall.errors == 0, s.overall.errors_by_kind
    assert s.overall.requests == 600
    assert target.served == target.served_h2 == 600


@pytest.mark.slow
def test_auto_over_tls_negotiates_http2_and_over_cleartext_stays_on_1_1(out: Path) -> None:
    with lp.start_target(tls=True) as tls, lp.start_target() as plain:
        for server, h2 in ((tls, 100), (plain, 0)):
            plan = lp.Plan(
                target=server.url,
                load=constant(100, 1, connections=8),
                tasks=[get("a")],
                http="auto",
                insecure=True,
            )
            s = lp.run(plan, out / server.url.split(":")[0]).summary()
            assert s.overall.requests == 100 and s.overall.errors == 0
            assert server.served_h2 == h2, server.url


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"http": "3"}, "invalid plan at http"),
        ({"max_streams": 0}, "invalid plan at max_streams"),
    ],
)
def test_a_plan_with_a_bad_http_setting_exits_2_naming_the_field(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    plan = lp.Plan(target="http://127.0.0.1:9", load=constant(1, 1), tasks=[get("a")])
    data = json.loads(plan.to_json()) | change
    f = tmp_path / "plan.json"
    f.write_text(json.dumps(data))

    done = subprocess.run(
        [sys.executable, "-m", "loadpilot.cli", "run", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_scenario_with_a_bad_http_setting_is_a_scenario_error() -> None:
    with pytest.raises(
        lp.ScenarioError, match="invalid http: Input should be '1.1', '2' or 'auto'"
    ):
        lp.scenario(profile=lp.constant(1, "1s"), http="h3")  # type: ignore[arg-type]
    with pytest.raises(lp.ScenarioError, match="max_streams"):
        lp.scenario(profile=lp.constant(1, "1s"), max_streams=0)


ENGINE_SCENARIO = """
import loadpilot as lp

@lp.scenario(profile=lp.constant(300, "1s"), connections=30)
class Api(lp.VUser):
    @lp.task
    def home(self):
        self.client.get("/")
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadpilot.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_the_command_line_chooses_http2_and_streams_for_a_scenario_and_a_plan(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    f = tmp_path / "api.py"
    f.write_text(ENGINE_SCENARIO)

    done = cli(str(f), "--target", target.url, "--out", str(tmp_path / "a"), "--http", "2")
    done2 = cli(str(f), "--target", target.url, "--out", str(tmp_path / "b"))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "http 2: up to 100 users share a connection" in done.stdout
    assert done2.returncode == 0, done2.stdout + done2.stderr
    assert "http 2" not in done2.stdout
    assert target.served == 600 and target.served_h2 == 300
    # 30 HTTP/2 connections shared 100 to a connection: one; then 30 of HTTP/1.1.
    assert target.connections == 31
    assert json.loads((tmp_path / "a" / "plan.json").read_text())["http"] == "2"

    plan = lp.Plan(target=target.url, load=constant(200, 1, connections=20), tasks=[get("a")])
    p = tmp_path / "plan.json"
    p.write_text(plan.to_json())
    done = cli(str(p), "--out", str(tmp_path / "c"), "--http", "2", "--max-streams", "5")

    assert done.returncode == 0, done.stdout + done.stderr
    assert target.served_h2 == 500
    assert target.connections == 31 + 4, "20 connections' users, 5 to a connection"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http", "3"], "invalid choice: '3'"),
        (["--max-streams", "0"], "'0' must be >= 1"),
        (
            ["--max-streams", "10001"],
            "invalid max_streams: Input should be less than or equal to 10000",
        ),
    ],
)
def test_bad_http_flags_exit_2_saying_which(tmp_path: Path, args: list[str], message: str) -> None:
    f = tmp_path / "api.py"
    f.write_text(ENGINE_SCENARIO)

    done = cli(str(f), "--target", "http://127.0.0.1:9", *args)

    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# Against nginx: an HTTP/2 implementation that is not the engine's (h2) nor the built-in
# target's (hyper), counting on its own side.


def _plan(url: str, rate: float, seconds: float, connections: int, path: str, **kw: Any) -> lp.Plan:
    """One task of one GET at ``rate`` for ``seconds`` over ``connections`` workers."""
    load = constant(rate, seconds, connections=connections)
    return lp.Plan(target=url, load=load, tasks=[get("a", path)], **kw)


@pytest.mark.slow
def test_http2_against_an_independent_server_counts_what_it_served(out: Path) -> None:
    with Nginx() as nginx:
        plan = _plan(nginx.url, 400, 2, 2, "/?n={{__iter}}", http="2", max_streams=4)
        o = lp.run(plan, out).summary().overall
        seen = nginx.served()
    assert o.errors == 0, o.errors_by_kind
    assert o.requests == 800 == len(seen)
    assert {r.protocol for r in seen} == {"HTTP/2.0"}
    assert {r.status for r in seen} == {200}
    # Every iteration's own request, each once.
    assert len({r.uri for r in seen}) == 800


@pytest.mark.slow
def test_the_servers_concurrent_stream_limit_is_honoured(
    target: lp.TargetServer, out: Path
) -> None:
    # Eight requests in flight, all eight on one connection as the plan asks; nginx allows 2
    # streams a connection. Answers take 20 ms (passed to the built-in target), so a connection
    # within the limit carries at most ~100 a second of the 200 due; a client that opened more
    # streams than allowed would have them refused (REFUSED_STREAM, an error).
    with Nginx(streams=2, upstream=target.url) as nginx:
        plan = _plan(nginx.url, 200, 2, 8, "/up/?delay_ms=20", http="2", max_streams=8)
        o = lp.run(plan, out).summary().overall
        seen = nginx.served()
    assert o.errors == 0, o.errors_by_kind
    assert o.requests == len(seen) == target.served
    assert {r.protocol for r in seen} == {"HTTP/2.0"}
    connections = {r.connection for r in seen}
    assert o.requests <= len(connections) * 2 * (2 / 0.020) + 10, (o.requests, connections)
    assert o.unsent > 0, "the limit held the rate below the plan's"


def test_auto_over_tls_stays_on_1_1_when_the_server_offers_no_http2(out: Path) -> None:
    with Nginx(http2=False, tls=True) as nginx:
        plan = _plan(nginx.url, 100, 1, 4, "/", http="auto", insecure=True)
        o = lp.run(plan, out).summary().overall
        seen = nginx.served()
    assert o.errors == 0, o.errors_by_kind
    assert o.requests == 100 == len(seen)
    assert {r.protocol for r in seen} == {"HTTP/1.1"}


@pytest.mark.slow
def test_a_stream_waiting_for_a_slot_counts_from_its_due_instant(
    target: lp.TargetServer, out: Path
) -> None:
    # One connection, one stream, answers in 50 ms: 20 a second fit, 30 are due. The arrivals
    # queue, and their corrected latency grows with the wait while the service time stays 50 ms.
    plan = _plan(target.url, 30, 2, 1, "/?delay_ms=50", http="2", max_streams=1)
    o = lp.run(plan, out).summary().overall
    assert o.errors == 0 and target.served_h2 == target.served == o.requests
    assert o.service_ms.p99 is not None and o.latency_ms.max is not None
    assert 50 <= o.service_ms.p99 < 100
    assert o.missed > 0
    assert o.latency_ms.max > o.service_ms.max + 100, (o.latency_ms, o.service_ms)
