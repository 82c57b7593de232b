"""The coordinator of a distributed run: finds its agents, measures their clocks, hands each a
slice of the one schedule starting at one agreed instant, adds up what they report into the
run directory, and keeps the run whole when an agent is lost.

It is what ``lp.start(..., agents=...)`` and ``loadpilot run --agents`` drive; to the rest of
LoadPilot it looks like a local run's engine handle (rows, summary, histograms)."""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

try:
    from nats.aio.msg import Msg
    from nats.js.api import ConsumerConfig, ObjectStoreConfig, StorageType, StreamConfig
except ImportError:  # pragma: no cover - the extra is missing
    raise ImportError(
        "distributed runs need the NATS client: pip install '.[distributed]' from a LoadPilot "
        "checkout"
    ) from None

from loadpilot import _engine
from loadpilot.cluster import protocol as P
from loadpilot.cluster import slices
from loadpilot.cluster.server import NatsServer, spawn_agent
from loadpilot.errors import ClusterError, ReportError
from loadpilot.plan import OpenLoad, Plan, Shard
from loadpilot.running import store
from loadpilot.running.runs import AGENT_SCHEMA
from loadpilot.scenarios.scenario import Scenario
from loadpilot.summary import Validity

#: What ``on_agent_loss`` may be.
LOSS_POLICIES = ("redistribute", "continue", "abort")


@dataclass(frozen=True)
class Agents:
    """Where a distributed run's load comes from. ``count`` agents; with no ``nats`` URL a
    NATS server is started on loopback for the run, and with ``spawn`` (the default when no
    URL is given) the agents are started here as child processes. ``on_loss``: what happens
    when an agent is lost mid-run (``redistribute``: the survivors take over its remaining
    share of the schedule; ``continue``; ``abort``). An agent whose clock is off by more than
    ``max_offset_ms`` is reported before the start."""

    count: int
    nats: str | None = None
    spawn: bool | None = None
    timeout_s: float = 60.0
    on_loss: str = "redistribute"
    max_offset_ms: float = 50.0
    token: str | None = None
    """NATS: a token (else one in the URL), a credentials file (``.creds``), the CA that
    signed the server's certificate, and a client certificate and key for mutual TLS; as
    agents take them."""
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ClusterError(f"agents: count must be a whole number >= 1, got {self.count!r}")
        if self.on_loss not in LOSS_POLICIES:
            raise ClusterError(
                f"agents: on_loss {self.on_loss!r}: use one of {', '.join(LOSS_POLICIES)}"
            )
        if not (self.timeout_s > 0):
            raise ClusterError("agents: timeout_s must be > 0")
        self.secure.check()

    @property
    def spawns(self) -> bool:
        return self.nats is None if self.spawn is None else self.spawn

    @property
    def secure(self) -> P.Secure:
        """How to connect to NATS (the server started for the run takes its token only)."""
        if self.nats is None:
            return P.Secure(token=self.token)
        return P.Secure(self.token, self.creds, self.tls_ca, self.tls_cert, self.tls_key)


class AgentState(StrEnum):
    """Where an agent stands in a run."""

    #: Found and answering, no work yet.
    READY = "ready"
    #: Running at least one slice.
    RUNNING = "running"
    #: Every slice it ran has ended: it no longer beats.
    DONE = "done"
    #: Silent past the loss limit: its slices were given up (and taken over).
    LOST = "lost"


class ReporterState(StrEnum):
    """Where a slice (what reports intervals: an agent's own, or a takeover) stands."""

    RUNNING = "running"
    #: Its end (the slice's own summary) has arrived.
    ENDED = "ended"
    #: Its agent was lost or refused it: it reports nothing more.
    LOST = "lost"


@dataclass
class _Agent:
    name: str
    info: dict[str, Any]
    offset_s: float = 0.0
    rtt_s: float = 0.0
    state: AgentState = AgentState.READY
    last_seen: float = field(default_factory=time.monotonic)
    last_seen_wall: float = field(default_factory=time.time)
    requests: int = 0


