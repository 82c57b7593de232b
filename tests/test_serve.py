"""`loadpilot serve` as a real process on loopback: plans in, rows and summaries out, safe by
default; and its OpenAPI document checked by schemathesis (property-based: no 5xx, every response
as documented)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import loadpilot as lp
from loadpilot.cluster.server import free_port
from tests.conftest import total

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow

TOKEN = "test-token-123"


class Api:
    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.port = port
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "",
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"content-type": "application/json"}
        tok = self.token if token == "" else token
        if tok is not None:
            headers["authorization"] = f"Bearer {tok}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        text = r.read().decode()
        c.close()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text

    def stream(self, method: str, path: str, body: Any = None) -> http.client.HTTPResponse:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"authorization": f"Bearer {self.token}", "content-type": "application/json"}
        c.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        return c.getresponse()


def serve(tmp: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "loadpilot.cli", "serve", "--port", str(port), "--runs",
         str(tmp / "runs"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return p, port
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise RuntimeError(p.communicate()[0])


@pytest.fixture(scope="module")
def target() -> Iterator[lp.TargetServer]:
    with lp.start_target() as t:
        yield t


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    # Targets: 127.0.0.1 (the built-in target) only, so another loopback address is refused.
    p, port = serve(
        tmp_path, "--token", TOKEN, "--max-duration", "20s", "--max-rate", "2000",
        "--allow-target", "127.0.0.1:*",
    )  # fmt: skip
    try:
        yield Api(port)
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(20)


def plan(target: str, rate: float = 100, seconds: float = 2, **kw: Any) -> dict[str, Any]:
    return {
        "name": "api",
        "target": target,
        "load": {
            "model": "open",
            "stages": [{"kind": "constant", "rate": rate, "duration_s": seconds}],
        },
        "tasks": [{"name": "a", "weight": 3, "requests": [{"path": "/"}]},
                  {"name": "b", "requests": [{"path": "/json"}]}],
        **kw,
    }  # fmt: skip


def lines(resp: http.client.HTTPResponse) -> list[dict[str, Any]]:
    return [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]


def test_a_plan_runs_and_its_rows_stream_as_they_close(api: Api, target: lp.TargetServer) -> None:
    before = target.served
    started = time.time()
    status, created = api.request("POST", "/runs", plan(target.url, seconds=3))
    assert status == 201, created
    rid = created["id"]
    status, busy = api.request("POST", "/runs", plan(target.url))
    assert status == 409 and rid in busy["detail"]
    assert api.request("GET", "/readyz") == (200, {"ready": False, "busy": True})
    resp = api.stream("GET", f"/runs/{rid}/metrics")
    first = json.loads(resp.readline())
    # The first row came while the run went: streamed as it closed, not kept to the end.
    status, info = api.request("GET", f"/runs/{rid}")
    assert info["state"] == "running", info
    assert 0 < info["summary"]["overall"]["requests"] < 300
    out = [first, *lines(resp)]
    rows, summary = out[:-1], out[-1]["summary"]
    assert summary["ended"] == "completed" and summary["overall"]["requests"] == 300
    assert target.served - before == 300
    # Rows carry their instant in seconds since the Unix epoch.
    assert all(started - 1 < r["time"] < time.time() + 1 for r in rows)
    # The same rows as the run directory's: one per task per closed second.
    on_disk = [
        json.loads(x) for x in (Path(created["path"]) / "metrics.jsonl").read_text().splitlines()
    ]
    assert [(r["elapsed_s"], r["task"], r["request"], r["requests"]) for r in rows] == [
        (r["elapsed_s"], r["task"], r["request"], r["requests"]) for r in on_disk
    ]
    status, info = api.request("GET", f"/runs/{rid}")
    assert (
        status == 200
        and info["state"] == "finished"
        and info["summary"]["overall"]["requests"] == 300
    )
    assert api.request("GET", "/readyz") == (200, {"ready": True, "busy": False})
    status, listed = api.request("GET", "/runs")
    assert [r["id"] for r in listed] == [rid]
    status, html = api.request("GET", f"/runs/{rid}/report")
    assert status == 200 and "<html" in html.lower()
    assert re.search(r"<td>all</td><td></td><td>300</td>", html), "the report's total"
    status, text = api.request("GET", "/metrics")
    assert status == 200 and total(text, "loadpilot_requests_total", run=rid) == 300


def test_the_seed_endpoint_streams_a_run_and_refuses_a_second(
    api: Api, target: lp.TargetServer
) -> None:
    resp = api.stream("POST", "/run", plan(target.url, seconds=3))
    first = json.loads(resp.readline())
    assert first["task"] in ("a", "b")
    status, busy = api.request("POST", "/run", plan(target.url))
    assert status == 409
    rest = lines(resp)
    assert rest[-1]["summary"]["overall"]["requests"] == 300


def test_a_client_going_away_does_not_touch_the_run(api: Api, target: lp.TargetServer) -> None:
    status, created = api.request("POST", "/runs", plan(target.url, seconds=3))
    resp = api.stream("GET", f"/runs/{created['id']}/metrics")
    resp.readline()
    resp.close()  # gone mid-stream
    # A client that joins later gets the rows from the first.
    late = api.stream("GET", f"/runs/{created['id']}/metrics")
    rows = lines(late)
    assert rows[0]["elapsed_s"] == 0.0 and "summary" in rows[-1]
    assert sum(r["requests"] for r in rows[:-1] if r["request"] is None) == 300
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, info = api.request("GET", f"/runs/{created['id']}")
        if info["state"] == "finished":
            break
        time.sleep(0.2)
    assert info["summary"]["ended"] == "completed"
    assert info["summary"]["overall"]["requests"] == info["summary"]["target_requests"] == 300


def test_a_run_stops_on_request(api: Api, target: lp.TargetServer) -> None:
    before = target.served
    status, created = api.request("POST", "/runs", plan(target.url, seconds=15))
    time.sleep(1.5)
    status, info = api.request("POST", f"/runs/{created['id']}/stop")
    at_stop = target.served - before
    assert status == 202
    s = info["summary"]
    assert info["state"] == "finished" and s["ended"] == "stopped"
    assert s["duration_s"] < 5
    o = s["overall"]
    assert o["requests"] <= at_stop <= o["requests"] + o["cancelled"], (at_stop, o)
    # Nothing new is sent once the stop is answered.
    time.sleep(2)
    assert target.served - before == at_stop


def test_refusals_are_clear_4xx(api: Api, target: lp.TargetServer, tmp_path: Path) -> None:
    assert api.request("GET", "/runs", token=None)[0] == 401
    assert api.request("GET", "/runs", token="wrong")[0] == 401
    assert api.request("GET", "/healthz", token=None)[0] == 200
    status, body = api.request("POST", "/runs", plan("http://127.0.0.2:80"))
    assert status == 403 and "not allowed" in body["detail"]
    status, body = api.request("POST", "/runs", plan(target.url, rate=5000))
    assert status == 403 and "5000 requests/s" in body["detail"]
    status, body = api.request("POST", "/runs", plan(target.url, seconds=60))
    assert status == 403 and "60 s" in body["detail"]
    status, body = api.request("POST", "/runs", plan(target.url, timeout_s=-1))
    assert status == 422 and body["detail"][0]["loc"][-1] == "timeout_s"
    status, body = api.request("POST", "/runs", raw=b"x" * (2 << 20))
    assert status == 413
    status, body = api.request(
        "POST", "/scenarios", {"scenario": "import os", "target": target.url}
    )
    assert status == 403 and "--allow-code" in body["detail"]
    # A plan that would upload a file of this server's disk to the target.
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the target")
    upload = {"method": "POST", "path": "/echo", "files": [{"field": "f", "path": str(secret)}]}
    served = target.served
    status, body = api.request(
        "POST", "/runs", plan(target.url, tasks=[{"name": "up", "requests": [upload]}])
    )
    assert status == 403 and str(secret) in body["detail"] and "--allow-code" in body["detail"]
    assert target.served == served, "nothing was sent"
    assert api.request("GET", "/runs/nope")[0] == 404


def test_the_rate_cap_holds_for_every_stage_kind(api: Api, target: lp.TargetServer) -> None:
    # A spike whose base is above its peak (a dip) is a valid plan: its rate is its base for
    # most of the run, so the cap (2000/s here) must read the base too.
    served = target.served
    stages: list[dict[str, Any]] = [
        {"kind": "spike", "base": 5000, "peak": 1, "peak_s": 0.5, "duration_s": 2},
        {"kind": "spike", "base": 1, "peak": 5000, "peak_s": 0.5, "duration_s": 2},
        {"kind": "step", "from": 1, "to": 5000, "steps": 2, "duration_s": 2},
        {"kind": "ramp", "from": 5000, "to": 1, "duration_s": 2},
    ]
    for stage in stages:
        body = {**plan(target.url), "load": {"model": "open", "stages": [stage]}}
        status, answer = api.request("POST", "/runs", body)
        assert status == 403, (stage, answer)
        assert "5000 requests/s" in answer["detail"], answer
    assert target.served == served, "nothing was sent for a refused plan"


def test_serve_binds_elsewhere_only_with_a_token(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadpilot.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "LOADPILOT_TOKEN": ""},
    )  # fmt: skip
    assert done.returncode == 2
    assert "give --token" in done.stderr and "Traceback" not in done.stderr


def _documented_endpoints() -> set[tuple[str, str]]:
    """(method, path) of every row of docs/serve.md's table of endpoints."""
    doc = (Path(__file__).parents[1] / "docs" / "serve.md").read_text()
    table = doc.split("## Endpoints", 1)[1].split("\n## ", 1)[0]
    return {
        (m.group(1), re.sub(r"\{\w+\}", "{}", m.group(2)))
        for m in re.finditer(r"^\| `([A-Z]+) (/[^`]*)` \|", table, re.M)
    }


