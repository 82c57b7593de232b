"""Scenarios: virtual users written as Python classes.

```python
@lp.scenario(profile=lp.constant(rps=100, duration="30s"), thresholds={"p99": "< 25ms"})
class Shop(lp.VUser):
    feed = lp.feed("users.csv")
    @lp.task(weight=5)
    def browse(self):
        self.client.get("/items?user={{user}}", expect=lp.expect(status=200))
```

A task whose body is only requests with fixed arguments (placeholders such as ``{{user}}`` are
filled per iteration) runs entirely in the engine. Which tasks qualify is decided by reading the
task's code, never by guessing from one call, so nothing that would vary per iteration is frozen.
A task with Python logic runs its body in Python (see :mod:`loadpilot.running.vusers`) when the
engine asks, on the same virtual user and connection; the engine still keeps time and counts. Each
task takes its own path: the plan and the summary say which (``engine`` or ``python``), and
``Scenario.reason`` says why a task needs Python.

``on_start`` and ``on_stop`` run once per virtual user. Attributes ``on_start`` sets
(``self.token = ...``) are that user's values for engine requests (``{{token}}``), so a
scenario that logs in per user keeps its other tasks at engine speed.
"""

from __future__ import annotations

import ast
import inspect
import mimetypes
import os
import re
import sys
import textwrap
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from loadpilot import _engine
from loadpilot.errors import PlanError, ScenarioError
from loadpilot.plan import (
    DEFAULTS,
    Expect,
    Feeder,
    File,
    Hooks,
    HttpVersion,
    Plan,
    Request,
    Task,
    check_field,
    plan_request_names,
)
from loadpilot.profiles import Duration, Profile, parse_duration
from loadpilot.thresholds import Threshold, parse_all

_TASK = "__loadpilot_task_weight__"
_SCENARIO = "__loadpilot_scenario__"
_VERBS = ("get", "post", "put", "patch", "delete", "head", "options")


def _where(fn: Callable[..., Any]) -> str:
    code = inspect.unwrap(fn).__code__
    return f"{code.co_filename}:{code.co_firstlineno}"


def _class_where(cls: type) -> str:
    """file:line of a class, or its name where its source is not at hand (``python -c``)."""
    try:
        return f"{inspect.getsourcefile(cls)}:{inspect.getsourcelines(cls)[1]}"
    except (OSError, TypeError):
        return cls.__qualname__


F = TypeVar("F", bound=Callable[..., Any])


def task(fn: F | None = None, *, weight: int = 1) -> Any:
    """Marks a method of a :class:`VUser` as a task; ``weight`` sets its share of iterations."""

    def mark(f: F) -> F:
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ScenarioError(
                f"{_where(f)}: task {f.__name__!r} has weight {weight!r}; a weight is a whole "
                "number >= 1"
            )
        setattr(f, _TASK, weight)
        return f

    return mark(fn) if fn is not None else mark


def expect(
    status: int | list[int] | range | None = None,
    *,
    body_contains: str | None = None,
    json_path: str | None = None,
    equals: Any = None,
    max_latency: Duration | None = None,
) -> Expect:
    """Checks the engine runs on each response: status (a code, a list or a ``range``), a piece
    of the body, a JSON path's value, a latency limit."""
    codes: list[int] | None = None
    span: tuple[int, int] | None = None
    if isinstance(status, int):
        codes = [status]
    elif isinstance(status, range):
        span = (status.start, status.stop - 1)
    elif status is not None:
        codes = list(status)
    return Expect(
        status=codes,
        status_range=span,
        body_contains=body_contains,
        json_path=json_path,
        json_equals=equals,
        max_latency_ms=None
        if max_latency is None
        else parse_duration(max_latency, what="max_latency") * 1000,
    )