@dataclass
class _Reporter:
    name: str
    agent: str
    share: slices.Slice
    state: ReporterState = ReporterState.RUNNING
    summary: dict[str, Any] | None = None
    #: How far it had got at its agent's last heartbeat (open model): one past the highest
    #: arrival index sent, and the arrivals sent per task.
    progress: tuple[int, list[int]] | None = None
    #: Once lost: its progress then (its takeover starts there), and the run's second up to
    #: which it may have gone on sending (the arrivals in between are of unknown fate).
    lost_at: tuple[int, list[int]] | None = None
    sending_until_s: float = 0.0
    #: Its progress as its agent said it later (the agent was cut off, not dead).
    heard_after: tuple[int, list[int]] | None = None
    #: Survivors run the rest of it.
    taken_over: bool = False


@dataclass
class _Child:
    """An agent process this coordinator started."""

    name: str
    proc: Any
    log: Path
    #: When it was seen to have exited (seconds since the Unix epoch).
    exited_at: float | None = None

    def tail(self, lines: int = 5) -> str:
        """The last lines of its log, on one line."""
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(text[-lines:]) or "an empty log"


class _RunFiles:
    """What a distributed run's directory gets besides a local run's files: its events, one
    JSON line each (agents found, lost, taken over; bad reports), and its agents' rows."""

    #: Events also said on standard output, where the user sees them as they happen.
    SAID = ("lost", "exited", "refused", "clock", "takeover", "timeout", "unknown")

    def __init__(self, out: Path) -> None:
        self.out = out

    def event(self, event: str, agent: str, detail: str) -> None:
        e = {"time": time.time(), "event": event, "agent": agent, "detail": detail}
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / store.EVENTS, "a") as f:
                f.write(json.dumps(e) + "\n")
        except OSError:
            pass
        if event in self.SAID:
            print(f"agent {agent}: {event}: {detail}" if agent != "-" else f"{event}: {detail}",
                  flush=True)  # fmt: skip

    def agents(self, rows: bytes) -> str | None:
        """Writes the agents' rows (``agents.jsonl``, ``agents.parquet``); the error, if a
        file cannot be written."""
        path = self.out / store.AGENTS_JSONL
        try:
            path.write_bytes(rows)
            if rows:
                frame = store.rows_from_ndjson(rows, extra={"agent": pl.String()})
                frame.write_parquet(self.out / store.AGENTS_PARQUET)
        except OSError as e:
            return f"{path}: {e}"
        return None


def _scenario_files(scenario: Scenario) -> tuple[str, dict[str, str]]:
    """The scenario's file and the feed files it reads, base64, by path relative to it: what
    an agent needs to load the same scenario."""
    file: Path | None = None
    if scenario.origin is not None:
        file = Path(scenario.origin["locustfile"])
    for v in vars(scenario.user).values() if file is None else ():
        code = getattr(v, "__code__", None)
        if code is not None:
            file = Path(code.co_filename)
            break
    if file is None or not file.is_file():
        raise ClusterError(
            f"scenario {scenario.name} has Python code and is not in a file: agents load "
            "scenarios from files (put the class in a .py file and load it from there)"
        )
    files = {file.name: base64.b64encode(file.read_bytes()).decode()}
    source = scenario.feeder.source if scenario.feeder is not None else None
    if source is not None:
        rel = Path(source)
        found = file.parent / rel if not rel.is_absolute() else rel
        if not found.is_file():
            found = rel
        if rel.is_absolute() or ".." in rel.parts or not found.is_file():
            raise ClusterError(
                f"feed {source!r}: agents get feed files by a path relative to the scenario "
                "file, inside its directory"
            )
        files[rel.as_posix()] = base64.b64encode(found.read_bytes()).decode()
    return file.name, files


