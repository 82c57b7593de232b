"""Secure links to NATS on every side: a real nats-server over TLS (its certificates made by a
CA of the test's own, mutual TLS required), and a real nats-server in operator mode whose only
way in is a user's `.creds` file; coordinators (`loadpilot run`, `loadpilot serve`) and agents
connect with the same flags, and a missing credential is a clear error."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nkeys  # the distributed extra's (`--creds` needs it)
import pytest
from conftest import get

import loadpilot as lp
from loadpilot.cluster.server import free_port, nats_server_binary

LOADPILOT = [sys.executable, "-m", "loadpilot.cli"]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it
    (openssl: `make test` installs it)."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=LoadPilot test CA", "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
                "-keyout", f"{who}-key.pem", "-out", f"{who}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "2", "-extfile", f"{who}.ext",
                "-out", f"{who}.pem", cwd=d)  # fmt: skip


class Server:
    """nats-server started from a configuration file, on a free loopback port."""

    def __init__(self, d: Path, config: str) -> None:
        self.port = free_port()
        conf = d / "nats.conf"
        conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\njetstream {{ store_dir: "{d / "js"}" }}\n' + config
        )
        self.log = d / "nats.log"
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf), "-l", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nats-server did not listen")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    d = tmp_path / "tls"
    d.mkdir()
    make_certificates(d)
    server = Server(
        d,
        "tls {\n"
        f'  cert_file: "{d / "server.pem"}"\n'
        f'  key_file: "{d / "server-key.pem"}"\n'
        f'  ca_file: "{d / "ca.pem"}"\n'
        "  verify: true\n"
        "  timeout: 2\n"
        "}\n",
    )
    yield server, d
    server.close()


# -- NATS JWTs, as nsc makes them: ed25519-nkey signed claims ----------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats: dict[str, object]) -> str:
    claims: dict[str, object] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = issuer.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{_b64(signature)}"


def new_key(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


UNLIMITED = {
    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
    "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1,
    "consumer": -1, "max_ack_pending": -1, "mem_max_stream_bytes": -1,
    "disk_max_stream_bytes": -1, "max_bytes_required": False,
}  # fmt: skip


@pytest.fixture
def creds_nats(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """nats-server in operator mode (accounts from JWTs, no other way in), and a user's
    `.creds` file of an account with JetStream."""
    d = tmp_path / "creds"
    d.mkdir()
    operator = new_key(nkeys.PREFIX_BYTE_OPERATOR)
    system, account = new_key(nkeys.PREFIX_BYTE_ACCOUNT), new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    user = new_key(nkeys.PREFIX_BYTE_USER)
    op_pub = operator.public_key.decode()
    sys_pub, acc_pub = system.public_key.decode(), account.public_key.decode()
    op_jwt = jwt(operator, op_pub, "test", {"type": "operator", "system_account": sys_pub})
    sys_jwt = jwt(operator, sys_pub, "SYS", {"type": "account", "limits": {"conn": -1}})
    acc_jwt = jwt(operator, acc_pub, "load", {"type": "account", "limits": UNLIMITED})
    user_jwt = jwt(account, user.public_key.decode(), "loadpilot",
                   {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1,
                    "payload": -1})  # fmt: skip
    creds = d / "loadpilot.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )
    server = Server(
        d,
        f'operator: "{op_jwt}"\n'
        f'system_account: "{sys_pub}"\n'
        "resolver: MEMORY\n"
        f'resolver_preload: {{\n  {sys_pub}: "{sys_jwt}"\n  {acc_pub}: "{acc_jwt}"\n}}\n',
    )
    yield server, creds
    server.close()


def client_flags(d: Path) -> list[str]:
    """The flags of a client of the TLS server: the CA, and a certificate it accepts."""
    return ["--tls-ca", str(d / "ca.pem"), "--tls-cert", str(d / "client.pem"),
            "--tls-key", str(d / "client-key.pem")]  # fmt: skip


def start_agent(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*LOADPILOT, "agent", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def plan_file(d: Path, target: str) -> Path:
    p = d / "plan.json"
    plan = lp.Plan(
        name="secure",
        target=target,
        load=lp.OpenLoad(stages=[lp.Constant(rate=200, duration_s=2)]),
        tasks=[get("home", "/")],
    )
    p.write_text(plan.to_json())
    return p


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOADPILOT, *args], capture_output=True, text=True, timeout=90)


def run_counted(args: list[str]) -> subprocess.CompletedProcess[str]:
    """A run whose point is how it connects: what is asserted is that it ran and that every due
    request is counted. Whether the agents, the target and NATS, sharing two cores with the
    rest of the test run, all kept their schedule is the machine's property: a stall makes the
    run invalid, rightly, and is no fault of the connection (--allow-invalid: judged anyway)."""
    done = run([*args, "--allow-invalid"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "accounted for: 400 due = 400 ran + 0 cancelled + 0 unsent" in done.stdout, done.stdout
    return done


@pytest.mark.slow
def test_coordinator_and_agents_run_over_mutual_tls(
    tmp_path: Path, tls_nats: tuple[Server, Path]
) -> None:
    server, d = tls_nats
    url = f"tls://127.0.0.1:{server.port}"
    mine = client_flags(d)
    agent = start_agent(["--nats", url, "--name", "tls-agent", *mine], tmp_path / "agent.log")
    try:
        with lp.start_target() as target:
            plan = plan_file(tmp_path, target.url)
            run_counted(["run", str(plan), "--nats", url, "--external-agents", "1",
                         "--agents-timeout", "30s", "--out", str(tmp_path / "run"),
                         *mine])  # fmt: skip
            assert target.served == 400
            # Agents spawned here on a TLS NATS get the same flags.
            run_counted(["run", str(plan), "--nats", url, "--agents", "2",
                         "--out", str(tmp_path / "run2"), *mine])  # fmt: skip
            assert target.served == 800
            # Without the client certificate the server refuses: one line, exit 2.
            done = run(["run", str(plan), "--nats", url, "--external-agents", "1",
                        "--tls-ca", str(d / "ca.pem"),
                        "--out", str(tmp_path / "run3")])  # fmt: skip
            assert done.returncode == 2, done.stdout + done.stderr
            assert "cannot connect to NATS at tls://127.0.0.1" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
            # Without the CA, the server's certificate is not trusted.
            done = run(["run", str(plan), "--nats", url, "--external-agents", "1",
                        "--out", str(tmp_path / "run4")])  # fmt: skip
            assert done.returncode == 2
            assert "certificate verify failed" in done.stderr, done.stderr
            assert target.served == 800
    finally:
        stop(agent)
    assert "waiting for work" in (tmp_path / "agent.log").read_text()


@pytest.mark.slow
def test_coordinator_and_agents_run_with_a_creds_file(
    tmp_path: Path, creds_nats: tuple[Server, Path]
) -> None:
    server, creds = creds_nats
    url = f"nats://127.0.0.1:{server.port}"
    agent = start_agent(
        ["--nats", url, "--name", "creds-agent", "--creds", str(creds)], tmp_path / "agent.log"
    )
    try:
        with lp.start_target() as target:
            plan = plan_file(tmp_path, target.url)
            run_counted(["run", str(plan), "--nats", url, "--external-agents", "1",
                         "--agents-timeout", "30s", "--creds", str(creds),
                         "--out", str(tmp_path / "run")])  # fmt: skip
            assert target.served == 400
            # lp.Agents takes the same.
            r = lp.start(
                lp.Plan.from_json(plan.read_text()),
                tmp_path / "run2",
                agents=lp.Agents(count=1, nats=url, creds=str(creds), timeout_s=30),
            )
            r.wait()
            assert r.summary().overall.requests == 400
            # No credentials: refused by the server, said in one line.
            done = run(["run", str(plan), "--nats", url, "--external-agents", "1",
                        "--out", str(tmp_path / "run3")])  # fmt: skip
            assert done.returncode == 2
            assert "cannot connect to NATS" in done.stderr and "Traceback" not in done.stderr
            assert target.served == 800
    finally:
        stop(agent)


@pytest.mark.slow
def test_missing_credential_files_are_named_before_anything_connects(tmp_path: Path) -> None:
    plan_file(tmp_path, "http://127.0.0.1:9")
    for flags, said in (
        (["--creds", str(tmp_path / "nope.creds")], "--creds"),
        (["--tls-ca", str(tmp_path / "ca.pem")], "--tls-ca"),
    ):
        done = run(["run", str(tmp_path / "plan.json"), "--nats", "tls://127.0.0.1:9",
                    "--external-agents", "1", *flags])  # fmt: skip
        assert done.returncode == 2
        assert f"{said} {tmp_path}" in done.stderr and "no such file" in done.stderr, done.stderr
    (tmp_path / "c.pem").write_text("")
    done = run(["agent", "--nats", "tls://127.0.0.1:9", "--tls-cert", str(tmp_path / "c.pem")])
    assert done.returncode == 2
    assert "--tls-cert and --tls-key go together" in done.stderr, done.stderr


@pytest.mark.slow
def test_serve_spreads_runs_over_agents_on_a_mutual_tls_nats(
    tmp_path: Path, tls_nats: tuple[Server, Path]
) -> None:
    """The Helm chart starts the coordinator (`loadpilot serve`) with the NATS flags agents
    take."""
    from test_serve import TOKEN, Api, lines, serve

    server, d = tls_nats
    url = f"tls://127.0.0.1:{server.port}"
    mine = client_flags(d)
    agent = start_agent(["--nats", url, "--name", "tls-agent", *mine], tmp_path / "agent.log")
    p, port = serve(tmp_path, "--token", TOKEN, "--nats", url, "--external-agents", "1", *mine)
    try:
        with lp.start_target() as target:
            api = Api(port)
            body = json.loads(plan_file(tmp_path, target.url).read_text())
            status, created = api.request("POST", "/runs", body)
            assert status == 201, created
            s = lines(api.stream("GET", f"/runs/{created['id']}/metrics"))[-1]["summary"]
            assert s["ended"] == "completed" and s["overall"]["requests"] == 400
            assert target.served == 400
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)
        stop(agent)
