"""``loadpilot agent``: registers with NATS, waits for work, runs its slices of a run on its
local engine, streams every closed interval to the coordinator, and goes back to waiting.

An agent runs only what its operator allowed: targets matching ``--allow-target`` (loopback
when none is given) and Python scenario code only with ``--allow-code``. It stops its load on
its own when the coordinator goes silent, so no load generator is ever orphaned."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from nats.aio.msg import Msg
from pydantic import ValidationError

from loadpilot import _engine
from loadpilot.allowlist import target_allowed
from loadpilot.cluster import protocol as P
from loadpilot.errors import LoadPilotError
from loadpilot.plan import OpenLoad, Plan, Shard
from loadpilot.summary import Summary
from loadpilot.validity import Probe, judge


class AgentMode(StrEnum):
    """What an agent is doing: waiting for work, or running the slices of one run."""

    IDLE = "idle"
    RUNNING = "running"


@dataclass
class _Slice:
    """One slice of a run this agent runs (its own, or one taken over from a lost agent)."""

    run: str
    reporter: str
    handle: _engine.Run
    dir: Path
    pending: deque[tuple[str, bytes]] = field(default_factory=deque)
    stop_reason: str | None = None
    ended: bool = False
    #: This process's CPU from the slice's start: the slice's validity is judged with it.
    probe: Probe = field(default_factory=Probe)
    connections: int | None = None


def _judged(s: _Slice, summary: str) -> str:
    """The slice's summary with its validity: judged here, where its generator ran (the
    coordinator sees only the merged figures)."""
    try:
        figures = Summary.model_validate_json(summary)
    except ValidationError:
        return summary
    v = judge(figures, None, s.probe.end(), s.connections)
    data = json.loads(summary)
    data["validity"] = v.model_dump(mode="json")
    return json.dumps(data)


class Agent:
    def __init__(
        self,
        url: str,
        name: str | None = None,
        *,
        secure: P.Secure | None = None,
        allow_targets: list[str] | None = None,
        allow_code: bool = False,
        health_port: int | None = None,
    ) -> None:
        self.url = url
        self.name = name or f"{socket.gethostname().split('.')[0]}-{os.getpid()}"
        if not P.valid_name(self.name):
            raise LoadPilotError(f"agent name {self.name!r}: use letters, digits, '-' and '_' only")
        self.secure = secure or P.Secure()
        self.secure.check()
        self.allow_targets = list(allow_targets or [])
        self.allow_code = allow_code
        self.health_port = health_port
        self.state = AgentMode.IDLE
        self._slices: list[_Slice] = []
        self._claimed_by: str | None = None
        self._last_beat = 0.0
        self._connected = False
        self._disconnected_at: float | None = None
        self._requests = 0
        self._work_root = Path(tempfile.mkdtemp(prefix=f"loadpilot-agent-{self.name}-"))
        self._quit: asyncio.Event | None = None  # made in the agent's event loop
        self._subscribed: dict[str, list[Any]] = {}
        self._runs: dict[str, dict[str, Any]] = {}

    # -- entry point -------------------------------------------------------------------------

    def run_forever(self) -> None:
        try:
            asyncio.run(self._main())
        finally:
            shutil.rmtree(self._work_root, ignore_errors=True)

    async def _main(self) -> None:
        self._quit = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._quit.set)

        async def on_disconnect() -> None:
            self._connected = False
            self._disconnected_at = time.monotonic()
            if self._slices:
                print(f"agent {self.name}: NATS is away; holding reports", flush=True)

        async def on_reconnect() -> None:
            self._connected = True
            self._disconnected_at = None
            held = sum(len(s.pending) for s in self._slices)
            if held:
                print(
                    f"agent {self.name}: NATS is back; publishing {held} held reports", flush=True
                )
            # Silence while we were away says nothing about the coordinator.
            self._last_beat = time.monotonic()

        # NATS may come up after its agents (a cluster starting): try until it answers or
        # the agent is told to stop.
        told = False
        while True:
            try:
                self.nc = await P.connect(
                    self.url,
                    name=self.name,
                    secure=self.secure,
                    timeout_s=5.0,
                    disconnected=on_disconnect,
                    reconnected=on_reconnect,
                )
                break
            except ConnectionError as e:
                if not told:
                    print(f"agent {self.name}: {e}; trying again", flush=True)
                    told = True
                try:  # not in a tight loop: a refused certificate fails at once
                    await asyncio.wait_for(self._quit.wait(), 1.0)
                except TimeoutError:
                    pass
                if self._quit.is_set():
                    return
        self._connected = True
        self.js = self.nc.jetstream()
        await self.nc.subscribe(P.DISCOVER, cb=self._on_discover)
        await self.nc.subscribe(P.agent_subject(self.name, "clock"), cb=self._on_clock)
        await self.nc.subscribe(P.agent_subject(self.name, "work"), cb=self._on_work)
        health = await self._serve_health() if self.health_port is not None else None
        print(f"agent {self.name}: waiting for work on {P.agent_subject(self.name, 'work')}",
              flush=True)  # fmt: skip
        try:
            while not self._quit.is_set():
                await self._tick()
                try:
                    await asyncio.wait_for(self._quit.wait(), P.PROGRESS_S)
                except TimeoutError:
                    pass
        finally:
            for s in self._slices:
                s.handle.stop("stopped")
            if health is not None:
                health.close()
            await self.nc.drain()

    # -- requests from coordinators ----------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": _engine.__version__,
            "allow_targets": self.allow_targets or ["loopback"],
            "allow_code": self.allow_code,
        }

    async def _on_discover(self, msg: Msg) -> None:
        if msg.reply:
            await msg.respond(json.dumps(self._info()).encode())

    async def _on_clock(self, msg: Msg) -> None:
        if msg.reply:
            await msg.respond(json.dumps({"time": time.time()}).encode())

    async def _on_work(self, msg: Msg) -> None:
        try:
            work = json.loads(msg.data)
            reply = await self._accept(work)
        except Exception as e:  # refuse anything malformed with a reason, never crash
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        if not reply["ok"]:
            print(f"agent {self.name}: refused: {reply['error']}", flush=True)
            await self._event(work.get("run") if isinstance(work, dict) else None, "refused",
                              reply["error"])  # fmt: skip
        if msg.reply:
            await msg.respond(json.dumps(reply).encode())

    async def _shared(self, run: str) -> dict[str, Any]:
        """The run's plan and files, fetched once per run from the object store."""
        if run not in self._runs:
            obs = await self.js.object_store(P.WORK_BUCKET)
            got = await obs.get(run)
            self._runs[run] = json.loads(got.data or b"{}")
        return self._runs[run]

    async def _accept(self, work: dict[str, Any]) -> dict[str, Any]:
        run = str(work["run"])
        reporter = str(work["reporter"])
        if not P.valid_name(run) or not all(P.valid_name(p) for p in reporter.split("+")):
            return {"ok": False, "error": f"malformed run {run!r} or slice {reporter!r}"}
        if self.state != AgentMode.IDLE and self._claimed_by != run:
            return {"ok": False, "error": f"busy with run {self._claimed_by}"}
        shared = await self._shared(run)
        plan = Plan.from_json(shared["plan"])
        # Redirects lead only where this agent may send load.
        update: dict[str, Any] = {
            "shard": Shard.model_validate(work["shard"]),
            "allow_hosts": list(self.allow_targets),
        }
        if work.get("connections") is not None and isinstance(plan.load, OpenLoad):
            update["load"] = plan.load.model_copy(update={"connections": int(work["connections"])})
        plan = Plan.model_validate(plan.model_copy(update=update).model_dump(by_alias=True))
        if not target_allowed(plan.target, self.allow_targets):
            allowed = ", ".join(self.allow_targets or ["loopback"])
            return {
                "ok": False,
                "error": f"target {plan.target} is not allowed on this agent (allowed: "
                f"{allowed}; start it with --allow-target)",
            }
        if plan.file_paths() and not self.allow_code:
            return {
                "ok": False,
                "error": "the plan uploads files from this agent's disk ("
                f"{', '.join(plan.file_paths())}); start it with --allow-code to allow that",
            }
        scenario = None
        files = shared.get("files")
        if files:
            if not self.allow_code:
                return {
                    "ok": False,
                    "error": "the scenario has Python code and this agent runs plans only "
                    "(start it with --allow-code to run scenario code)",
                }
            scenario = self._load_scenario(
                run,
                reporter,
                files,
                shared["entry"],
                shared["scenario"],
                shared.get("locust"),
                plan,
            )
        dir = self._work_root / run / reporter.replace("/", "_")
        handle = _engine.start_run(plan.to_json(), dir, report=True)
        tickets = handle.tickets()
        if tickets is not None:
            if scenario is None:
                handle.stop("stopped")
                return {"ok": False, "error": "the plan has Python parts and no scenario came"}
            from loadpilot.running.vusers import PythonUsers

            PythonUsers(handle, tickets, scenario).start()
        self._slices.append(
            _Slice(
                run=run,
                reporter=reporter,
                handle=handle,
                dir=dir,
                connections=getattr(plan.load, "connections", None),
            )
        )
        self._claimed_by = run
        self.state = AgentMode.RUNNING
        self._last_beat = time.monotonic()
        return {"ok": True}

    def _load_scenario(
        self,
        run: str,
        reporter: str,
        files: dict[str, str],
        entry: str,
        name: str,
        locust: dict[str, Any] | None,
        plan: Plan,
    ) -> Any:
        from loadpilot.scenarios.loader import load_scenario

        root = self._work_root / run / "code" / reporter.replace("/", "_")
        for rel, data in files.items():
            p = PurePosixPath(rel)
            if p.is_absolute() or ".." in p.parts:
                raise LoadPilotError(f"scenario file {rel!r}: only paths inside the scenario's "
                                     "directory travel to agents")  # fmt: skip
            out = root.joinpath(*p.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(data))
        if locust is not None:
            # A locustfile: read as the coordinator read it (its classes and tags).
            from loadpilot.locust.reading import read_again

            return read_again(root / entry, plan, locust)
        return load_scenario(root / entry, name)

    # -- the run's heartbeat -----------------------------------------------------------------

    async def _on_run_beat(self, msg: Msg) -> None:
        self._last_beat = time.monotonic()

    async def _on_ctl(self, msg: Msg) -> None:
        try:
            op = json.loads(msg.data)
        except ValueError:
            return
        if op.get("op") == "stop":
            reason = "aborted" if op.get("reason") == "aborted" else "stopped"
            # A stop naming slices is for those only: slices of this agent the coordinator
            # gave up on (it was cut off and taken over), whose load must end now.
            only = op.get("reporters")
            for s in self._slices:
                if only is not None and s.reporter not in only:
                    continue
                if s.stop_reason is None:
                    if only is not None:
                        print(f"agent {self.name}: slice {s.reporter} was taken over; "
                              "stopping it", flush=True)  # fmt: skip
                    s.stop_reason = reason
                    s.handle.stop(reason)

    async def _event(self, run: str | None, event: str, detail: str) -> None:
        if run is None or not self._connected:
            return
        body = {"kind": "event", "agent": self.name, "event": event, "detail": detail}
        try:
            await self.nc.publish(P.run_subject(run, "agents"), json.dumps(body).encode())
        except Exception:  # best effort: the coordinator also sees the refusal in the reply
            pass

    async def _tick(self) -> None:
        now = time.monotonic()
        runs = {s.run for s in self._slices}
        for run in runs - set(self._subscribed):
            self._subscribed[run] = [
                await self.nc.subscribe(P.run_subject(run, "beat"), cb=self._on_run_beat),
                await self.nc.subscribe(P.run_subject(run, "ctl"), cb=self._on_ctl),
            ]
        gone = self._connected and now - self._last_beat > P.COORDINATOR_LOST_S
        cut_off = (
            self._disconnected_at is not None
            and now - self._disconnected_at > P.DISCONNECTED_STOP_S
        )
        for s in self._slices:
            if (gone or cut_off) and s.stop_reason is None:
                why = "the coordinator went silent" if gone else "NATS is unreachable"
                print(f"agent {self.name}: stopping run {s.run}: {why}", flush=True)
                s.stop_reason = "stopped"
                s.handle.stop("stopped")
            done = s.handle.done
            for iv in s.handle.take_intervals():
                index = json.loads(iv)["index"]
                body = json.dumps({"kind": "interval", "reporter": s.reporter}).encode()
                s.pending.append((f"{s.run}.{s.reporter}.{index}", body + b"\n" + iv))
            if done and not s.ended:
                s.ended = True
                sent = s.handle.progress()
                if sent is not None:
                    print(f"agent {self.name}: slice {s.reporter} ended: sent {sum(sent[1])} "
                          f"arrivals, up to arrival {sent[0]}", flush=True)  # fmt: skip
                summary = _judged(s, s.handle.summary_json() or "{}")
                head = json.dumps({"kind": "end", "reporter": s.reporter}).encode()
                s.pending.append((f"{s.run}.{s.reporter}.end", head + b"\n" + summary.encode()))
            await self._flush(s)
        if self._connected and runs:
            for run in runs:
                mine = [s for s in self._slices if s.run == run]
                beat = {
                    "kind": "beat",
                    "agent": self.name,
                    "state": self.state.value,
                    "time": time.time(),
                    "reporters": [s.reporter for s in mine],
                    # How far each slice has got (read after its intervals were taken, so
                    # it covers everything they report): where a takeover would start.
                    "progress": {s.reporter: s.handle.progress() for s in mine},
                }
                try:
                    await self.nc.publish(P.run_subject(run, "agents"), json.dumps(beat).encode())
                except Exception:
                    pass
        finished = [s for s in self._slices if s.ended and not s.pending]
        for s in finished:
            self._slices.remove(s)
            shutil.rmtree(s.dir, ignore_errors=True)
        if not self._slices and self.state != AgentMode.IDLE:
            self.state = AgentMode.IDLE
            self._claimed_by = None
            for subs in self._subscribed.values():
                for sub in subs:
                    await sub.unsubscribe()
            self._subscribed.clear()
            self._runs.clear()
            shutil.rmtree(self._work_root, ignore_errors=True)
            self._work_root.mkdir(parents=True, exist_ok=True)
            print(f"agent {self.name}: run over, waiting for work", flush=True)

    async def _flush(self, s: _Slice) -> None:
        """Publishes what the slice has ready, in order, each until JetStream acknowledges it
        (its message id makes a retry after a lost acknowledgement harmless)."""
        while s.pending and self._connected:
            msg_id, payload = s.pending[0]
            try:
                await self.js.publish(
                    P.data_subject(s.run, self.name),
                    payload,
                    timeout=2.0,
                    headers={"Nats-Msg-Id": msg_id},
                )
            except Exception:
                return  # NATS is away: try again on the next tick
            s.pending.popleft()

    # -- health ------------------------------------------------------------------------------

    async def _serve_health(self) -> asyncio.Server:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
                ok = self._connected
                body = json.dumps({**self._info(), "nats": "connected" if ok else "away"})
                status = "200 OK" if ok else "503 Service Unavailable"
                writer.write(
                    f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}".encode()
                )
                await writer.drain()
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                pass
            finally:
                writer.close()

        assert self.health_port is not None
        return await asyncio.start_server(answer, "0.0.0.0", self.health_port)
