"""The Python parts of a run: task bodies with Python logic, and per-user hooks.

The engine runs every iteration. When one is a Python body (or a user's ``on_start`` or
``on_stop`` is due), the engine posts a ticket; here each ticket runs on an instance of the
scenario's :class:`~loadpilot.VUser` class (one per virtual user), on one event loop in a thread
of its own. ``async def`` bodies run on the loop as tasks; plain ``def`` bodies (and hooks) run
on the same thread, as a greenlet per user: a request or a ``time.sleep`` gives the thread
back until its answer or its time is in, so each pauses its own user only, as under Locust. A
body found waiting in a blocking call of another kind (the thread idle for ``_BLOCKED_S`` in
one of its turns) runs, from then on, in a thread per virtual user instead. Every request goes
through the engine's client (``self.client``), which keeps the time: an open model's iteration
is measured from the instant it was due, so the figures mean the same as for engine tasks.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import inspect
import itertools
import json as _json
import queue
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, SupportsIndex

import greenlet

from loadpilot import _engine
from loadpilot.errors import RequestError
from loadpilot.plan import Expect
from loadpilot.profiles import Duration, parse_duration
from loadpilot.scenarios.scenario import caller, file_parts

if TYPE_CHECKING:
    from loadpilot.scenarios.scenario import Scenario, VUser

_Result = tuple[int, list[tuple[str, str]], bytes, str | None, int, float] | str

#: How long a plain ``def`` body may keep the loop's thread waiting (in one of its turns, with
#: the thread using under a fifth of a core meanwhile) before its later runs go to a thread per
#: user: a blocking call other than a request or ``time.sleep`` (a socket of its own, a lock, a
#: ``sleep`` bound before the run) would hold up every user. A turn that computes (a garbage
#: collection, parsing) keeps the thread busy and is not taken for one.
_BLOCKED_S = 0.1


class _Green(greenlet.greenlet):
    """A virtual user's plain ``def`` bodies (and hooks), run on the loop's thread one ticket
    after another: it switches back to the loop while a request is in flight, while it sleeps
    and between tickets."""

    users: PythonUsers
    #: The task and hook of the ticket it is in.
    key: tuple[int | None, str | None] = (None, None)
    #: Between tickets (waiting for the next one).
    idle: bool = False
    #: Its ticket is being cancelled: a request or a sleep raises at once.
    cancelling: bool = False


_real_sleep = time.sleep
_sleep_lock = threading.Lock()
_sleep_runs = 0


def _sleep(seconds: float | SupportsIndex) -> None:
    """``time.sleep`` while Python users run: in a plain body on their loop's thread it
    pauses that user only; anywhere else it is the real one."""
    me = greenlet.getcurrent()
    if type(me) is not _Green:
        _real_sleep(seconds)
        return
    s = float(seconds)
    if s < 0:
        raise ValueError("sleep length must be non-negative")
    me.users._sleep(me, s)


def _cooperative_sleep(on: bool) -> None:
    """Puts :func:`_sleep` in ``time.sleep``'s place while any run's Python users run."""
    global _sleep_runs
    with _sleep_lock:
        _sleep_runs += 1 if on else -1
        time.sleep = _sleep if _sleep_runs > 0 else _real_sleep


class Headers(dict[str, str]):
    """Response headers, looked up whatever the case of the name (``r.headers["Content-Type"]``)."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


class Response:
    """A response, with httpx's names. ``redirects``: how many redirects were followed to
    get it; ``url``: where they led (None when none was followed); ``elapsed``: from the
    instant the request was sent to its (last) answer, as the engine measured it."""

    __slots__ = ("_elapsed_s", "_headers", "_raw", "content", "redirects", "status_code", "url")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        url: str | None = None,
        redirects: int = 0,
        elapsed_s: float = 0.0,
    ) -> None:
        self.status_code = status
        self._raw = headers
        self._headers: Headers | None = None
        self.content = body
        self.url = url
        self.redirects = redirects
        self._elapsed_s = elapsed_s

    @property
    def elapsed(self) -> datetime.timedelta:
        """The request's service time (requests' and httpx's name)."""
        return datetime.timedelta(seconds=self._elapsed_s)

    @property
    def headers(self) -> Headers:
        """The headers, read into a mapping the first time they are asked for."""
        if self._headers is None:
            self._headers = Headers((k.lower(), v) for k, v in self._raw)
        return self._headers

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.content)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def ok(self) -> bool:
        """requests' name: the status is below 400."""
        return self.status_code < 400

    def raise_for_status(self) -> None:
        """Raises :class:`~loadpilot.errors.RequestError` (kind ``status``) for a 4xx or 5xx."""
        if self.status_code >= 400:
            raise RequestError("status", "HTTP", str(self.status_code))

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