def test_the_openapi_document_holds_under_property_based_requests(tmp_path: Path) -> None:
    """Every operation of the served OpenAPI document, with generated inputs (valid and not),
    with the token: never a 5xx, every response as the document says (status, content type,
    schema), invalid input refused (a 4xx). Caps keep any plan that gets through tiny (2 s, 50
    requests/s, loopback only). The operations are the ones docs/serve.md lists. Not checked:
    that every schema-valid plan is accepted, since a plan has rules across fields that JSON
    Schema does not state (an ``expect`` with a JSON path needs the value it must equal; a
    stage's ``kind`` picks its fields)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance as accepts_valid

    p, port = serve(tmp_path, "--token", TOKEN, "--max-duration", "2s", "--max-rate", "50")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        url = f"http://127.0.0.1:{port}/openapi.json"
        assert Api(port).request("GET", "/openapi.json", token=None)[0] == 401
        schema = schemathesis.openapi.from_url(url, headers=auth)
        operations = [r.ok() for r in schema.get_all_operations()]
        served = {(op.method.upper(), re.sub(r"\{\w+\}", "{}", op.path)) for op in operations}
        # The document lists itself nowhere; every other operation is in the docs' table.
        assert served | {("GET", "/openapi.json")} == _documented_endpoints()
        negative = 0
        for op in operations:
            takes_input = bool(op.body) or bool(op.path_parameters) or bool(op.query)
            modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if takes_input else [])
            for mode in modes:
                examples = 30 if op.method.upper() == "POST" else 12

                @given(case=op.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck)
                )
                def holds(case: Any) -> None:
                    case.call_and_validate(
                        headers=auth, timeout=30, excluded_checks=[accepts_valid]
                    )

                holds()
                negative += mode is GenerationMode.NEGATIVE
        # POST /runs, POST /run and POST /scenarios take a body, the run routes an id.
        assert negative >= 7
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(20)


def test_scenario_source_runs_with_allow_code_within_the_user_cap(
    tmp_path: Path, target: lp.TargetServer
) -> None:
    p, port = serve(tmp_path, "--token", TOKEN, "--allow-code", "--max-users", "5")
    api = Api(port)
    source = (
        "import loadpilot as lp\n"
        "@lp.scenario(profile=lp.users({users}, '2s', think='100ms'))\n"
        "class Browse(lp.VUser):\n"
        "    @lp.task\n"
        "    def home(self):\n"
        "        self.client.get('/')\n"
    )
    try:
        before = target.served
        status, body = api.request(
            "POST", "/scenarios", {"scenario": source.format(users=6), "target": target.url}
        )
        assert status == 403 and "6 users" in body["detail"] and "allows 5" in body["detail"]
        status, body = api.request(
            "POST", "/runs", {**plan(target.url), "load": {
                "model": "closed", "stages": [{"kind": "constant", "rate": 6, "duration_s": 2}]}}
        )  # fmt: skip
        assert status == 403 and "allows 5" in body["detail"]
        assert target.served == before, "nothing was sent for a refused run"

        status, created = api.request(
            "POST", "/scenarios", {"scenario": source.format(users=5), "target": target.url}
        )
        assert status == 201, created
        rows = lines(api.stream("GET", f"/runs/{created['id']}/metrics"))
        s = rows[-1]["summary"]
        assert s["ended"] == "completed" and s["overall"]["requests"] > 0
        assert target.served - before == s["overall"]["requests"]
        assert {r["active_users"] for r in rows[:-1] if r["request"] is None} == {5}
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(20)


def test_serve_spreads_a_plan_over_local_agents(tmp_path: Path, target: lp.TargetServer) -> None:
    p, port = serve(tmp_path, "--token", TOKEN, "--agents", "2")
    api = Api(port)
    try:
        before = target.served
        status, created = api.request("POST", "/runs", plan(target.url, rate=200))
        assert status == 201, created
        s = lines(api.stream("GET", f"/runs/{created['id']}/metrics"))[-1]["summary"]
        assert s["ended"] == "completed" and s["overall"]["requests"] == 400
        assert target.served - before == 400
        agents = pl.read_parquet(Path(created["path"]) / "agents.parquet")
        per_agent = agents.group_by("agent").agg(pl.col("requests").sum()).sort("agent")
        assert per_agent["requests"].to_list() == [200, 200]
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)


def test_serve_and_the_target_listen_on_ports_that_do_not_collide() -> None:
    from loadpilot.cli import _parser

    parser = _parser()
    assert parser.parse_args(["serve"]).port == 8000
    assert parser.parse_args(["target"]).port == 8080


def test_a_long_lived_server_keeps_its_newest_runs_in_memory_and_the_rest_on_disk(
    tmp_path: Path, target: lp.TargetServer
) -> None:
    p, port = serve(tmp_path, "--token", TOKEN, "--keep-runs", "2")
    api = Api(port)
    try:
        ids = []
        for _ in range(4):
            status, created = api.request("POST", "/runs", plan(target.url, rate=50, seconds=1))
            assert status == 201, created
            lines(api.stream("GET", f"/runs/{created['id']}/metrics"))  # to its end
            ids.append(created["id"])
        # Listed and exported: the newest two only.
        status, listed = api.request("GET", "/runs")
        assert status == 200 and [r["id"] for r in listed] == ids[2:]
        status, text = api.request("GET", "/metrics")
        exported = set(re.findall(r'loadpilot_requests_total\{run="(\w+)"', text))
        assert exported == set(ids[2:]), exported
        # The older ones are still there, read back from their directories.
        for rid in ids[:2]:
            status, info = api.request("GET", f"/runs/{rid}")
            assert status == 200, info
            assert info["state"] == "finished" and info["summary"]["overall"]["requests"] == 50
            rows = lines(api.stream("GET", f"/runs/{rid}/metrics"))
            assert rows[-1]["summary"]["overall"]["requests"] == 50
            assert sum(r["requests"] for r in rows[:-1] if r["request"] is None) == 50
            status, html = api.request("GET", f"/runs/{rid}/report")
            assert status == 200 and "<html" in html.lower()
        assert api.request("GET", "/runs/0123456789ab")[0] == 404
        assert api.request("GET", "/runs/..%2Fetc")[0] == 404
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)