class Coordinator:
    """A distributed run, seen as an engine run handle."""

    def __init__(self, plan: Plan, scenario: Scenario | None, out: Path, agents: Agents) -> None:
        self.plan = plan
        self.scenario = scenario
        self.spec = agents
        self._out = out
        self._journal = _RunFiles(out)
        self._names = [t.name for t in plan.tasks] + (["on_start"] if plan.hooks.on_start else [])
        self._runs_on: list[str] = [str(t.path) for t in plan.tasks]
        self.run_id = uuid.uuid4().hex[:12]
        self._merge: _engine.Merge | None = None
        self._agents: dict[str, _Agent] = {}
        self._reporters: dict[str, _Reporter] = {}
        self._done = threading.Event()
        self._summary: str | None = None
        self._failure: str | None = None
        self._stop_reason: str | None = None
        self._server: NatsServer | None = None
        self._children: list[_Child] = []
        self._start_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = False
        self._lock = threading.Lock()
        self._files: tuple[str, dict[str, str]] | None = None
        if plan.python():
            if scenario is None:
                raise ClusterError("a plan with Python parts runs on agents from its scenario")
            self._files = _scenario_files(scenario)

    # -- starting -----------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the run; returns once every agent has its slice (or raises why not)."""
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(started,), name="loadpilot-coordinator", daemon=True
        )
        self._thread.start()
        try:
            started.result()
        except BaseException:
            self._thread.join(15)
            raise
        # An interpreter that exits with the run going stops it first: agents and the NATS
        # server started for it end with it.
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        if not self._done.is_set():
            self.stop("stopped")
            self._done.wait(20)

    def _thread_main(self, started: concurrent.futures.Future[None]) -> None:
        try:
            asyncio.run(self._main(started))
        except BaseException as e:  # noqa: BLE001 - whatever ends the loop ends the run
            if not started.done():
                started.set_exception(e)
            else:
                self._failure = self._failure or f"the coordinator failed: {e!r}"
        finally:
            self._cleanup()
            self._done.set()
            atexit.unregister(self._at_exit)

    def _cleanup(self) -> None:
        for child in self._children:
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in self._children:
            try:
                child.proc.wait(5)
            except Exception:
                child.proc.kill()
                child.proc.wait()
        if self._server is not None:
            self._server.close()

    async def _main(self, started: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        spec = self.spec
        url = spec.nats
        if url is None:
            self._server = NatsServer()
            url = self._server.url
        if spec.spawns:
            from urllib.parse import urlsplit

            host = urlsplit(self.plan.target).hostname or "loopback"
            code = self._files is not None
            for i in range(spec.count):
                name = f"local-{self.run_id[:6]}-{i}"
                log = self._out / "agents" / f"{name}.log"
                proc = spawn_agent(
                    url, name, spec.secure, allow_targets=[host], allow_code=code, log=log
                )
                self._children.append(_Child(name, proc, log))

        async def on_disconnect() -> None:
            self._connected = False

        async def on_reconnect() -> None:
            self._connected = True
            now = time.monotonic()
            for a in self._agents.values():
                a.last_seen = max(a.last_seen, now)

        try:
            nc = await P.connect(
                url,
                name=f"coordinator-{self.run_id}",
                secure=spec.secure,
                timeout_s=10.0,
                disconnected=on_disconnect,
                reconnected=on_reconnect,
            )
        except ConnectionError as e:
            raise ClusterError(str(e)) from None
        self._connected = True
        self.nc = nc
        try:
            await self._prepare(nc)
            started.set_result(None)
            await self._drive(nc)
        finally:
            await nc.drain()

    async def _prepare(self, nc: Any) -> None:
        spec = self.spec
        found = await self._discover(nc, spec.count, spec.timeout_s)
        with self._lock:
            self._agents = {a.name: a for a in found}
        for a in found:
            a.offset_s, a.rtt_s = await self._clock(nc, a.name)
            if abs(a.offset_s) * 1000 > spec.max_offset_ms:
                self._event(
                    "clock",
                    a.name,
                    f"clock off by {a.offset_s * 1000:+.1f} ms (bound {spec.max_offset_ms:g} ms)",
                )
        js = nc.jetstream()
        try:
            await js.add_stream(
                StreamConfig(
                    name=P.STREAM,
                    subjects=[f"{P.DATA_PREFIX}.>"],
                    storage=StorageType.FILE,
                    max_age=3600.0,
                    duplicate_window=300.0,
                )
            )
        except Exception as e:
            raise ClusterError(f"NATS has no JetStream (start nats-server with -js): {e}") from None
        self._js = js
        self._sub = await js.subscribe(
            f"{P.DATA_PREFIX}.{self.run_id}.>",
            durable=f"coordinator-{self.run_id}",
            cb=self._on_data,
            manual_ack=True,
            config=ConsumerConfig(ack_wait=2.0, max_ack_pending=10_000),
        )
        await nc.subscribe(P.run_subject(self.run_id, "agents"), cb=self._on_agents)
        # The plan (and scenario files) once per run, in chunks: feeders may be large.
        shared: dict[str, Any] = {"plan": self.plan.to_json()}
        if self._files is not None:
            assert self.scenario is not None
            shared["entry"], shared["files"] = self._files
            shared["scenario"] = self.scenario.name
            if self.scenario.origin is not None:
                origin = dict(self.scenario.origin)
                origin.pop("locustfile")
                shared["locust"] = origin
        try:
            self._obs = await js.create_object_store(
                P.WORK_BUCKET, config=ObjectStoreConfig(ttl=3600.0, storage=StorageType.FILE)
            )
            await self._obs.put(self.run_id, json.dumps(shared).encode())
        except Exception as e:
            raise ClusterError(f"cannot store the run's plan on NATS: {e}") from None
        lead = 2.0 if self.plan.hooks.on_start else 1.0
        self._start_at = time.time() + lead
        self._merge = _engine.Merge(
            self.plan.to_json(), self._out, self._names, self._runs_on, self._start_at
        )
        self._beat_task = asyncio.create_task(self._beat(nc))
        for a, sl in zip(found, slices.initial(len(found)), strict=True):
            reporter = a.name
            self._reporters[reporter] = _Reporter(reporter, a.name, sl)
            err = await self._send_work(nc, a, reporter, sl, self._connections(sl))
            if err is not None:
                await self._publish_ctl(nc, "stopped")
                raise ClusterError(f"agent {a.name} refused the run: {err}")
            a.state = AgentState.RUNNING
            a.last_seen = time.monotonic()
            self._event("started", a.name, f"slice {sl.index}/{sl.count}")

    def _connections(self, sl: slices.Slice) -> int | None:
        """An open model's connections for one of the first slices (a closed model's users
        are its own)."""
        load = self.plan.load
        if not isinstance(load, OpenLoad):
            return None
        return slices.connections(load.connections, sl.index, sl.count)

    async def _discover(self, nc: Any, count: int, timeout_s: float) -> list[_Agent]:
        deadline = time.monotonic() + timeout_s
        seen: dict[str, dict[str, Any]] = {}
        busy: set[str] = set()
        while time.monotonic() < deadline:
            self._check_children_started()
            inbox = nc.new_inbox()
            answers: list[dict[str, Any]] = []

            async def collect(msg: Msg, answers: list[dict[str, Any]] = answers) -> None:
                try:
                    answers.append(json.loads(msg.data))
                except ValueError:
                    pass

            sub = await nc.subscribe(inbox, cb=collect)
            await nc.publish(P.DISCOVER, b"", reply=inbox)
            await asyncio.sleep(0.3)
            await sub.unsubscribe()
            for info in answers:
                name = str(info.get("name", ""))
                if not P.valid_name(name):
                    continue
                if info.get("state") == "idle":
                    seen[name] = info
                    busy.discard(name)
                elif name not in seen:
                    busy.add(name)
            if len(seen) >= count:
                chosen = sorted(seen)[:count]
                return [_Agent(name, seen[name]) for name in chosen]
        taken = (
            f"; busy with another run: {', '.join(sorted(busy))} (an agent runs one run at a time)"
            if busy
            else ""
        )
        raise ClusterError(
            f"{len(seen)} of {count} agents answered within {timeout_s:g} s on NATS "
            f"{P.redact(self.spec.nats or 'of this run')} (start them with `loadpilot agent "
            f"--nats URL`, or wait longer with --agents-timeout){taken}"
        )

    def _exited(self) -> list[_Child]:
        """Agent processes started here that have exited since the last look."""
        gone = []
        for c in self._children:
            if c.exited_at is None and c.proc.poll() is not None:
                c.exited_at = time.time()
                gone.append(c)
        return gone

    def _check_children_started(self) -> None:
        """An agent started here that exits before the run starts ends the run's start, with
        the agent's own last words."""
        for c in self._exited():
            raise ClusterError(
                f"agent {c.name} exited at start (exit code {c.proc.returncode}): {c.tail()} "
                f"(its log: {c.log})"
            )

    async def _clock(self, nc: Any, name: str) -> tuple[float, float]:
        """The agent's clock minus ours, from the sample with the shortest round trip."""
        best: tuple[float, float] | None = None
        for _ in range(5):
            t0 = time.time()
            try:
                msg = await nc.request(P.agent_subject(name, "clock"), b"", timeout=2)
            except Exception:
                continue
            t1 = time.time()
            theirs = float(json.loads(msg.data)["time"])
            sample = (theirs - (t0 + t1) / 2, t1 - t0)
            if best is None or sample[1] < best[1]:
                best = sample
        if best is None:
            raise ClusterError(f"agent {name} did not answer a clock request")
        return best

    async def _send_work(
        self,
        nc: Any,
        a: _Agent,
        reporter: str,
        sl: slices.Slice,
        connections: int | None,
    ) -> str | None:
        start_at = self._start_at + a.offset_s
        shard = Shard(
            index=sl.index,
            count=sl.count,
            start_at=start_at,
            from_s=sl.from_s,
            from_index=sl.from_index,
        )
        work: dict[str, Any] = {
            "run": self.run_id,
            "reporter": reporter,
            "shard": shard.model_dump(),
            "connections": connections,
        }
        try:
            msg = await nc.request(
                P.agent_subject(a.name, "work"), json.dumps(work).encode(), timeout=10
            )
        except Exception as e:
            return f"no answer ({type(e).__name__})"
        reply = json.loads(msg.data)
        return None if reply.get("ok") else str(reply.get("error", "refused"))

    # -- while the run goes --------------------------------------------------------------------

    async def _beat(self, nc: Any) -> None:
        while True:
            try:
                await nc.publish(P.run_subject(self.run_id, "beat"), b"")
            except Exception:
                pass
            await asyncio.sleep(P.BEAT_S)

    async def _publish_ctl(self, nc: Any, reason: str) -> None:
        body = json.dumps({"op": "stop", "reason": reason}).encode()
        try:
            await nc.publish(P.run_subject(self.run_id, "ctl"), body)
            await nc.flush(2)
        except Exception:
            pass

    async def _on_agents(self, msg: Msg) -> None:
        try:
            m = json.loads(msg.data)
        except ValueError:
            return
        a = self._agents.get(str(m.get("agent")))
        if a is None:
            return
        if m.get("kind") == "beat":
            progress = m.get("progress")
            if isinstance(progress, dict):
                self._progress(a, progress)
            if a.state != AgentState.LOST:
                a.last_seen = time.monotonic()
                a.last_seen_wall = time.time()
            else:
                await self._fence(a)
        elif m.get("kind") == "event":
            self._event(str(m.get("event")), a.name, str(m.get("detail")))

    def _progress(self, a: _Agent, progress: dict[str, Any]) -> None:
        """Takes an agent's word of how far its slices have got."""
        for name, p in progress.items():
            r = self._reporters.get(str(name))
            if r is None or r.agent != a.name or not isinstance(p, list) or len(p) != 2:
                continue
            try:
                upto, started = int(p[0]), [int(n) for n in p[1]]
            except (TypeError, ValueError):
                continue
            # Progress only grows; heartbeats held while the agent was cut off may come after
            # newer ones (its client sends what it held once it reconnects): the furthest wins.
            seen = (upto, started)
            if r.state == ReporterState.LOST:
                # A slice given up on, still going (its agent was cut off): what it sent
                # past its progress at the loss was sent twice.
                if r.heard_after is None or sum(started) > sum(r.heard_after[1]):
                    r.heard_after = seen
            elif r.state == ReporterState.RUNNING:
                if r.progress is None or sum(started) > sum(r.progress[1]):
                    r.progress = seen

    async def _fence(self, a: _Agent) -> None:
        """A lost agent is heard again (it was cut off, not dead): the slices given up on
        must stop, since others have taken them over."""
        mine = [r.name for r in self._reporters.values() if r.agent == a.name]
        body = json.dumps({"op": "stop", "reason": "stopped", "reporters": mine}).encode()
        try:
            await self.nc.publish(P.run_subject(self.run_id, "ctl"), body)
        except Exception:
            pass

    async def _on_data(self, msg: Msg) -> None:
        # Acknowledged whatever it holds: a report that cannot be used is logged once, never
        # redelivered for the rest of the run.
        try:
            self._take_report(msg.data)
        except (ValueError, KeyError, ReportError) as e:
            self._event("bad_report", P.data_subject_agent(msg.subject), str(e))
        await msg.ack()

    def _take_report(self, data: bytes) -> None:
        head, _, body = data.partition(b"\n")
        h = json.loads(head)
        r = self._reporters.get(str(h["reporter"]))
        if r is None or self._merge is None:
            return
        if h["kind"] == "interval" and r.state != ReporterState.LOST:
            added = self._merge.add(r.name, body)
            if added == "late":
                self._event("late", r.agent, f"interval reported after it closed ({r.name})")
            a = self._agents.get(r.agent)
            if a is not None:
                a.last_seen = time.monotonic()
                a.last_seen_wall = time.time()
        elif h["kind"] == "end" and r.state == ReporterState.RUNNING:
            r.summary = json.loads(body)
            r.state = ReporterState.ENDED
            self._wake.set()

    async def _drive(self, nc: Any) -> None:
        merge = self._merge
        assert merge is not None
        n_sched = max(1, math.ceil(self.plan.duration_s))
        stop_sent = False
        ending_since: float | None = None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), 0.2)
            except TimeoutError:
                pass
            self._wake.clear()
            now = time.monotonic()
            if self._stop_reason is not None and not stop_sent:
                await self._publish_ctl(nc, self._stop_reason)
                stop_sent = True
            for c in self._exited():
                a = self._agents.get(c.name)
                if a is None or a.state not in (AgentState.RUNNING, AgentState.READY):
                    continue
                self._event("exited", a.name, f"exit code {c.proc.returncode}: {c.tail()}")
                await self._lose(nc, a, f"its process exited (exit code {c.proc.returncode})")
            for a in self._agents.values():
                mine = [r for r in self._reporters.values() if r.agent == a.name]
                ended = all(r.state == ReporterState.ENDED for r in mine)
                if a.state == AgentState.RUNNING and mine and ended:
                    a.state = AgentState.DONE  # every slice it ran has ended: no more beats
                elif (
                    a.state == AgentState.RUNNING
                    and self._connected
                    and now - a.last_seen > P.AGENT_LOST_S
                ):
                    await self._lose(nc, a, f"no heartbeat for {P.AGENT_LOST_S:g} s")
            live = [r.name for r in self._reporters.values() if r.state == ReporterState.RUNNING]
            elapsed = time.time() - self._start_at
            through = min(int(elapsed - P.CLOSE_GRACE_S), n_sched - 1)
            merge.close_ready(live, max(0, through))
            if not live:
                break
            # A stopped run whose agents do not answer ends anyway.
            if stop_sent:
                ending_since = ending_since or now
                if now - ending_since > 15.0:
                    self._event("timeout", "-", "agents did not end their slices after a stop")
                    break
        self._beat_task.cancel()
        self._finish()
        try:
            await self._sub.unsubscribe()
            await self._js.delete_consumer(P.STREAM, f"coordinator-{self.run_id}")
            await self._obs.delete(self.run_id)
        except Exception:
            pass

    async def _lose(self, nc: Any, a: _Agent, why: str) -> None:
        a.state = AgentState.LOST
        self._event("lost", a.name, why)
        merge = self._merge
        assert merge is not None
        lost = [
            r
            for r in self._reporters.values()
            if r.agent == a.name and r.state == ReporterState.RUNNING
        ]
        child = next((c for c in self._children if c.name == a.name), None)
        for r in lost:
            r.state = ReporterState.LOST
            r.lost_at = r.progress
            # Until when it may have sent: its process's exit, when it was ours and was seen
            # to exit; otherwise as long as an agent cut off from NATS goes on.
            if child is not None and child.exited_at is not None:
                until = child.exited_at
            else:
                until = a.last_seen_wall + P.SILENT_SENDING_S
            r.sending_until_s = until - self._start_at
        if not any(x.state != AgentState.LOST for x in self._agents.values()):
            self._failure = self._failure or (
                f"every agent was lost (the last, {a.name}: {why})"
                + (f"; its log ends: {child.tail()}" if child is not None else "")
            )
        policy = self.spec.on_loss
        if policy == "abort":
            self._stop_reason = self._stop_reason or "aborted"
            return
        remaining = self.plan.duration_s - (time.time() - self._start_at)
        survivors = [x for x in self._agents.values() if x.state == AgentState.RUNNING]
        if policy != "redistribute" or remaining <= 0 or not survivors:
            return
        if self._stop_reason is not None:
            return
        for r in lost:
            from_s = slices.resume_from(r.share, merge.reported_upto(r.name))
            # From the first arrival it was not known to have sent (open model).
            from_index = r.lost_at[0] if r.lost_at is not None else 0
            parts = slices.takeover(r.share, len(survivors), from_s, from_index)
            conns = None
            if isinstance(self.plan.load, OpenLoad):
                share = self._connections(r.share) or 1
                conns = slices.takeover_connections(share, len(survivors))
            for x, part in zip(survivors, parts, strict=True):
                name = f"{x.name}+{r.name}"
                self._reporters[name] = _Reporter(name, x.name, part)
                err = await self._send_work(nc, x, name, part, conns)
                if err is not None:
                    self._reporters[name].state = ReporterState.LOST
                    self._event("refused", x.name, f"takeover of {r.name}: {err}")
                else:
                    r.taken_over = True
                    at = f"arrival {from_index}" if from_index else f"{from_s:g} s"
                    self._event("takeover", x.name, f"{r.name} from {at}")

    def _finish(self) -> None:
        merge = self._merge
        assert merge is not None
        ended = [
            r for r in self._reporters.values() if r.state == ReporterState.ENDED and r.summary
        ]
        targets: list[float] | None = None
        if isinstance(self.plan.load, OpenLoad):
            targets = [0.0] * len(self._names)
            for r in ended:
                assert r.summary is not None
                for i, t in enumerate(r.summary.get("tasks", [])):
                    targets[i] += float(t.get("target_requests") or 0.0)
        unknown = 0
        for r in self._reporters.values():
            if r.state != ReporterState.ENDED:
                sent = r.lost_at[1] if r.lost_at is not None else []
                taken = merge.lose(r.name, sent)
                if targets is not None:
                    for i, n in enumerate(taken):
                        targets[i] += n
                unknown += self._fate_unknown(r)
        if unknown:
            self._event("unknown", "-", f"{unknown} arrivals may have been sent twice")
        summaries = [r.summary for r in ended if r.summary]
        duration = max((float(s.get("duration_s", 0.0)) for s in summaries), default=None)
        drain = max((float(s.get("drain_s", 0.0)) for s in summaries), default=0.0)
        ends = [str(s.get("ended")) for s in summaries]
        try:
            self._summary = merge.finish(
                self._stop_reason, ends, duration, drain, targets, fate_unknown=unknown
            )
        except _engine.LoadPilotError as e:
            self._failure = str(e)
        self._write_agent_files()

    def _fate_unknown(self, r: _Reporter) -> int:
        """How many of a lost slice's arrivals may have been sent twice: those its agent may
        have sent after the progress its takeover started from. Exactly what it sent when it
        was heard again (cut off, not dead); otherwise every arrival of the slice due before
        it can have stopped sending."""
        if r.state != ReporterState.LOST or not isinstance(self.plan.load, OpenLoad):
            return 0
        if not r.taken_over:
            return 0  # nobody sent its arrivals again
        at_loss = r.lost_at or (0, [])
        if r.heard_after is not None:
            return max(0, sum(r.heard_after[1]) - sum(at_loss[1]))
        share = slices.Slice(r.share.index, r.share.count, r.share.from_s, at_loss[0])
        shard = Shard(
            index=share.index,
            count=share.count,
            from_s=share.from_s,
            from_index=share.from_index,
        )
        plan = self.plan.model_copy(update={"shard": shard})
        until = min(r.sending_until_s, self.plan.duration_s)
        counts = _engine.arrivals_before(plan.to_json(), max(0.0, until))
        return sum(counts or [])

    def _event(self, event: str, agent: str, detail: str) -> None:
        self._journal.event(event, agent, detail)

    def _write_agent_files(self) -> None:
        assert self._merge is not None
        failure = self._journal.agents(self._merge.take_reporter_rows())
        self._failure = self._failure or failure

    # -- the handle a Run wraps ----------------------------------------------------------------

    def take_rows(self) -> bytes:
        return self._merge.take_rows() if self._merge is not None else b""

    def wait(self, timeout_s: float | None = None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + max(0.0, timeout_s)
        while True:
            step = 0.1 if deadline is None else min(0.1, max(0.0, deadline - time.monotonic()))
            if self._done.wait(step):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def stop(self, reason: str = "stopped") -> None:
        if reason not in ("stopped", "aborted"):
            raise ValueError(f"reason is 'stopped' or 'aborted', got {reason!r}")
        if self._stop_reason is None:
            self._stop_reason = reason
        loop = self._loop
        if loop is not None and not self._done.is_set():
            loop.call_soon_threadsafe(self._wake.set)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def summary_json(self) -> str | None:
        return self._summary if self._done.is_set() else None

    def slice_validity(self) -> list[tuple[str, Validity]]:
        """Each ended slice's validity as its agent judged it (its own CPU, lateness and
        connections), with the agent's name."""
        out = []
        for r in self._reporters.values():
            judged = (r.summary or {}).get("validity")
            if judged is not None:
                try:
                    out.append((r.agent, Validity.model_validate(judged)))
                except ValidationError:
                    continue  # an agent of another version: its slice is judged merged only
        return out

    def summary_so_far_json(self) -> str:
        assert self._merge is not None
        return self._merge.summary_so_far_json()

    def failure(self) -> str | None:
        return self._failure

    def histogram(
        self, task: str | None = None, service: bool = False, request: str | None = None
    ) -> _engine.Histogram:
        assert self._merge is not None
        return self._merge.histogram(task, service, request)

    @property
    def tasks(self) -> list[str]:
        return list(self._names)

    def elapsed_s(self) -> float:
        return max(0.0, time.time() - self._start_at)

    @property
    def path(self) -> Path:
        return self._out

    def agents_frame(self) -> pl.DataFrame:
        now = time.monotonic()
        with self._lock:
            rows = [
                {
                    "name": a.name,
                    "state": a.state.value,
                    "clock_offset_ms": a.offset_s * 1000,
                    "rtt_ms": a.rtt_s * 1000,
                    "last_seen_s": now - a.last_seen,
                    "requests": self._requests_of(a.name),
                }
                for a in self._agents.values()
            ]
        return pl.DataFrame(rows, schema=AGENT_SCHEMA)

    def _requests_of(self, agent: str) -> int:
        if self._merge is None:
            return 0
        return sum(
            self._merge.requests_of(r.name) for r in self._reporters.values() if r.agent == agent
        )