class CaughtResponse(Response):
    """A response whose success the code in its ``with`` block decides (``catch_response=True``,
    Locust's idiom): ``failure(message)`` counts the request as failed (an error of kind
    ``check``, with the message kept for the summary's failures), ``success()`` as a success
    whatever its status; an exception in the block fails it too (and goes on up). Left
    undecided, a 4xx or 5xx counts as a ``status`` error, as without ``catch_response``."""

    __slots__ = ("_settle", "_verdict", "js")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        url: str | None,
        redirects: int,
        elapsed_s: float,
        settle: Callable[[str, str], None],
    ) -> None:
        super().__init__(status, headers, body, url, redirects, elapsed_s)
        self._settle = settle
        self._verdict: tuple[str, str] | None = None
        #: The parsed body, in Locust's ``rest()``.
        self.js: Any = None

    def success(self) -> None:
        """This request succeeded, whatever its status."""
        self._verdict = ("ok", "")

    def failure(self, message: object) -> None:
        """This request failed: counted as a ``check`` error with ``message`` (an exception or
        any text)."""
        if isinstance(message, BaseException):
            message = f"{type(message).__name__}: {message}"
        self._verdict = ("check", str(message))

    def __enter__(self) -> CaughtResponse:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: Any
    ) -> None:
        verdict = self._verdict
        if err is not None and not isinstance(err, RequestError):
            verdict = ("check", f"{type(err).__name__}: {err}")
        if verdict is None and self.status_code >= 400:
            verdict = ("status", f"HTTP {self.status_code}")
        if verdict is not None and verdict[0] != "ok":
            self._settle(*verdict)

    async def __aenter__(self) -> CaughtResponse:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: Any
    ) -> None:
        self.__exit__(kind, err, tb)


class _Catching:
    """What an ``async`` task's ``self.client.get(..., catch_response=True)`` gives: ``async
    with`` it (or await it) for the :class:`CaughtResponse`."""

    def __init__(self, sent: Awaitable[CaughtResponse]) -> None:
        self._sent = sent
        self._response: CaughtResponse | None = None

    def __await__(self) -> Generator[Any, None, CaughtResponse]:
        return self._sent.__await__()

    async def __aenter__(self) -> CaughtResponse:
        self._response = await self._sent
        return self._response

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: Any
    ) -> None:
        assert self._response is not None
        self._response.__exit__(kind, err, tb)


#: The check of a request whose success Python decides: every status is an answer.
_ANY_STATUS = Expect(status_range=(100, 999))


