from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import loadpilot as lp


@pytest.fixture
def target() -> Iterator[lp.TargetServer]:
    """The built-in target on a free loopback port."""
    with lp.start_target() as t:
        yield t


class Recorder(ThreadingHTTPServer):
    """A plain Python HTTP server that notes when each request arrived, for tests that check the
    engine's timing from the other side of the socket."""

    daemon_threads = True

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RecordingHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        with self.server.lock:
            self.server.arrivals.append((time.monotonic(), self.path))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "run"


def constant(rate: float, duration_s: float) -> lp.OpenLoad:
    return lp.OpenLoad(stages=[lp.Constant(rate=rate, duration_s=duration_s)])


def get(name: str, path: str = "/", weight: int = 1, **kw: object) -> lp.Task:
    return lp.Task(name=name, weight=weight, requests=[lp.Request(path=path, **kw)])  # type: ignore[arg-type]


def interrupt_cli(args: list[str], after_s: float = 3.0) -> tuple[int, str, str, float]:
    """Runs ``loadpilot ARGS``, presses Ctrl-C ``after_s`` after the run has started (its
    "run directory:" line: a fresh checkout may take seconds to import), and returns its exit
    code, its output and how long it took to stop."""
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
    head = []
    for line in proc.stdout:
        head.append(line)
        if line.startswith("run directory:"):
            break
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=20)
    return proc.returncode, "".join(head) + out, err, time.monotonic() - sent


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
