"""Small misbehaving HTTP servers on loopback, for tests of what the engine counts when a server
does not play by the rules. Each listens on a free port in a thread of its own and counts the
requests it received."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

#: What a server does with one request on a connection: the bytes to answer with, or None
#: to keep the connection open and answer nothing.
Answer = Callable[[bytes], bytes | None]


class HostileServer:
    """A raw TCP server that reads each request's head and answers with ``answer(head)``
    (raw bytes, so it can break HTTP), or never answers at all."""

    def __init__(self, answer: Answer, *, close_after: bool = False) -> None:
        self._answer = answer
        self._close_after = close_after
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self.received = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            for c in self._conns:
                c.close()
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(0.2)
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                with self._lock:
                    self.received += 1
                reply = self._answer(head)
                if reply is None:
                    continue  # hold the connection, answer nothing
                try:
                    conn.sendall(reply)
                except OSError:
                    return
                if self._close_after:
                    conn.close()
                    return


def silent() -> HostileServer:
    """Accepts, reads, never answers."""
    return HostileServer(lambda head: None)


def malformed_status() -> HostileServer:
    return HostileServer(lambda head: b"HTTP/1.1 abc Nonsense\r\nContent-Length: 0\r\n\r\n")


def bad_chunking() -> HostileServer:
    return HostileServer(
        lambda head: (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
        )
    )


def short_body() -> HostileServer:
    """Announces 100 bytes, sends 5 and closes."""
    return HostileServer(
        lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello", close_after=True
    )


def huge_headers() -> HostileServer:
    """A header block far beyond any client's limit."""
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000) for i in range(600))
    return HostileServer(
        lambda head: b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 0\r\n\r\n"
    )