class Client:
    """``self.client`` of a Python virtual user. In an ``async def`` task its methods return
    awaitables; in a plain ``def`` task (or hook) they return the response once it is in, that
    user paused meanwhile (the others run on). ``expect=lp.expect(...)`` is checked by the
    engine, as for engine tasks; without it a 4xx or 5xx counts as a ``status`` error. Either
    way the response is returned."""

    def __init__(self, session: _engine.Session, inbox: _Inbox) -> None:
        self._session = session
        self._inbox = inbox
        # The entry the current requests count for (a task, or on_start's); None in on_stop.
        self._task: int | None = None
        self._due: float | None = None

    def request(
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: bytes | str | Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        auth: tuple[str, str] | None = None,
        files: Any = None,
        cookies: Mapping[str, str] | None = None,
        timeout: Duration | None = None,
        expect: Expect | None = None,
        catch_response: bool = False,
        follow_redirects: bool | None = None,
        max_redirects: int | None = None,
    ) -> Any:
        """Sends a request through the engine. Without ``timeout`` the plan's applies
        (``@lp.scenario(timeout=...)``), as for engine tasks: the engine fills it in.
        ``name``: what its measurements are kept under (default: the method and the path
        without its query, as given here: ``GET /items/7``; name requests whose path varies).
        ``catch_response=True``: the code in a ``with`` block over the response decides
        whether it failed (:class:`CaughtResponse`). Redirects are followed as the scenario
        says (``@lp.scenario(follow_redirects=..., max_redirects=...)``, by default up to 10)
        unless ``follow_redirects``/``max_redirects`` say otherwise; the hops are part of
        this one request. ``cookies``: sent with the user's own (which the server set).
        ``files``: a multipart form (as httpx takes it; ``data`` its text fields), a file
        given as a ``Path`` or an open file read from disk as the request is sent."""
        if not isinstance(method, str) or not method.strip():
            raise ValueError(f"invalid HTTP method {method!r}")
        if catch_response and expect is not None:
            raise ValueError("expect= and catch_response=True both judge the response: give one")
        if params:
            path = f"{path}{'&' if '?' in path else '?'}{urllib.parse.urlencode(params)}"
        hs = list((headers or {}).items())
        body: bytes | None = None
        form: list[tuple[str, str]] | None = None
        if data is not None and not isinstance(data, str | bytes):
            # A form: urlencoded by the engine (or a multipart form's fields, with files).
            pairs = data.items() if isinstance(data, Mapping) else data
            form = [(str(k), str(v)) for k, v in pairs]
            data = None
        uploads = [] if files is None else file_parts(files, caller)
        if auth is not None:
            user, password = auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            hs.append(("authorization", f"Basic {token}"))
        if cookies:
            hs.append(("cookie", "; ".join(f"{k}={v}" for k, v in cookies.items())))
        raw = content if content is not None else data
        if json is not None:
            body = _json.dumps(json).encode()
            if not any(k.lower() == "content-type" for k, _ in hs):  # a type given wins
                hs.append(("content-type", "application/json"))
        elif raw is not None:
            body = raw.encode() if isinstance(raw, str) else raw
        # The first request of an iteration is measured from the iteration's due instant.
        due, self._due = self._due, None
        call = self._session.prepare(
            self._task,
            name,
            method,
            path,
            hs,
            body,
            form,
            uploads,
            None if timeout is None else parse_duration(timeout, what="timeout"),
            due,
            _check(_ANY_STATUS) if catch_response else None if expect is None else _check(expect),
            follow_redirects,
            max_redirects,
        )
        settle = None
        if catch_response:
            task, session = self._task, self._session

            def settle(kind: str, message: str) -> None:
                session.settle(task, name, method, path, kind, message)

        me = greenlet.getcurrent()
        if type(me) is _Green:
            # A plain body on the loop's thread: sent now; the loop goes on with other users
            # and switches back here with the outcome.
            if me.cancelling:
                raise RequestError("cancelled", method, path)
            rid = self._inbox.expect_here(me, method, path)
            try:
                self._session.request(call, self._inbox.mailbox, rid)
                result = me.users._hub.switch()
            except BaseException:  # cancelled while waiting: its answer, if it comes, is dropped
                self._inbox.forget(rid)
                raise
            return _finish(result, method, path, settle)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return _finish(self._session.request_blocking(call), method, path, settle)
        # Sent now; the future the loop resolves (no coroutine of its own per request).
        rid, fut = self._inbox.expect(method, path, settle)
        try:
            self._session.request(call, self._inbox.mailbox, rid)
        except BaseException:
            self._inbox.forget(rid)
            raise
        return _Catching(fut) if catch_response else fut

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

    def options(self, path: str, **kw: Any) -> Any:
        return self.request("OPTIONS", path, **kw)


_CHECKS: dict[Any, _engine.Check] = {}


def _check(expect: Expect) -> _engine.Check:
    """``expect`` compiled by the engine, once per distinct expectation (an ``lp.expect(...)``
    written in a task body is built anew on every call; its compiled check is not)."""
    try:
        key: Any = expect
        found = _CHECKS.get(key)
    except TypeError:  # unhashable (json_equals holds a dict or list): keyed by its JSON
        key = expect.model_dump_json(exclude_none=True)
        found = _CHECKS.get(key)
    if found is None:
        if len(_CHECKS) > 10_000:
            _CHECKS.clear()
        found = _CHECKS[key] = _engine.Check(expect.model_dump_json(exclude_none=True))
    return found


