"""Python-logic virtual users: scenario tasks that run Python between requests.

The virtual users are instances of the scenario's :class:`~loadpilot.VUser` class, run as asyncio
tasks on one event loop in a thread of their own. ``async def`` tasks run on the loop; plain
``def`` tasks (and hooks) run in a thread per virtual user, so a blocking call holds up only its
own user. Every request goes through the engine's client (``self.client``), which keeps the time:
an open model's iteration is measured from the instant it was due, and arrivals are released by
the engine's scheduler, so the figures mean the same as for engine tasks.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json as _json
import random
import sys
import threading
import traceback
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from loadpilot import _engine
from loadpilot.errors import LoadPilotError
from loadpilot.plan import Expect
from loadpilot.profiles import Duration, parse_duration

if TYPE_CHECKING:
    from loadpilot.scenario import Scenario, VUser

_Result = tuple[int, list[tuple[str, str]], bytes] | str
_Args = tuple[
    int | None,
    str,
    str,
    list[tuple[str, str]],
    bytes | None,
    float | None,
    float | None,
    str | None,
]


class RequestError(LoadPilotError):
    """A request got no response (``kind``: connect, dns, tls, timeout, reset, protocol,
    fd_limit). The engine has counted it already; an uncaught one simply ends the iteration.
    ``cancelled``: the run ended while it was in flight (its iteration counts as cancelled)."""

    def __init__(self, kind: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {kind}")
        self.kind = kind


class Response:
    """A response, with httpx's names."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status_code = status
        self.headers = dict(headers)
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.content)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


class Client:
    """``self.client`` of a Python virtual user. In an ``async def`` task its methods return
    awaitables; in a plain ``def`` task (or hook) they block that user's thread until the
    response is in. ``expect=lp.expect(...)`` is checked by the engine, as for engine tasks;
    without it a 4xx or 5xx counts as a ``status`` error. Either way the response is returned."""

    def __init__(self, session: _engine.Session, inbox: _Inbox) -> None:
        self._session = session
        self._inbox = inbox
        # The task the current requests count for; None in hooks, whose requests are set-up.
        self._task: int | None = None
        self._due: float | None = None

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: bytes | str | None = None,
        timeout: Duration | None = None,
        expect: Expect | None = None,
    ) -> Any:
        """Sends a request through the engine. ``timeout`` defaults to the scenario's
        (``@lp.scenario(timeout=...)``, else 30 s), as for engine tasks."""
        if params:
            path = f"{path}{'&' if '?' in path else '?'}{urllib.parse.urlencode(params)}"
        hs = list((headers or {}).items())
        body: bytes | None = None
        raw = content if content is not None else data
        if json is not None:
            body = _json.dumps(json).encode()
            hs.append(("content-type", "application/json"))
        elif raw is not None:
            body = raw.encode() if isinstance(raw, str) else raw
        # The first request of an iteration is measured from the iteration's due instant.
        due, self._due = self._due, None
        args: _Args = (
            self._task,
            method,
            path,
            hs,
            body,
            None if timeout is None else parse_duration(timeout, what="timeout"),
            due,
            None if expect is None else expect.model_dump_json(exclude_none=True),
        )
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return _finish(self._session.request_blocking(*args), method, path)
        return self._send(args, method, path)

    async def _send(self, args: _Args, method: str, path: str) -> Response:
        rid, fut = self._inbox.expect()
        self._session.request(*args, self._inbox.mailbox, rid)
        return _finish(await fut, method, path)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Any:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def head(self, path: str, **kw: Any) -> Any:
        return self.request("HEAD", path, **kw)


class _FeedExhausted(Exception):
    """A ``unique`` feeder has no row left."""


