"""The built-in target server, for trying LoadPilot with no server of your own."""

from __future__ import annotations

import json
from types import TracebackType

from loadpilot import _engine


class TargetServer:
    """A built-in target running in this process, on loopback. Use as a context manager or
    call :meth:`stop`."""

    def __init__(self, server: _engine.TargetServer) -> None:
        self._server = server
        self.url: str = server.url
        self.port: int = server.port

    @property
    def served(self) -> int:
        """Requests the target has received so far (each is answered)."""
        return self._server.served

    @property
    def served_h2(self) -> int:
        """Of the requests received, those that came over HTTP/2."""
        return self._server.served_h2

    @property
    def served_by_path(self) -> dict[str, int]:
        """Requests received so far per path (query left out; the first 10,000 paths)."""
        return self._server.served_by_path()

    @property
    def traces(self) -> list[tuple[str, str]]:
        """The W3C ``traceparent`` header of each request that carried one, as ``(path and
        query, traceparent)`` in the order they came (the first ``keep_traces``): the target's
        trace log, to find a kept slow request's trace id on the server's side."""
        return self._server.traces()

    @property
    def connections(self) -> int:
        """Connections the target has accepted so far."""
        return self._server.connections

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> TargetServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<TargetServer {self.url}>"


def start_target(
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    delay_ms: float = 0.0,
    delay_max_ms: float | None = None,
    error_rate: float = 0.0,
    stall_ms: float = 0.0,
    stall_every_s: float = 0.0,
    seed: int = 0,
    tls: bool = False,
    concurrency: int = 0,
    keep_traces: int = 100_000,
) -> TargetServer:
    """Starts the built-in target (``port=0`` picks a free port). Each request waits
    ``delay_ms`` (uniform up to ``delay_max_ms`` when given), fails with 500 at ``error_rate``,
    and the server stops answering for ``stall_ms`` out of every ``stall_every_s`` seconds.
    With ``tls=True`` it serves https with a fresh self-signed certificate (runs against it need
    ``Plan(insecure=True)``). ``concurrency`` caps the requests served at once (0: no cap); the
    rest queue, so with a delay ``d`` the server saturates at ``concurrency / d`` requests per
    second, like a server with a fixed pool of workers. ``keep_traces`` bounds the trace log
    (:attr:`TargetServer.traces`; 0 keeps none, sparing the target its cost per traced
    request)."""
    if concurrency < 0:
        raise ValueError(f"concurrency must be >= 0, got {concurrency}")
    if keep_traces < 0:
        raise ValueError(f"keep_traces must be >= 0, got {keep_traces}")
    cfg = {
        "host": host,
        "port": port,
        "delay_ms": delay_ms,
        "delay_max_ms": delay_max_ms,
        "error_rate": error_rate,
        "stall_ms": stall_ms,
        "stall_every_s": stall_every_s,
        "seed": seed,
        "tls": tls,
        "concurrency": concurrency,
        "keep_traces": keep_traces,
    }
    return TargetServer(_engine.start_target(json.dumps(cfg)))
