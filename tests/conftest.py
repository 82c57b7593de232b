from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import loadpilot as lp
from loadpilot.summary import Stats

# Test tiers. `make test` runs everything; `make test-fast` (the edit-test loop) leaves out the
# tests marked `slow`: those that run load for seconds, or need Chromium, Prometheus, NATS, Helm
# or a build of the package. A test of the fast tier that takes longer than FAST_LIMIT_S is named
# at the end of a fast run, to be marked.
FAST_LIMIT_S = 2.0
_too_slow: list[tuple[str, float]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: runs load for seconds or needs an outside program; not in test-fast"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test in a browser is a slow one wherever it is.
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.duration > FAST_LIMIT_S and "slow" not in report.keywords:
        _too_slow.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _too_slow:
        terminalreporter.section("unmarked slow tests")
        for nodeid, seconds in _too_slow:
            terminalreporter.write_line(
                f"{seconds:.1f} s {nodeid}: over {FAST_LIMIT_S:g} s, mark it slow "
                "(`@pytest.mark.slow`) to keep `make test-fast` fast"
            )


@pytest.fixture
def target() -> Iterator[lp.TargetServer]:
    """The built-in target on a free loopback port."""
    with lp.start_target() as t:
        yield t


class Recorder(ThreadingHTTPServer):
    """A plain Python HTTP server that notes when each request arrived, for tests that check the
    engine's timing from the other side of the socket."""

    daemon_threads = True
    # A real server's backlog, not socketserver's 5: a run that opens hundreds of connections
    # at once (an open model's users logging in) must not have its handshakes dropped.
    request_queue_size = 1024

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []
        #: (method, path, Authorization header) of every request, in order of arrival.
        self.seen: list[tuple[str, str, str | None]] = []
        #: (path, Content-Type header, body) of every POST, in order of arrival (a request
        #: that sent the header twice: both, joined by ", ").
        self.bodies: list[tuple[str, str | None, bytes]] = []
        #: The ``traceparent`` header of every request (None: it had none), in order.
        self.traces: list[str | None] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RecordingHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @classmethod
    @contextlib.contextmanager
    def serving(cls) -> Iterator[Recorder]:
        """A recorder serving on a free loopback port, shut down on leaving."""
        server = cls()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            server.server_close()


def _types(given: list[str] | None) -> str | None:
    """The Content-Type a request sent; two (which no request should send) joined by ", "."""
    return ", ".join(given) if given else None


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: without TCP_NODELAY the body waits for the client's
    # delayed ACK (40 ms) on a kept-alive connection.
    disable_nagle_algorithm = True
    server: Recorder

    def _note(self) -> None:
        with self.server.lock:
            self.server.arrivals.append((time.monotonic(), self.path))
            self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
            self.server.traces.append(self.headers.get("traceparent"))

    def _answer(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        """``GET /sleep/MS`` answers after MS milliseconds; ``/status/N`` with status N;
        ``/json`` (whatever its query) with ``{"ok": true, "items": [1, 2, 3]}``; any other path
        at once."""
        self._note()
        if self.path.startswith("/sleep/"):
            time.sleep(int(self.path.removeprefix("/sleep/")) / 1000)
        if self.path.startswith("/status/"):
            self._answer(b"status", int(self.path.removeprefix("/status/")))
            return
        if self.path.split("?")[0] == "/json":
            self._answer(b'{"ok": true, "items": [1, 2, 3]}')
            return
        self._answer(b"ok")

    def do_POST(self) -> None:  # noqa: N802
        """``POST /login`` with ``{"user": U}`` answers ``{"token": "t-U"}``; ``POST /echo``
        (whatever its query) answers its body; any other path ``ok``."""
        self._note()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.bodies.append(
                (self.path, _types(self.headers.get_all("Content-Type")), body)
            )
        if self.path == "/login":
            user = json.loads(body)["user"]
            self._answer(json.dumps({"token": f"t-{user}"}).encode())
        elif self.path.split("?")[0] == "/echo":
            self._answer(body)
        else:
            self._answer(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder.serving() as server:
        yield server


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "run"


def constant(rate: float, duration_s: float, connections: int = 256) -> lp.OpenLoad:
    return lp.OpenLoad(
        stages=[lp.Constant(rate=rate, duration_s=duration_s)], connections=connections
    )


def get(name: str, path: str = "/", weight: int = 1, **kw: object) -> lp.Task:
    return lp.Task(name=name, weight=weight, requests=[lp.Request(path=path, **kw)])  # type: ignore[arg-type]


def busy(seconds: float, cpu: int | None = None) -> subprocess.Popen[bytes]:
    """A process that keeps one CPU busy for ``seconds`` (on ``cpu`` when given): the competitor
    of tests that show a result holds on a busy machine. Kill it when done."""
    loop = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    return subprocess.Popen([sys.executable, "-c", loop], preexec_fn=pin)


def read_with_hdrh(path: Path) -> list[Any]:
    """The interval histograms of an ``.hlog`` as an independent reader (Python's ``hdrh``)
    sees them."""
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader

    reader = HistogramLogReader(str(path), HdrHistogram(1, 3_600_000_000, 3))
    out = []
    while (h := reader.get_next_interval_histogram()) is not None:
        out.append(h)
    return out


def wait_for_rows(run_dir: Path, rows: int, timeout_s: float = 30.0) -> None:
    """Waits until ``metrics.jsonl`` of a run going on in another process holds ``rows``
    complete task rows (request names' rows not counted: an event, not a guess at how long
    the run takes to get there)."""
    deadline = time.monotonic() + timeout_s
    jsonl = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if jsonl.exists():
            complete = jsonl.read_bytes().rpartition(b"\n")[0]
            if complete.count(b'"request":null') >= rows:
                return
        time.sleep(0.05)
    raise AssertionError(f"{jsonl} did not reach {rows} rows in {timeout_s} s")


def assert_stopped_on_time(recorder: Recorder, signalled: float, s: lp.Summary) -> None:
    """A stop as the server saw it: no request arrived more than a second after the signal
    (``time.monotonic()`` when it was sent), and every request that arrived is one the run
    counts as answered or as cancelled in flight (nothing sent that the run does not own)."""
    with recorder.lock:
        times = [t for t, _ in recorder.arrivals]
    assert times, "nothing reached the server"
    assert max(times) - signalled < 1.0, (
        f"a request arrived {max(times) - signalled:.2f} s after the stop"
    )
    assert_served(s.overall, len(times))


def exposition(text: str) -> list[Any]:
    """Every sample of a Prometheus exposition (``.name``, ``.labels``, ``.value``), as
    Prometheus' own parser (prometheus_client's) reads it."""
    from prometheus_client.parser import text_string_to_metric_families

    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of the samples of ``name`` whose labels include ``labels``."""
    return [
        (s.labels, s.value)
        for s in exposition(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def total(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for _, v in samples(text, name, **labels))


def assert_served(stats: Stats, served: int, extra: int = 0) -> None:
    """What a run says it sent (``stats``: the run's or a task's, one request an iteration),
    held to what the server counted: every answered request reached the server, and nothing
    reached it that the run does not count as answered or as cancelled in flight, beyond
    ``extra`` (what a lost agent sent and never reported)."""
    assert stats.requests <= served <= stats.requests + stats.cancelled + extra, (served, stats)


def interrupt_cli(args: list[str], rows: int = 2) -> tuple[int, str, str, float]:
    """Runs ``loadpilot ARGS`` (which must give ``--out DIR``), presses Ctrl-C once the run
    has written ``rows`` rows, and returns its exit code, its output and the wall time at
    which Ctrl-C was pressed (``time.monotonic()``, for :func:`assert_stopped_on_time`)."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "loadpilot.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    out_dir = Path(args[args.index("--out") + 1])
    try:
        wait_for_rows(out_dir, rows)
    except AssertionError:
        proc.kill()
        raise
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err, sent


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Chromium (Debian's, driven by Playwright) for tests of what users see."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def read_line(stream: Any, timeout_s: float = 30.0) -> str:
    """The next line a child writes, read with a deadline: a child that never prints fails
    its test instead of hanging the suite."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not got:
        pytest.fail(f"no line from the child within {timeout_s:g} s")
    return got[0]