def _feed_path(path: Path, scenario_file: Path) -> Path | None:
    """A relative feed file is looked for beside the scenario file that names it (so
    ``loadpilot run work/shop.py`` finds ``work/users.csv``), then in the current directory."""
    if path.is_absolute():
        return path if path.is_file() else None
    beside = scenario_file.parent / path if scenario_file.is_file() else None
    for candidate in (beside, path):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def feed(source: str | Path | Any, mode: str = "cycle", *, seed: int = 0) -> Feeder:
    """Rows handed out one per iteration, from a CSV file (a relative path is looked for beside
    the scenario file first), a Polars DataFrame or a pandas one; each column is a placeholder
    (``{{user}}``). ``mode``: ``cycle``, ``random`` or ``unique`` (each row once; the run ends
    when they run out)."""
    if mode not in ("cycle", "random", "unique"):
        raise ScenarioError(f"feed mode {mode!r}: use cycle, random or unique")
    caller = sys._getframe(1)
    where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
    if isinstance(source, pl.DataFrame):
        frame = source
    elif type(source).__module__.partition(".")[0] == "pandas":
        # A pandas DataFrame, read column by column (no pyarrow needed).
        pdf: Any = source
        frame = pl.DataFrame({str(c): [str(v) for v in pdf[c].tolist()] for c in pdf.columns})
    else:
        path = _feed_path(Path(source), Path(caller.f_code.co_filename))
        if path is None:
            raise ScenarioError(
                f"{where}: feed {str(source)!r}: no such file (looked beside the scenario file "
                f"and in {Path.cwd()})"
            )
        try:
            frame = pl.read_csv(path, infer_schema=False)
        except (OSError, pl.exceptions.PolarsError) as e:
            raise ScenarioError(f"{where}: feed {str(path)!r}: {e}") from None
    if frame.height == 0:
        raise ScenarioError(f"{where}: a feed needs at least one row")
    frame = frame.select(pl.all().cast(pl.String).fill_null(""))
    fed = Feeder(
        columns=frame.columns,
        rows=[list(r) for r in frame.iter_rows()],
        mode=mode,
        seed=seed,
    )
    if isinstance(source, (str, Path)):
        fed._source = str(source)
    return fed


class VUser:
    """Base class of a scenario's virtual users. ``self.client`` sends requests; ``on_start``
    and ``on_stop`` (optional, plain or ``async``) run once per virtual user."""

    client: Any
    #: The feeder row of the current iteration (``None`` without a feeder).
    row: dict[str, str] | None = None

    @classmethod
    def describe(cls) -> Scenario:
        """What ``@lp.scenario`` read from this class: its tasks and where they run
        (``.path``, ``.reason``), its profile and thresholds, ``.plan(target)``."""
        found = scenario_of(cls)
        if found is None:
            raise ScenarioError(f"{cls.__name__} is not a scenario: decorate it with @lp.scenario")
        return found