class _Inbox:
    """Futures of requests in flight, resolved in batches when the engine's mailbox rings.
    Engine threads never take the GIL for this; the loop collects results when it wakes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.mailbox = _engine.Mailbox()
        self._loop = loop
        self._pending: dict[int, asyncio.Future[_Result]] = {}
        self._ids = itertools.count()
        loop.add_reader(self.mailbox.fileno(), self._collect)

    def expect(self) -> tuple[int, asyncio.Future[_Result]]:
        rid = next(self._ids)
        fut: asyncio.Future[_Result] = self._loop.create_future()
        self._pending[rid] = fut
        return rid, fut

    def _collect(self) -> None:
        pending = self._pending
        for rid, result in self.mailbox.take():
            fut = pending.pop(rid, None)
            if fut is not None and not fut.done():  # a cancelled iteration's answer is dropped
                fut.set_result(result)

    def close(self) -> None:
        self._loop.remove_reader(self.mailbox.fileno())


def _finish(result: _Result, method: str, path: str) -> Response:
    if isinstance(result, str):
        raise RequestError(result, method, path)
    return Response(*result)


class PythonUsers:
    """Runs a scenario's virtual users for one engine run, in a thread of their own."""

    #: At most this many ``on_start`` hooks run at once.
    START_CONCURRENCY = 64

    def __init__(self, handle: _engine.Run, scenario: Scenario) -> None:
        self._handle = handle
        self._scenario = scenario
        cls = scenario.user
        self._fns: list[Callable[[Any], Any]] = [getattr(cls, t.name) for t in scenario.tasks]
        self._is_async = [inspect.iscoroutinefunction(f) for f in self._fns]
        self._errors_shown = 0
        self._iterations = itertools.count()
        self._rows = len(scenario.feeder.rows) if scenario.feeder is not None else 0
        if scenario.feeder is not None and scenario.feeder.mode != "unique":
            self._rows = 1 << 62  # cycle and random feeders never run out
        self._thread = threading.Thread(target=self._main, name="loadpilot-vusers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:  # noqa: BLE001 - never leave the run waiting
            print(f"loadpilot: virtual users stopped: {e!r}", file=sys.stderr)
        finally:
            self._handle.finish_python()

    def _report(self, what: str) -> None:
        # Show the first few tracebacks; the rest are counted as `exception` errors.
        if self._errors_shown < 3:
            self._errors_shown += 1
            print(f"loadpilot: {what}:\n{traceback.format_exc()}", file=sys.stderr)

    async def _call(self, fn: Callable[[Any], Any], user: VUser, is_async: bool) -> None:
        if is_async:
            await fn(user)
        else:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._pool, fn, user)

    async def _hook(self, user: VUser, name: str) -> bool:
        fn = getattr(type(user), name, None)
        if fn is None:
            return True
        client = user.client
        assert isinstance(client, Client)
        client._task, client._due = None, None
        try:
            await self._call(fn, user, inspect.iscoroutinefunction(fn))
            return True
        except Exception:
            # Not an iteration of any task: the user retires, and the arrivals it would have
            # taken go to other users (or, with none left, are counted as unsent).
            self._report(f"{type(user).__name__}.{name} raised")
            return False

    def _row(self, k: int) -> dict[str, str] | None:
        """The feeder row of iteration ``k`` (the engine's rule for each mode)."""
        f = self._scenario.feeder
        if f is None:
            return None
        n = len(f.rows)
        if f.mode == "cycle":
            i = k % n
        elif f.mode == "random":
            i = random.Random(f.seed * 1_000_003 + k).randrange(n)
        elif k < n:
            i = k
        else:
            raise _FeedExhausted
        return dict(zip(f.columns, f.rows[i], strict=True))

    async def _iteration(
        self, user: VUser, task: int, due: float | None, k: int | None = None
    ) -> bool:
        """Runs one iteration if the engine says it may (not past the planned end, not
        stopping); the engine counts it as started, and here as ended once it ran to its end.
        An iteration cancelled by the end of the run never ends: the engine counts it as
        cancelled. Returns False when the user must stop (a unique feeder ran out, the run
        is over)."""
        h = self._handle
        client = user.client
        assert isinstance(client, Client)
        row: dict[str, str] | None = None
        if k is not None and self._scenario.feeder is not None:
            try:
                row = self._row(k)
            except _FeedExhausted:
                h.exhaust()  # a unique feeder ran out: the run ends, as in the engine
                return False
        if not h.begin_iteration(task, due):
            return False
        if row is not None:
            user.row = row
        client._task, client._due = task, due
        try:
            await self._call(self._fns[task], user, self._is_async[task])
        except RequestError as e:
            if e.kind == "cancelled":
                return False  # the run ended under it: the engine counts it as cancelled
            # otherwise counted by the engine; the iteration ends here
        except Exception:
            h.record_exception(task)
            self._report(f"task {self._scenario.tasks[task].name!r} raised")
        h.end_iteration(task)
        return True

    def _make_user(self, vu: int, inbox: _Inbox) -> VUser:
        user = self._scenario.user()
        user.client = Client(self._handle.session(vu), inbox)
        # on_start sees the row of the user's number; each iteration then gets its own.
        user.row = self._row(vu) if self._scenario.feeder is not None and vu < self._rows else None
        return user

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        h = self._handle
        n = h.max_users()
        self._pool = ThreadPoolExecutor(max_workers=max(1, n), thread_name_prefix="loadpilot-vu")
        inbox = _Inbox(loop)
        users = [self._make_user(i, inbox) for i in range(n)]
        closed = self._is_closed()
        bodies: list[Awaitable[None]]
        if closed:
            bodies = [self._closed_user(u, i) for i, u in enumerate(users)]
        else:
            queue: asyncio.Queue[tuple[int, float, int] | None] = asyncio.Queue()
            gate = asyncio.Semaphore(self.START_CONCURRENCY)
            threading.Thread(target=self._pump, args=(loop, queue, n), daemon=True).start()
            bodies = [self._open_user(u, queue, gate) for u in users]
        tasks = [asyncio.ensure_future(b) for b in bodies]
        watcher = asyncio.ensure_future(self._watch_stop(tasks))
        await asyncio.gather(*tasks, return_exceptions=True)
        watcher.cancel()
        inbox.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _is_closed(self) -> bool:
        return self._scenario.profile.model == "closed"

    async def _watch_stop(self, tasks: Sequence[asyncio.Future[None]]) -> None:
        # A stopped run ends within moments: iterations in progress are cancelled.
        while not self._handle.is_stopping():
            await asyncio.sleep(0.05)
        for t in tasks:
            t.cancel()

    def _pump(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[tuple[int, float, int] | None],
        n: int,
    ) -> None:
        """Moves released arrivals to the loop in batches: one wake-up per batch."""
        while (batch := self._handle.take_arrivals(0.25)) is not None:
            if batch:
                try:
                    loop.call_soon_threadsafe(_put_all, queue, batch)
                except RuntimeError:
                    return  # every user is gone (their on_start failed): the rest is unsent
        try:
            loop.call_soon_threadsafe(_put_all, queue, [None] * n)
        except RuntimeError:
            pass

    async def _open_user(
        self,
        user: VUser,
        queue: asyncio.Queue[tuple[int, float, int] | None],
        gate: asyncio.Semaphore,
    ) -> None:
        async with gate:
            started = await self._hook(user, "on_start")
        if not started:
            return  # a user whose on_start failed takes no arrivals
        while (item := await queue.get()) is not None:
            k, due, task = item
            # An arrival it may not run (the run is past its end) is unsent: take the next.
            await self._iteration(user, task, due, k)
        await self._hook(user, "on_stop")

    async def _closed_user(self, user: VUser, i: int) -> None:
        h = self._handle
        think, duration = h.think_s(), h.duration_s()
        started = active = False
        try:
            while (t := h.elapsed_s()) < duration and not h.is_stopping():
                if h.users_at(t) <= i:
                    if active:
                        active = False
                        h.user_active(False)
                    await asyncio.sleep(0.05)
                    continue
                if not started:
                    started = True
                    if not await self._hook(user, "on_start"):
                        return
                if not active:
                    active = True
                    h.user_active(True)
                if not await self._iteration(user, h.next_task(), None, next(self._iterations)):
                    break
                if think:
                    # Thinking past the planned end would hold the run open for nothing.
                    await asyncio.sleep(min(think, max(0.0, duration - h.elapsed_s())))
        finally:
            if active:
                h.user_active(False)
        if started:
            await self._hook(user, "on_stop")


def _put_all(queue: asyncio.Queue[Any], items: list[Any]) -> None:
    for item in items:
        queue.put_nowait(item)
