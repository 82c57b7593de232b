"""What coordinators and agents say to each other over NATS: subjects, timings and how to
connect (documented in docs/distributed.md)."""

from __future__ import annotations

import asyncio
import importlib.util
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadpilot.errors import LoadPilotError

#: Agents answer here (request/reply) with who they are and whether they are free.
DISCOVER = "loadpilot.agents.discover"
#: What a run's agents load once: its plan and, for Python scenarios, the scenario's files
#: (a JetStream object store, so large feeders travel in chunks).
WORK_BUCKET = "LOADPILOT_WORK"
#: Every closed interval and each slice's end, on JetStream (stream ``STREAM``).
STREAM = "LOADPILOT"
DATA_PREFIX = "loadpilot.data"


def agent_subject(name: str, what: str) -> str:
    """An agent's own subjects: ``clock`` (a time sample) and ``work`` (a slice to run)."""
    return f"loadpilot.agent.{name}.{what}"


def run_subject(run: str, what: str) -> str:
    """A run's subjects: ``beat`` (the coordinator is alive), ``ctl`` (stop), ``agents``
    (agents' heartbeats and events)."""
    return f"loadpilot.run.{run}.{what}"


def data_subject(run: str, agent: str) -> str:
    return f"{DATA_PREFIX}.{run}.{agent}"


def data_subject_agent(subject: str) -> str:
    """The agent a data subject names (``data_subject``'s second part), or "?"."""
    run_and_agent = subject.removeprefix(DATA_PREFIX + ".").split(".")
    return run_and_agent[1] if subject.startswith(DATA_PREFIX) and len(run_and_agent) > 1 else "?"


#: The coordinator's heartbeat.
BEAT_S = 0.5
#: An agent's heartbeat, with how far each of its slices has got: a lost slice's takeover
#: starts from there, so whatever the agent sent after it (sent twice) is at most this long.
PROGRESS_S = 0.1
#: An agent silent this long (while the coordinator is connected) is lost.
AGENT_LOST_S = 2.0
#: A coordinator silent this long (while the agent is connected) is gone: the agent stops.
COORDINATOR_LOST_S = 3.0
#: Cut off from NATS this long, an agent stops its load whatever the coordinator does.
DISCONNECTED_STOP_S = 30.0
#: The longest an agent that falls silent may still be sending: the time NATS takes to tell
#: it it is cut off (three missed pings a second apart, and a margin), then
#: ``DISCONNECTED_STOP_S``.
SILENT_SENDING_S = DISCONNECTED_STOP_S + 5.0
#: An interval not reported by every live agent closes this long after it ended.
CLOSE_GRACE_S = 3.0


def valid_name(name: str) -> bool:
    """Agent names become NATS subject tokens: letters, digits, ``-`` and ``_``."""
    return bool(name) and all(c.isalnum() or c in "-_" for c in name)


@dataclass(frozen=True)
class Secure:
    """How a coordinator or an agent proves itself to NATS and checks NATS: a token, a
    credentials file (``.creds``: a user JWT and its key), the CA that signed the server's
    certificate, and a client certificate and key (mutual TLS). The same for agents,
    ``loadpilot run``, ``loadpilot serve`` and ``lp.Agents``."""

    token: str | None = None
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def check(self) -> None:
        """Refuses files that are not there, and half a client certificate, before anything
        connects."""
        for flag, path in (
            ("--creds", self.creds),
            ("--tls-ca", self.tls_ca),
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
        ):
            if path is not None and not Path(path).is_file():
                raise LoadPilotError(f"{flag} {path}: no such file")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise LoadPilotError("--tls-cert and --tls-key go together (a client certificate "
                                 "and its key, for mutual TLS)")  # fmt: skip
        if self.creds is not None and importlib.util.find_spec("nkeys") is None:
            raise LoadPilotError(
                "--creds needs the nkeys package: pip install '.[distributed]' from a LoadPilot "
                "checkout"
            )


def connect_options(url: str, secure: Secure, name: str) -> dict[str, Any]:
    """Options of ``nats.connect`` shared by agents and coordinators: reconnect for ever,
    quickly (a restarted server is back within a second)."""
    opts: dict[str, Any] = {
        "servers": [url],
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 2,
        "ping_interval": 1,
        "max_outstanding_pings": 3,
        "allow_reconnect": True,
    }
    if secure.token:
        opts["token"] = secure.token
    if secure.creds:
        opts["user_credentials"] = secure.creds
    if secure.tls_ca or secure.tls_cert or url.startswith("tls://"):
        ctx = ssl.create_default_context(cafile=secure.tls_ca)
        if secure.tls_cert:
            ctx.load_cert_chain(secure.tls_cert, secure.tls_key)
        opts["tls"] = ctx
    return opts


async def connect(
    url: str,
    *,
    name: str,
    secure: Secure | None = None,
    timeout_s: float = 10.0,
    disconnected: Callable[[], Awaitable[None]] | None = None,
    reconnected: Callable[[], Awaitable[None]] | None = None,
) -> Any:
    """Connects to NATS, failing after ``timeout_s`` with the last error seen (a refused
    connection, a bad token); once connected, reconnects for ever."""
    import nats

    last: list[str] = []
    refused = asyncio.Event()

    async def on_error(e: Exception) -> None:
        last.append(str(e) or type(e).__name__)
        # Trying again will not help: the server's certificate is not trusted, ours is
        # refused, or the credentials are.
        if isinstance(e, ssl.SSLError) or "authorization" in str(e).lower():
            refused.set()

    opts = connect_options(url, secure or Secure(), name)
    connecting = asyncio.ensure_future(
        nats.connect(
            **opts,
            error_cb=on_error,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
        )
    )
    given_up = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait({connecting, given_up}, timeout=timeout_s, return_when="FIRST_COMPLETED")
        if connecting.done():
            return connecting.result()
        raise TimeoutError
    except (TimeoutError, OSError, Exception) as e:
        why = last[-1] if last else (str(e) or type(e).__name__)
        raise ConnectionError(f"cannot connect to NATS at {redact(url)}: {why}") from None
    finally:
        given_up.cancel()
        if not connecting.done():
            connecting.cancel()


def redact(url: str) -> str:
    """A NATS URL without its token or password."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