class _RequestReader:
    """Stands in for the client while an engine-path task is read: collects its requests."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def request(
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: str | None = None,
        data: str | Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        auth: tuple[str, str] | None = None,
        files: Any = None,
        cookies: Mapping[str, str] | None = None,
        timeout: Duration | None = None,
        expect: Expect | None = None,
        follow_redirects: bool | None = None,
        max_redirects: int | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            kw = next(iter(unknown))
            hint = (
                ": it needs a `with` block, which runs the task in Python"
                if kw == "catch_response"
                else f"; it takes {', '.join(CLIENT_KEYWORDS)}"
            )
            raise ScenarioError(f"{caller()}: {method.lower()}() takes no keyword {kw!r}{hint}")
        form = None
        if data is not None and not isinstance(data, str | bytes):
            form = _form_pairs(data, caller)
            data = None
        if auth is not None:
            auth = _auth_pair(auth, caller)
        uploads = None
        if files is not None:
            uploads = []
            for field, filename, given, on_disk, content_type in file_parts(files, caller):
                try:
                    text = None if given is None else given.decode()
                except UnicodeDecodeError:
                    raise ScenarioError(
                        f"{caller()}: files[{field!r}]: an engine task sends text content; "
                        "give binary content as a file (a Path)"
                    ) from None
                uploads.append(
                    File(
                        field=field,
                        filename=filename,
                        content=text,
                        path=on_disk,
                        content_type=content_type,
                    )
                )
            if data is not None and form is None:
                raise ScenarioError(
                    f"{caller()}: with files=, data= is the form's fields (a mapping or pairs)"
                )
        if name is not None:
            why = (
                f"name {name!r} is not text"
                if not isinstance(name, str)
                else _engine.request_name_problem(name)
            )
            if why is not None:
                raise ScenarioError(f"{caller()}: {why}")
        if params:
            # Placeholders stay readable for the engine to fill.
            query = urllib.parse.urlencode(params, safe="{}")
            path = f"{path}{'&' if '?' in path else '?'}{query}"
        hs = dict(headers or {})
        if cookies:
            sent = "; ".join(f"{k}={v}" for k, v in _text_pairs(cookies, "cookies", caller))
            own = next((k for k in hs if k.lower() == "cookie"), None)
            hs[own or "cookie"] = f"{hs[own]}; {sent}" if own else sent
        body = content if content is not None else data
        self.requests.append(
            Request(
                name=name,
                method=method.upper(),
                path=path,
                headers=hs,
                body=body,
                json_=json,
                form=form,
                files=uploads,
                auth=auth,
                timeout_s=None if timeout is None else parse_duration(timeout, what="timeout"),
                expect=expect,
                follow_redirects=follow_redirects,
                max_redirects=max_redirects,
            )
        )

    def __getattr__(self, verb: str) -> Callable[..., None]:
        if verb not in _VERBS:
            raise AttributeError(verb)
        return lambda path, **kw: self.request(verb.upper(), path, **kw)


#: The keywords both paths' clients take, with the same meaning (httpx's where they overlap).
CLIENT_KEYWORDS = (
    "name",
    "params",
    "headers",
    "json",
    "content",
    "data",
    "auth",
    "files",
    "cookies",
    "timeout",
    "expect",
    "catch_response",
    "follow_redirects",
    "max_redirects",
)


def _form_pairs(data: Any, where: Callable[[], str]) -> list[tuple[str, str]]:
    """A form given as a mapping or as (name, value) pairs, as text pairs."""
    return _text_pairs(data, "data", where, "text, bytes, ")


def _text_pairs(
    given: Any, keyword: str, where: Callable[[], str], also: str = ""
) -> list[tuple[str, str]]:
    """A mapping or (name, value) pairs, as text pairs."""
    try:
        items = given.items() if isinstance(given, Mapping) else list(given)
        return [(str(k), str(v)) for k, v in items]
    except (TypeError, ValueError):
        raise ScenarioError(
            f"{where()}: {keyword}= takes {also}a mapping or (name, value) pairs, "
            f"not {type(given).__name__}"
        ) from None


#: A file of a form as both paths hand it on: field, file name, content, path, content type.
FilePart = tuple[str, str | None, bytes | None, str | None, str | None]


def file_parts(files: Any, where: Callable[[], str]) -> list[FilePart]:
    """``files=`` as httpx takes it, a mapping (or pairs) of field to a value: a
    :class:`~pathlib.Path` or an open file (sent from disk, read as each request is sent),
    ``bytes`` or ``str`` (the content), or a tuple ``(filename, value)`` or ``(filename,
    value, content_type)``. The content type is guessed from the file name when not given."""
    try:
        items = list(files.items() if isinstance(files, Mapping) else files)
    except TypeError:
        items = None
    if items is None or not all(isinstance(i, tuple) and len(i) == 2 for i in items):
        raise ScenarioError(f"{where()}: files= takes a mapping of field to file, not {files!r}")
    parts: list[FilePart] = []
    for field, value in items:
        filename: str | None = None
        content_type: str | None = None
        if isinstance(value, tuple):
            if not 2 <= len(value) <= 3 or not all(isinstance(v, str) for v in value[::2]):
                raise ScenarioError(
                    f"{where()}: files[{field!r}] takes (filename, content or path"
                    f"[, content_type]), not {value!r}"
                )
            filename, value, *rest = value
            content_type = rest[0] if rest else None
        content: bytes | None = None
        path: str | None = None
        if isinstance(value, os.PathLike) or (
            hasattr(value, "read") and isinstance(getattr(value, "name", None), str)
        ):
            path = os.fspath(value if isinstance(value, os.PathLike) else value.name)
            if not os.path.isfile(path):
                raise ScenarioError(f"{where()}: files[{field!r}]: no file {path!r}")
        elif isinstance(value, bytes | str):
            content = value.encode() if isinstance(value, str) else value
        else:
            raise ScenarioError(
                f"{where()}: files[{field!r}] is a Path, an open file, bytes or str, not "
                f"{type(value).__name__}"
            )
        if content_type is None:
            content_type = mimetypes.guess_type(filename or path or "")[0]
        parts.append((str(field), filename, content, path, content_type))
    return parts


def _auth_pair(auth: Any, where: Callable[[], str]) -> tuple[str, str]:
    if not (isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(a, str) for a in auth)):
        raise ScenarioError(f"{where()}: auth= takes (user, password), not {auth!r}")
    return auth


def _bad_keyword(fn: Callable[..., Any], keywords: Sequence[str] = CLIENT_KEYWORDS) -> str | None:
    """file:line and what is wrong, for the first client call in ``fn`` that gives a keyword
    the client (whose keywords are ``keywords``) does not take: refused when the scenario is
    read, never at run time."""
    fn = inspect.unwrap(fn)
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return None
    first = fn.__code__.co_firstlineno - 1
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and ast.unparse(node.func.value) == "self.client"
            and node.func.attr in (*_VERBS, "request")
        ):
            continue
        for k in node.keywords:
            at = f"{fn.__code__.co_filename}:{first + node.lineno}"
            if k.arg is not None and k.arg not in keywords:
                return (
                    f"{at}: {node.func.attr}() takes no keyword {k.arg!r}; it takes "
                    f"{', '.join(keywords)}"
                )
            if k.arg == "files" and (missing := _missing_file(k.value)) is not None:
                return f"{at}: {missing}"
    return None


def _missing_file(files: ast.expr) -> str | None:
    """What is wrong with a ``files=`` mapping written out in the code, if one of its files is
    a ``Path("...")`` that is not there (on either path: refused before anything is sent)."""
    if not isinstance(files, ast.Dict):
        return None
    for key, value in zip(files.keys, files.values, strict=True):
        given = value.elts[1] if isinstance(value, ast.Tuple) and len(value.elts) > 1 else value
        if (
            isinstance(key, ast.Constant)
            and isinstance(given, ast.Call)
            and ast.unparse(given.func) in ("Path", "pathlib.Path")
            and len(given.args) == 1
            and isinstance(given.args[0], ast.Constant)
            and isinstance(given.args[0].value, str)
            and not os.path.isfile(given.args[0].value)
        ):
            return f"files[{key.value!r}]: no file {given.args[0].value!r}"
    return None


#: LoadPilot's own Python files: a caller is the first frame outside them.
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def caller() -> str:
    """file:line of the scenario code that called the client (the first frame outside
    LoadPilot's package), whichever client (the engine path's reader, the Python path's)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _static(node: ast.expr) -> bool:
    """Whether an argument's value is fixed when the scenario is read."""
    match node:
        case ast.Constant():
            return True
        case ast.UnaryOp(op=ast.USub(), operand=ast.Constant()):
            return True
        case ast.List(elts=elts) | ast.Tuple(elts=elts) | ast.Set(elts=elts):
            return all(_static(e) for e in elts)
        case ast.Dict(keys=keys, values=values):
            return all(k is not None and _static(k) for k in keys) and all(
                _static(v) for v in values
            )
        case ast.Call(func=func, args=args, keywords=kws):
            name = ast.unparse(func)
            allowed = name in ("range", "expect", "Path", "pathlib.Path") or name.endswith(
                ".expect"
            )
            return allowed and all(_static(a) for a in args) and all(_static(k.value) for k in kws)
    return False


def _engine_path_reason(fn: Callable[..., Any]) -> str | None:
    """None when every statement of the task is a request with fixed arguments; otherwise the
    reason, with its line (or the reason a task's maker gave, ``_loadpilot_python``)."""
    given = getattr(fn, "_loadpilot_python", None)
    if given is not None:
        return str(given)
    fn = inspect.unwrap(fn)
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return "its source code cannot be read"
    tree = ast.parse(source)
    fdef = tree.body[0]
    first = fn.__code__.co_firstlineno - 1
    if isinstance(fdef, ast.AsyncFunctionDef):
        return f"line {first + fdef.lineno}: it is an async task"
    assert isinstance(fdef, ast.FunctionDef)
    for i, stmt in enumerate(fdef.body):
        line = first + stmt.lineno
        if isinstance(stmt, ast.Pass) or (
            i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        ):
            continue
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and ast.unparse(call.func.value) == "self.client"
            and call.func.attr in (*_VERBS, "request")
        ):
            return f"line {line}: `{ast.unparse(stmt).splitlines()[0]}` is Python logic"
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            if not _static(arg):
                return (
                    f"line {line}: `{ast.unparse(arg)}` is computed in Python; "
                    "use a {{placeholder}} to vary a request per iteration"
                )
    return None


