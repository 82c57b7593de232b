"""Servers that are not built on the engine's own HTTP libraries, for tests whose truth must
come from another implementation, and for the benchmarks' peers: nginx (Debian's
``nginx-light``, HTTP/1.1 and HTTP/2 of its own) on a free loopback port, logging every request
it answers unless told not to (a benchmark measures nginx, not its disk)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from loadpilot.cluster.server import free_port

NGINX = "/usr/sbin/nginx"

_CONF = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format proto '$connection $server_protocol $status $request_uri';
    {access_log};
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    http2_max_concurrent_streams {streams};
    server {{
        listen 127.0.0.1:{port}{listen};
        {tls}
        location / {{ default_type text/plain; return 200 "OK"; }}
        location /up/ {{ proxy_pass {upstream}/; }}
    }}
}}
"""


class Served(NamedTuple):
    """One request nginx answered: its connection's serial number, protocol, status and URI."""

    connection: int
    protocol: str
    status: int
    uri: str


class Nginx:
    """nginx with one worker. ``http2``: HTTP/2 (cleartext with prior knowledge, or over TLS
    by ALPN) beside HTTP/1.1; without it, HTTP/1.1 only (over TLS, ALPN offers ``http/1.1``
    alone). ``/`` answers ``OK``; ``/up/...`` is passed to ``upstream`` (for a slow answer).
    ``log``: note every request (:meth:`served`)."""

    def __init__(
        self,
        *,
        http2: bool = True,
        tls: bool = False,
        streams: int = 128,
        upstream: str = "http://127.0.0.1:9",
        log: bool = True,
        exe: str = NGINX,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lp-nginx-"))
        self.port = free_port()
        listen = (" ssl" if tls else "") + (" http2" if http2 else "")
        tls_conf = ""
        if tls:
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                 "-keyout", str(self.dir / "key.pem"), "-out", str(self.dir / "cert.pem")],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            tls_conf = (
                f"ssl_certificate {self.dir}/cert.pem; ssl_certificate_key {self.dir}/key.pem;"
            )
        access_log = f"access_log {self.dir}/access.log proto" if log else "access_log off"
        conf = self.dir / "nginx.conf"
        conf.write_text(
            _CONF.format(
                dir=self.dir,
                port=self.port,
                listen=listen,
                tls=tls_conf,
                streams=streams,
                upstream=upstream,
                access_log=access_log,
            )
        )
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [exe, "-c", str(conf), "-p", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError(f"nginx did not start: {self.errors()}") from None
                time.sleep(0.05)

    def served(self) -> list[Served]:
        """Every request nginx answered, in order."""
        path = self.dir / "access.log"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            conn, proto, status, uri = line.split(" ", 3)
            out.append(Served(int(conn), proto, int(status), uri))
        return out

    def errors(self) -> str:
        path = self.dir / "error.log"
        return path.read_text() if path.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
