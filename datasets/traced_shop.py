"""A small server instrumented with the OpenTelemetry SDK, the kind whose slow requests
``lp.traces.explain`` explains: ``GET /item?id=N`` is a server span with a short ``cache.get``
child, and one request in every 200 (at a random place in each block of 200) has a 50 ms
``db.query`` child. Its spans are written as OTLP JSON (one ``ExportTraceServiceRequest`` a
line, as the OpenTelemetry Collector's file exporter writes them) when it stops.

It recorded the ``traced`` dataset (``datasets/make.py``), and the tests run it."""

from __future__ import annotations

import contextlib
import gc
import json
import random
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


class OtlpJsonFile(SpanExporter):
    """Writes spans as OTLP JSON, one ``ExportTraceServiceRequest`` a line (the format of the
    OpenTelemetry Collector's file exporter: ids in hex, times in ns as strings). The spans are
    held in memory and written when the provider shuts down, so that exporting never holds up
    the server (a batch written while the run goes stalls its requests for tens of ms)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.held: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.lock:
            self.held.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self.path.open("w") as f:
            for i in range(0, len(self.held), 500):
                f.write(json.dumps(self._document(self.held[i : i + 500])) + "\n")

    @staticmethod
    def _document(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
        out = []
        for s in spans:
            assert s.context is not None
            out.append({
                "traceId": f"{s.context.trace_id:032x}",
                "spanId": f"{s.context.span_id:016x}",
                "parentSpanId": f"{s.parent.span_id:016x}" if s.parent else "",
                "name": s.name,
                "kind": s.kind.value + 1,
                "startTimeUnixNano": str(s.start_time),
                "endTimeUnixNano": str(s.end_time),
            })  # fmt: skip
        service = spans[0].resource.attributes["service.name"] if spans else "unknown"
        return {"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name",
                                         "value": {"stringValue": service}}]},
            "scopeSpans": [{"scope": {"name": "shop"}, "spans": out}],
        }]}  # fmt: skip


class Shop(ThreadingHTTPServer):
    """``GET /item?id=N``: a server span, a short ``cache.get`` child, and in one request of
    every 200 (at a random place in each block) a 50 ms ``db.query`` child."""

    daemon_threads = True
    # A backlog as real servers have (the standard library's is 5): a burst of new connections
    # would otherwise have its SYNs dropped and retried a second later.
    request_queue_size = 1024

    def __init__(self, spans: Path, seed: int = 7) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
        self.provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFile(spans)))
        self.tracer = self.provider.get_tracer("shop")
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.n = 0
        self.slow_at = self.rng.randrange(200)
        self.slow_ids: set[str] = set()
        super().__init__(("127.0.0.1", 0), _ShopHandler)

    def is_slow(self) -> bool:
        with self.lock:
            slow = self.n % 200 == self.slow_at
            self.n += 1
            if self.n % 200 == 0:
                self.slow_at = self.rng.randrange(200)
            return slow

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ShopHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Shop

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        ctx = TraceContextTextMapPropagator().extract(carrier=self.headers)
        tracer = self.server.tracer
        with tracer.start_as_current_span("GET /item", context=ctx, kind=SpanKind.SERVER) as sp:
            with tracer.start_as_current_span("cache.get"):
                pass
            if self.server.is_slow():
                self.server.slow_ids.add(f"{sp.get_span_context().trace_id:032x}")
                with tracer.start_as_current_span("db.query"):
                    time.sleep(0.05)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def shop(spans: Path) -> Iterator[Shop]:
    """The shop serving in this process, with Python's cyclic garbage collector off meanwhile:
    a full collection of the test process's heap pauses every thread for 50 ms or more, a
    cause of slow requests of its own that this server is not meant to have."""
    server = Shop(spans)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    gc.disable()
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        gc.enable()
        server.provider.shutdown()  # writes every span to the file