@dataclass(frozen=True)
class Scenario:
    """A scenario class, read: its tasks as engine requests, its profile and thresholds."""

    name: str
    user: type[VUser]
    profile: Profile
    tasks: tuple[Task, ...]
    thresholds: tuple[Threshold, ...] = ()
    feeder: Feeder | None = None
    connections: int | None = None
    arrivals: str = "uniform"
    seed: int = 0
    timeout_s: float = DEFAULTS["timeout_s"]
    #: The longest a new connection may take to open.
    connect_timeout_s: float = DEFAULTS["connect_timeout_s"]
    #: The longest wait after the planned end for requests in flight.
    max_drain_s: float = DEFAULTS["max_drain_s"]
    #: Stop the run (from the command line) as soon as a threshold fails.
    abort_on_fail: bool = False
    #: Why (the first of) its Python tasks run Python code; None when every task runs in
    #: the engine.
    reason: str | None = None
    #: The per-user hooks (``on_start``, ``on_stop``) and the values on_start sets.
    hooks: Hooks = Hooks()
    #: The HTTP version spoken: ``"1.1"``, ``"2"`` or ``"auto"`` (HTTP/2 where TLS offers it).
    http: HttpVersion = DEFAULTS["http"]
    #: HTTP/2: the most users (or open-model connections) sharing one connection.
    max_streams: int = DEFAULTS["max_streams"]
    #: The most request names measured apart (past it: ``other``).
    max_request_names: int = DEFAULTS["max_request_names"]
    #: Whether requests follow redirects, and how many at most (each request may say).
    follow_redirects: bool = DEFAULTS["follow_redirects"]
    max_redirects: int = DEFAULTS["max_redirects"]
    #: The share of requests sent with a trace context, and the slow requests kept per second.
    trace: float = DEFAULTS["trace"]
    keep_slowest: int = DEFAULTS["keep_slowest"]
    keep_sample: int = DEFAULTS["keep_sample"]
    #: Accept any certificate from an ``https://`` target.
    insecure: bool = DEFAULTS["insecure"]
    #: How to read it again elsewhere (agents): None for a scenario class; for a locustfile,
    #: ``{"locustfile": path, "classes": [...], "tags": [...], "exclude": [...]}``.
    origin: Mapping[str, Any] | None = None

    @property
    def path(self) -> str:
        """``engine``, ``python`` or ``mixed``: where the tasks of this scenario run."""
        found = {t.path for t in self.tasks}
        return found.pop() if len(found) == 1 else "mixed"

    @property
    def request_names(self) -> list[str] | None:
        """Every request name the tasks can send, when all are known before the run (no
        Python code sends requests); None otherwise."""
        return _request_names(self.tasks, self.hooks)

    @property
    def paths(self) -> Mapping[str, str]:
        """Where each task runs: ``engine`` (its requests, compiled) or ``python``."""
        return {t.name: t.path for t in self.tasks}

    def plan(self, target: str, *, profile: Profile | None = None) -> Plan:
        """The plan that runs this scenario against ``target`` (optionally with another
        profile)."""
        prof = profile or self.profile
        return Plan(
            name=self.name,
            target=target,
            load=prof.to_load(connections=self.connections, arrivals=self.arrivals, seed=self.seed),
            tasks=list(self.tasks),
            feeder=self.feeder,
            timeout_s=self.timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            max_drain_s=self.max_drain_s,
            hooks=self.hooks,
            http=self.http,
            max_streams=self.max_streams,
            max_request_names=self.max_request_names,
            follow_redirects=self.follow_redirects,
            max_redirects=self.max_redirects,
            trace=self.trace,
            keep_slowest=self.keep_slowest,
            keep_sample=self.keep_sample,
            insecure=self.insecure,
        )


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _attributes_set(fn: Callable[..., Any]) -> set[str]:
    """The names ``fn`` assigns on ``self`` (``self.token = ...``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return set()
    found = set()
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for t in targets:
            for sub in ast.walk(t):
                if (
                    isinstance(sub, ast.Attribute)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id == "self"
                ):
                    found.add(sub.attr)
    return found


def _read_tasks(cls: type[VUser]) -> tuple[tuple[Task, ...], str | None, Hooks]:
    """The tasks (each on the engine path unless its body has Python logic), why the first
    Python one is (None: every task runs in the engine), and the per-user hooks: the
    attributes ``on_start`` sets that engine requests use as ``{{name}}`` become each user's
    values."""
    where = _class_where(cls)
    # Tasks are inherited, as methods are: a subclass (a scenario of other settings, say) runs
    # its bases' tasks, and a task it defines again replaces theirs.
    members: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is not VUser and issubclass(klass, VUser):
            members.update(vars(klass))
    found = [
        (name, fn, weight)
        for name, fn in members.items()
        if callable(fn) and (weight := getattr(fn, _TASK, None)) is not None
    ]
    if not found:
        raise ScenarioError(f"{where}: scenario {cls.__name__!r} has no @task method")
    reason = None
    tasks = []
    keywords = getattr(cls, "_client_keywords", CLIENT_KEYWORDS)
    for name, fn, weight in found:
        bad = _bad_keyword(fn, keywords)
        if bad is not None:
            raise ScenarioError(bad)
        why = _engine_path_reason(fn)
        if why is not None:
            reason = reason or f"task {name!r} has Python logic: {why} ({_where(fn)})"
            tasks.append(Task(name=name, weight=weight, path="python"))
            continue
        rec = _RequestReader()
        probe = object.__new__(cls)
        probe.client = rec
        fn(probe)
        if not rec.requests:
            raise ScenarioError(f"{_where(fn)}: task {name!r} sends no request")
        tasks.append(Task(name=name, weight=weight, requests=rec.requests))
    on_start = vars(cls).get("on_start")
    values: list[str] = []
    if on_start is not None:
        used = {
            m.group(1)
            for t in tasks
            for r in t.requests
            for m in _PLACEHOLDER.finditer(r.model_dump_json())
        }
        values = sorted(used & _attributes_set(on_start))
    hooks = Hooks(
        on_start=callable(on_start),
        on_stop=callable(vars(cls).get("on_stop")),
        values=values,
    )
    return tuple(tasks), reason, hooks


def scenario(
    *,
    profile: Profile,
    thresholds: Mapping[str, str] | None = None,
    name: str | None = None,
    connections: int | None = None,
    arrivals: str = "uniform",
    seed: int = 0,
    timeout: Duration | None = None,
    connect_timeout: Duration | None = None,
    abort_on_fail: bool = False,
    max_drain: Duration | None = None,
    http: HttpVersion | None = None,
    max_streams: int | None = None,
    max_request_names: int | None = None,
    follow_redirects: bool = DEFAULTS["follow_redirects"],
    max_redirects: int | None = None,
    trace: float | bool = DEFAULTS["trace"],
    keep_slowest: int = DEFAULTS["keep_slowest"],
    keep_sample: int = DEFAULTS["keep_sample"],
    insecure: bool = DEFAULTS["insecure"],
) -> Callable[[type[VUser]], type[VUser]]:
    """Declares a :class:`VUser` subclass as a scenario with its load profile and thresholds
    (``abort_on_fail``: ``loadpilot run`` stops as soon as one fails). ``timeout`` is every
    request's unless it gives its own (default 30 s); ``connect_timeout`` bounds the opening of
    each new connection within it (default 10 s; past it the request fails as ``dns``,
    ``connect`` or ``tls``, where it ran out); ``max_drain`` bounds the wait after the
    planned end for iterations still going (default 10 s; what is still going then is counted
    as cancelled). ``http``: ``"1.1"`` (the default: one connection per user), ``"2"`` (HTTP/2:
    by ALPN over TLS, prior knowledge over cleartext; up to ``max_streams``, default 100, users
    share a connection) or ``"auto"`` (HTTP/2 where the server offers it over TLS, else
    HTTP/1.1). ``max_request_names`` (default 1,000) bounds the request names measured apart:
    past it, new names are measured together under ``other``. Redirects are followed up to
    ``max_redirects`` hops (default 10; ``follow_redirects=False``: not at all), as requests
    and k6 do; each request may say otherwise. ``trace``: the share of requests sent with a
    W3C ``traceparent`` (1: all, the default; ``False``: none); ``keep_slowest`` and
    ``keep_sample``: each request name's slowest requests and sampled ones kept per second
    with their context (``run.slowest()``; 5 and 2). ``insecure=True`` accepts any certificate
    from an ``https://`` target (a self-signed one, a staging host's), as ``verify=False`` does
    in requests."""
    if not isinstance(profile, Profile):
        raise ScenarioError(f"profile must come from lp.constant, lp.ramp, ... not {profile!r}")
    try:
        http = DEFAULTS["http"] if http is None else check_field("http", http)
        streams = DEFAULTS["max_streams"] if max_streams is None else max_streams
        streams = check_field("max_streams", streams)
        names_max = DEFAULTS["max_request_names"]
        if max_request_names is not None:
            names_max = check_field("max_request_names", max_request_names)
        hops = DEFAULTS["max_redirects"]
        if max_redirects is not None:
            hops = check_field("max_redirects", max_redirects)
        follow = check_field("follow_redirects", follow_redirects)
        share = check_field("trace", trace)
        slowest = check_field("keep_slowest", keep_slowest)
        sampled = check_field("keep_sample", keep_sample)
        unverified = check_field("insecure", insecure)
    except PlanError as e:
        raise ScenarioError(str(e)) from None
    timeout_s: float = DEFAULTS["timeout_s"]
    if timeout is not None:
        timeout_s = parse_duration(timeout, what="timeout")
    drain_s: float = DEFAULTS["max_drain_s"]
    if max_drain is not None:
        drain_s = parse_duration(max_drain, what="max_drain")
    connect_s: float = DEFAULTS["connect_timeout_s"]
    if connect_timeout is not None:
        connect_s = parse_duration(connect_timeout, what="connect_timeout")

    def declare(cls: type[VUser]) -> type[VUser]:
        tasks, reason, hooks = _read_tasks(cls)
        names = [t.name for t in tasks]
        try:
            parsed = parse_all(dict(thresholds or {}), names, _request_names(tasks, hooks))
        except PlanError as e:
            raise ScenarioError(f"{_class_where(cls)}: {e}") from None
        feeder = vars(cls).get("feed")
        sc = Scenario(
            name=name or cls.__name__,
            user=cls,
            profile=profile,
            tasks=tasks,
            thresholds=tuple(parsed),
            feeder=feeder if isinstance(feeder, Feeder) else None,
            connections=connections,
            arrivals=arrivals,
            seed=seed,
            timeout_s=timeout_s,
            connect_timeout_s=connect_s,
            max_drain_s=drain_s,
            reason=reason,
            hooks=hooks,
            abort_on_fail=abort_on_fail,
            http=http,
            max_streams=streams,
            max_request_names=names_max,
            follow_redirects=follow,
            max_redirects=hops,
            trace=share,
            keep_slowest=slowest,
            keep_sample=sampled,
            insecure=unverified,
        )
        setattr(cls, _SCENARIO, sc)
        return cls

    return declare


def _request_names(tasks: Sequence[Task], hooks: Hooks) -> list[str] | None:
    """Every request name the tasks can send, when all are known before the run (no Python
    code sends requests); None otherwise."""
    if hooks.on_start or any(t.path == "python" for t in tasks):
        return None
    return plan_request_names(tasks)


def scenario_of(cls: type) -> Scenario | None:
    found = vars(cls).get(_SCENARIO)
    return found if isinstance(found, Scenario) else None