class _Inbox:
    """Futures of requests in flight, resolved in batches when the engine's mailbox rings.
    Engine threads never take the GIL for this; the loop collects results when it wakes."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, resume: Callable[[_Green, Any], None]
    ) -> None:
        self.mailbox = _engine.Mailbox()
        self._loop = loop
        self._resume = resume
        self._pending: dict[
            int, tuple[asyncio.Future[Any] | _Green, str, str, Callable[[str, str], None] | None]
        ] = {}
        self._ids = itertools.count()
        loop.add_reader(self.mailbox.fileno(), self._collect)

    def expect(
        self, method: str, path: str, settle: Callable[[str, str], None] | None
    ) -> tuple[int, asyncio.Future[Any]]:
        """A request's id and the future of its response (or of its RequestError)."""
        rid = next(self._ids)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[rid] = (fut, method, path, settle)
        return rid, fut

    def expect_here(self, waiter: _Green, method: str, path: str) -> int:
        """A request's id, its outcome to be switched into ``waiter`` as it comes."""
        rid = next(self._ids)
        self._pending[rid] = (waiter, method, path, None)
        return rid

    def forget(self, rid: int) -> None:
        self._pending.pop(rid, None)

    def _collect(self) -> None:
        pending = self._pending
        for rid, result in self.mailbox.take():
            waiting = pending.pop(rid, None)
            if waiting is None:
                continue
            fut, method, path, settle = waiting
            if isinstance(fut, _Green):
                self._resume(fut, result)
                continue
            if fut.done():  # a cancelled iteration's answer is dropped
                continue
            if isinstance(result, str):
                fut.set_exception(RequestError(result, method, path))
            elif settle is not None:
                fut.set_result(CaughtResponse(*result, settle=settle))
            else:
                fut.set_result(Response(*result))

    def close(self) -> None:
        self._loop.remove_reader(self.mailbox.fileno())


def _finish(
    result: _Result,
    method: str,
    path: str,
    settle: Callable[[str, str], None] | None = None,
) -> Response:
    if isinstance(result, str):
        raise RequestError(result, method, path)
    if settle is not None:
        return CaughtResponse(*result, settle=settle)
    return Response(*result)


