"""What coordinators and agents say to each other over NATS: subjects, timings and how to
connect (documented in docs/distributed.md)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

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


#: Heartbeats, both ways.
BEAT_S = 0.5
#: An agent silent this long (while the coordinator is connected) is lost.
AGENT_LOST_S = 2.0
#: A coordinator silent this long (while the agent is connected) is gone: the agent stops.
COORDINATOR_LOST_S = 3.0
#: Cut off from NATS this long, an agent stops its load whatever the coordinator does.
DISCONNECTED_STOP_S = 30.0
#: An interval not reported by every live agent closes this long after it ended.
CLOSE_GRACE_S = 3.0


def valid_name(name: str) -> bool:
    """Agent names become NATS subject tokens: letters, digits, ``-`` and ``_``."""
    return bool(name) and all(c.isalnum() or c in "-_" for c in name)


def connect_options(
    url: str, token: str | None, creds: str | None, tls_ca: str | None, name: str
) -> dict[str, Any]:
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
    if token:
        opts["token"] = token
    if creds:
        opts["user_credentials"] = creds
    if tls_ca:
        ctx = ssl.create_default_context(cafile=tls_ca)
        opts["tls"] = ctx
    return opts


async def connect(
    url: str,
    *,
    name: str,
    token: str | None = None,
    creds: str | None = None,
    tls_ca: str | None = None,
    timeout_s: float = 10.0,
    disconnected: Callable[[], Awaitable[None]] | None = None,
    reconnected: Callable[[], Awaitable[None]] | None = None,
) -> Any:
    """Connects to NATS, failing after ``timeout_s`` with the last error seen (a refused
    connection, a bad token); once connected, reconnects for ever."""
    import nats

    last: list[str] = []

    async def on_error(e: Exception) -> None:
        last.append(str(e) or type(e).__name__)

    opts = connect_options(url, token, creds, tls_ca, name)
    try:
        return await asyncio.wait_for(
            nats.connect(
                **opts,
                error_cb=on_error,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
            ),
            timeout_s,
        )
    except (TimeoutError, OSError, Exception) as e:
        why = last[-1] if last else (str(e) or type(e).__name__)
        raise ConnectionError(f"cannot connect to NATS at {redact(url)}: {why}") from None


def redact(url: str) -> str:
    """A NATS URL without its token or password."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
