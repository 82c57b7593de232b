"""Slow requests explained by the server's own spans: a small server instrumented with the
OpenTelemetry SDK (its spans exported as OTLP JSON, as the Collector's file exporter writes
them) adds a 50 ms span to one request in 200, at random; the slowest requests the run kept
are joined with those spans by trace id."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import loadpilot as lp
from datasets.traced_shop import shop
from tests.conftest import constant, get


@pytest.mark.slow
def test_the_requests_above_p995_are_put_down_to_the_slow_span(tmp_path: Path) -> None:
    spans = tmp_path / "spans.jsonl"
    with shop(spans) as server:
        plan = lp.Plan(
            target=server.url, load=constant(400, 10), tasks=[get("item", "/item?id={{__iter}}")]
        )
        run = lp.run(plan, tmp_path / "run")
        slow_ids = set(server.slow_ids)
    assert len(slow_ids) == 20, "one request in 200 of 4000"
    # The requests above the p99.5, as the goal reads: strictly slower than it.
    p995 = run.histogram().percentile(99.5)
    above = run.slowest(above=p995)
    assert 15 <= len(above) <= 25, above
    found = lp.traces.read_spans(spans)
    assert found["trace_id"].n_unique() == 4000 and set(found["service"]) == {"shop"}
    why = lp.traces.explain(above, found)
    causes = why.causes
    assert len(causes) == len(above)
    share = (causes["cause"] == "shop: db.query").mean()
    assert share is not None and share >= 0.95, causes
    # Each put down to the span is one the server made slow, and that part is its 50 ms.
    put = causes.filter(pl.col("cause") == "shop: db.query")
    assert set(put["trace_id"]) <= slow_ids
    assert put["ms"].min() >= 50 and put["ms"].max() < 75  # type: ignore[operator]
    # The parts of each request add up to its latency.
    total = why.frame.group_by("trace_id").agg(pl.col("ms").sum(), pl.col("latency_ms").first())
    assert ((total["ms"] - total["latency_ms"]).abs() < 0.05).all(), total
    summary = why.summary()
    assert summary.row(0, named=True)["cause"] == "shop: db.query"
    # The same from the file path, and the chart: one bar per request, split into parts.
    assert lp.traces.explain(above, spans).frame.equals(why.frame)
    spec = why.chart().to_dict()
    assert spec["mark"]["type"] == "bar" and spec["encoding"]["color"]["field"] == "part"


def _jaeger(trace_id: str) -> dict[str, Any]:
    """A Jaeger query API answer for one trace: a server span with a child (times in µs)."""
    return {"data": [{
        "traceID": trace_id,
        "processes": {"p1": {"serviceName": "api"}},
        "spans": [
            {"traceID": trace_id, "spanID": "a1", "operationName": "GET /x", "processID": "p1",
             "references": [], "startTime": 1_000_000, "duration": 30_000},
            {"traceID": trace_id, "spanID": "b2", "operationName": "sql", "processID": "p1",
             "references": [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": "a1"}],
             "startTime": 1_005_000, "duration": 20_000},
        ],
    }]}  # fmt: skip


def test_spans_read_from_jaeger_answers_and_a_query_api_by_trace_id(tmp_path: Path) -> None:
    tid = "0af7651916cd43dd8448eb211c80319c"
    spans = lp.traces.read_spans(_jaeger(tid))
    assert spans.select("span_id", "parent_id", "service", "name").rows() == [
        ("a1", None, "api", "GET /x"),
        ("b2", "a1", "api", "sql"),
    ]
    assert spans["end_ns"].to_list() == [1_030_000_000, 1_025_000_000]
    # A query API (Jaeger's and Tempo's share /api/traces/<id>): each trace asked for, one it
    # does not have (404) left out, an unreachable one an error that names it.
    asked: list[str] = []

    class Query(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            asked.append(self.path)
            body = json.dumps(_jaeger(tid)).encode() if self.path.endswith(tid) else b"{}"
            self.send_response(200 if self.path.endswith(tid) else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Query)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        got = lp.traces.read_spans(url, [tid, "f" * 32, tid])
    finally:
        server.shutdown()
        server.server_close()
    assert asked == [f"/api/traces/{tid}", f"/api/traces/{'f' * 32}"]
    assert got.equals(spans)
    with pytest.raises(ValueError, match="give the trace ids"):
        lp.traces.read_spans(url)
    with pytest.raises(ValueError, match=r"127.0.0.1:1/api/traces"):
        lp.traces.read_spans("http://127.0.0.1:1", [tid])
    bad = tmp_path / "bad.json"
    bad.write_text("not json at all")
    with pytest.raises(ValueError, match="bad.json: not OTLP JSON"):
        lp.traces.read_spans(bad)