class PythonUsers:
    """Runs the Python parts of one run (task bodies and hooks) when the engine asks, in a
    thread of their own: each ticket is one iteration or hook of one virtual user, run on that
    user's object and connection; the engine keeps time and counts."""

    def __init__(self, handle: _engine.Run, tickets: _engine.Tickets, scenario: Scenario) -> None:
        self._handle = handle
        self._tickets = tickets
        self._scenario = scenario
        cls = scenario.user
        self._fns: list[Callable[[Any], Any] | None] = [
            getattr(cls, t.name) if t.path == "python" else None for t in scenario.tasks
        ]
        self._is_async = [f is not None and inspect.iscoroutinefunction(f) for f in self._fns]
        self._hook_task = len(scenario.tasks)
        self._values = tuple(scenario.hooks.values)
        self._columns = scenario.feeder.columns if scenario.feeder is not None else []
        self._users: dict[int, VUser] = {}
        self._clients: dict[int, Client] = {}
        self._queues: dict[int, queue.SimpleQueue[Any]] = {}
        # Plain bodies and hooks that held the loop's thread too long: run in threads instead.
        self._threaded: set[tuple[int | None, str | None]] = set()
        # Each user's greenlet (made once: making one costs more than a ticket's switches).
        self._greens: dict[int, _Green] = {}
        self._closing = False
        # The greenlet turn going on (its task and hook; None between turns) and a count of turns.
        self._turn: tuple[int | None, str | None] | None = None
        self._turns = 0
        self._lock = threading.Lock()
        self._errors_shown = 0
        self._thread = threading.Thread(target=self._main, name="loadpilot-vusers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:  # noqa: BLE001 - never leave the run waiting
            print(f"loadpilot: virtual users stopped: {e!r}", file=sys.stderr)
            self._handle.python_failed(repr(e))

    def _report(self, what: str, error: BaseException) -> None:
        # Show the first few tracebacks; the rest are counted as `exception` errors.
        if self._errors_shown < 3:
            self._errors_shown += 1
            shown = "".join(traceback.format_exception(error))
            print(f"loadpilot: {what}:\n{shown}", file=sys.stderr)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._hub = greenlet.getcurrent()
        self._inbox = _Inbox(loop, self._step)
        over = loop.create_future()
        running: set[asyncio.Task[None]] = set()

        def collect() -> None:
            tickets, closed = self._tickets.take()
            for t in tickets:
                ticket, vu, task, hook, due_s, row = t
                if self._runs_async(vu, task, hook):
                    job = loop.create_task(self._serve(*t))
                    running.add(job)
                    job.add_done_callback(running.discard)
                elif (task, hook) in self._threaded:
                    self._queue(vu).put(t)
                else:
                    g = self._greens.get(vu)
                    if g is None:
                        g = self._greens[vu] = _Green(self._green_user)
                        g.users = self
                    else:  # maybe still in a ticket the engine gave up on (the drain ran out)
                        self._cancel(g)
                    g.key = (task, hook)
                    self._step(g, t)
            if closed and not over.done():
                over.set_result(None)

        loop.add_reader(self._tickets.fileno(), collect)
        _cooperative_sleep(True)
        cpu_clock = getattr(time, "pthread_getcpuclockid", None)
        if cpu_clock is not None:  # not on every platform: there, no body leaves the loop
            threading.Thread(
                target=self._watch,
                args=(cpu_clock(threading.get_ident()),),
                name="loadpilot-vusers-watch",
                daemon=True,
            ).start()
        try:
            await over
        finally:
            _cooperative_sleep(False)
            loop.remove_reader(self._tickets.fileno())
            self._closing = True
            for t in list(running):
                t.cancel()
            # Greenlets still in a ticket end it as cancelled; then every user's greenlet ends.
            for g in self._greens.values():
                self._cancel(g)
                g.switch(None)
            self._inbox.close()
            with self._lock:
                for q in self._queues.values():
                    q.put(None)  # the user's thread ends once its current body returns

    def _cancel(self, g: _Green) -> None:
        """Ends the ticket ``g`` is in, if any: ``RequestError("cancelled")`` raised where it
        waits (and at once by any request or sleep its handlers make), so they run; it is
        between tickets again when this returns."""
        if g.idle:
            return
        g.cancelling = True
        try:
            g.throw(RequestError("cancelled", "", ""))
        finally:
            g.cancelling = False

    def _step(self, g: _Green, value: Any) -> None:
        """Runs ``g`` on until it waits again (or ends): one turn."""
        self._turns += 1
        self._turn = g.key
        g.switch(value)
        self._turn = None

    def _watch(self, clock: int) -> None:
        """Watches the turns of plain bodies from a thread of its own: a turn that keeps the
        loop's thread waiting (idle, not computing) for ``_BLOCKED_S`` is a blocking call; its
        body's later runs go to threads, said once."""
        seen, since = -1, (0.0, 0.0)
        while not self._closing:
            _real_sleep(_BLOCKED_S / 2)
            turns, key = self._turns, self._turn
            if key is None or key in self._threaded:
                seen = -1
                continue
            now = (time.monotonic(), time.clock_gettime(clock))
            if turns != seen:
                seen, since = turns, now
                continue
            waited, worked = now[0] - since[0], now[1] - since[1]
            if waited >= _BLOCKED_S and worked < waited / 5:
                self._threaded.add(key)
                task, hook = key
                what = hook if task is None else f"task {self._scenario.tasks[task].name!r}"
                print(
                    f"loadpilot: {what} kept the Python users' thread waiting for "
                    f"{waited * 1000:.0f} ms (a blocking call other than a request or "
                    f"time.sleep?); from now on it runs in a thread per user, so that it "
                    f"holds up its own user only",
                    file=sys.stderr,
                )
                seen = -1

    def _sleep(self, g: _Green, seconds: float) -> None:
        """``time.sleep`` in a plain body on the loop's thread: the other users go on."""
        if g.cancelling:
            raise RequestError("cancelled", "", "")
        woken = self._loop.call_later(seconds, self._step, g, None)
        try:
            self._hub.switch()
        finally:
            woken.cancel()

    def _runs_async(self, vu: int, task: int | None, hook: str | None) -> bool:
        if hook is None:
            return task is not None and self._is_async[task]
        user = self._users.get(vu)
        fn = getattr(user if user is not None else self._scenario.user, hook, None)
        return inspect.iscoroutinefunction(fn)

    def _queue(self, vu: int) -> queue.SimpleQueue[Any]:
        """The ticket queue of a user whose plain ``def`` bodies run in a thread of its own
        (started with its first such ticket): a blocking call holds up that user only, and a
        ticket costs one queue hand-off instead of an asyncio task and an executor job."""
        q = self._queues.get(vu)
        if q is None:
            with self._lock:
                q = self._queues[vu] = queue.SimpleQueue()
            threading.Thread(
                target=self._user_thread, args=(q,), name=f"loadpilot-vu-{vu}", daemon=True
            ).start()
        return q

    def _user_thread(self, q: queue.SimpleQueue[Any]) -> None:
        while (t := q.get()) is not None:
            self._run_sync(t)

    def _green_user(self, t: Any) -> None:
        """A user's greenlet: runs its tickets, waiting on the loop's thread between them."""
        me = greenlet.getcurrent()
        assert isinstance(me, _Green)
        while t is not None:
            self._run_sync(t)
            me.idle = True
            t = self._hub.switch()
            me.idle = False

    def _run_sync(self, t: Any) -> None:
        """Runs one ticket of a plain ``def`` body or hook (in a greenlet or a user's thread)."""
        ticket, vu, task, hook, due_s, row = t
        user, fn, what = self._begin(ticket, vu, task, hook, due_s, row)
        try:
            fn(user)
        except Exception as e:  # noqa: BLE001 - counted, as for any body
            self._end(ticket, user, hook, what, e)
            return
        except BaseException as e:  # noqa: BLE001 - sys.exit() in a body: its user goes on
            self._end(ticket, user, hook, what, RuntimeError(f"{type(e).__name__}: {e}"))
            return
        self._end(ticket, user, hook, what, None)

    def _user(self, ticket: _engine.Ticket, vu: int) -> tuple[VUser, Client]:
        """The virtual user's object and its client (which a class may show its code through
        an API of its own, as a Locust user does)."""
        user = self._users.get(vu)
        if user is None:
            with self._lock:
                user = self._users.get(vu)
                if user is None:
                    user = self._scenario.user()
                    self._clients[vu] = Client(ticket.session, self._inbox)
                    user.client = self._clients[vu]
                    self._users[vu] = user
        return user, self._clients[vu]

    def _begin(
        self,
        ticket: _engine.Ticket,
        vu: int,
        task: int | None,
        hook: str | None,
        due_s: float | None,
        row: list[str] | None,
    ) -> tuple[VUser, Callable[[Any], Any], str]:
        """The user, the body to run for the ticket and what to call it in errors; the client
        set to count its requests where they belong."""
        user, client = self._user(ticket, vu)
        user.row = None if row is None else dict(zip(self._columns, row, strict=True))
        if hook is not None:
            # on_start's requests count under its own name; on_stop's are not measured.
            client._task, client._due = (self._hook_task if hook == "on_start" else None), None
            return user, getattr(type(user), hook), f"{type(user).__name__}.{hook}"
        assert task is not None
        fn = self._fns[task]
        assert fn is not None
        client._task, client._due = task, due_s
        return user, fn, f"task {self._scenario.tasks[task].name!r}"

    async def _serve(
        self,
        ticket: _engine.Ticket,
        vu: int,
        task: int | None,
        hook: str | None,
        due_s: float | None,
        row: list[str] | None,
    ) -> None:
        """Runs one ticket of an ``async def`` body on the loop."""
        user, fn, what = self._begin(ticket, vu, task, hook, due_s, row)
        try:
            await fn(user)
        except Exception as e:  # noqa: BLE001 - counted, as for any body
            self._end(ticket, user, hook, what, e)
            return
        self._end(ticket, user, hook, what, None)

    def _end(
        self,
        ticket: _engine.Ticket,
        user: VUser,
        hook: str | None,
        what: str,
        error: Exception | None,
    ) -> None:
        """Says how a ticket ended (one left unanswered counts as cancelled)."""
        if isinstance(error, RequestError):
            if error.kind == "cancelled":
                ticket.done("cancelled")  # the run ended under it
                return
            # otherwise counted by the engine; the iteration ends here
        elif error is not None:
            self._report(f"{what} raised", error)
            ticket.done("raised")
            return
        if hook == "on_start" and self._values:
            missing = [n for n in self._values if not hasattr(user, n)]
            if missing:
                print(
                    f"loadpilot: {what} did not set self.{missing[0]}, which the scenario's "
                    f"requests use as {{{{{missing[0]}}}}}",
                    file=sys.stderr,
                )
                ticket.done("raised")
                return
            ticket.done("ran", {n: str(getattr(user, n)) for n in self._values})
            return
        ticket.done("ran")
