"""The plan: what a run does, as data. These models mirror the engine's serde structs one to
one, so a plan built here, written as JSON, or produced by another tool runs the same way."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from loadpilot import _engine
from loadpilot.errors import PlanError

# Limits and defaults are the engine's: read here, never restated (a test holds every field of
# these models to the engine's reading of the same plan).
#: The longest duration, timeout or think time a plan may give (a year).
MAX_SECONDS: float = _engine.MAX_SECONDS
#: The most virtual users or connections a plan may ask for unless it raises ``max_users``.
DEFAULT_MAX_USERS: int = _engine.DEFAULT_MAX_USERS
#: The most streams one HTTP/2 connection may be asked to carry (``max_streams``).
MAX_STREAMS: int = _engine.MAX_STREAMS
#: The most redirects a plan or a request may ask to follow (``max_redirects``).
MAX_REDIRECTS: int = _engine.MAX_REDIRECTS
#: Every default a plan field takes when left out.
DEFAULTS: dict[str, Any] = dict(_engine.PLAN_DEFAULTS)
#: The most requests a name may keep per second, slowest or sampled.
MAX_KEPT: int = DEFAULTS.pop("max_kept")
#: The HTTP versions a plan may ask for.
HttpVersion = Literal["1.1", "2", "auto"]


class _Model(BaseModel):
    # inf and nan are refused where they are given, with the field's name.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Constant(_Model):
    """``rate`` per second (or users, in a closed model) for ``duration_s``."""

    kind: Literal["constant"] = "constant"
    rate: float = Field(ge=0)
    duration_s: float = Field(gt=0, le=MAX_SECONDS)


class Ramp(_Model):
    """A linear change from ``from_`` to ``to`` over ``duration_s``."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )
    kind: Literal["ramp"] = "ramp"
    from_: float = Field(ge=0, alias="from")
    to: float = Field(ge=0)
    duration_s: float = Field(gt=0, le=MAX_SECONDS)


class Step(_Model):
    """``steps`` equal plateaus from ``from_`` to ``to`` (both included) over ``duration_s``."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )
    kind: Literal["step"] = "step"
    from_: float = Field(ge=0, alias="from")
    to: float = Field(ge=0)
    steps: int = Field(ge=1)
    duration_s: float = Field(gt=0, le=MAX_SECONDS)


class Spike(_Model):
    """``base``, with ``peak`` for ``peak_s`` in the middle of ``duration_s``."""

    kind: Literal["spike"] = "spike"
    base: float = Field(ge=0)
    peak: float = Field(ge=0)
    peak_s: float = Field(gt=0, le=MAX_SECONDS)
    duration_s: float = Field(gt=0, le=MAX_SECONDS)


Stage = Annotated[Constant | Ramp | Step | Spike, Field(discriminator="kind")]


class OpenLoad(_Model):
    """Open model: requests arrive on a schedule whatever the server does."""

    model: Literal["open"] = "open"
    stages: list[Stage] = Field(min_length=1)
    arrivals: Literal["uniform", "poisson"] = DEFAULTS["arrivals"]
    seed: int = DEFAULTS["seed"]
    connections: int = Field(default=DEFAULTS["connections"], ge=1)


class ClosedLoad(_Model):
    """Closed model: stage values are virtual users, each looping with ``think_s`` between
    iterations."""

    model: Literal["closed"] = "closed"
    stages: list[Stage] = Field(min_length=1)
    think_s: float = Field(default=DEFAULTS["think_s"], ge=0, le=MAX_SECONDS)
    think_max_s: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    pace_s: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    max_iterations: int | None = Field(default=None, ge=1, strict=True)
    """At most this many iterations in all (every user's together): once they have ended,
    the run ends, before its duration if they end sooner (Locust's ``-i``)."""


Load = Annotated[OpenLoad | ClosedLoad, Field(discriminator="model")]


class Expect(_Model):
    """Checks on a response, evaluated in the engine."""

    status: list[int] | None = None
    status_range: tuple[int, int] | None = None
    body_contains: str | None = None
    json_path: str | None = None
    json_equals: Any = None
    max_latency_ms: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _json_pair(self) -> Expect:
        if (self.json_path is None) != (self.json_equals is None):
            raise ValueError("json_path and json_equals go together")
        return self


class File(_Model):
    """A file of a multipart form: its ``content`` (templated text) or a ``path`` on the
    machine that sends, read as each request is sent (never held whole in memory)."""

    field: str
    filename: str | None = None
    """Default: the last part of ``path``, else ``field``."""
    content: str | None = None
    path: str | None = None
    content_type: str | None = None
    """Default: ``application/octet-stream``."""

    @model_validator(mode="after")
    def _one_source(self) -> File:
        if (self.content is None) == (self.path is None):
            raise ValueError("give one of content and path")
        return self


class Request(_Model):
    """One request. ``path``, header values and bodies may hold ``{{name}}`` placeholders.
    ``name``: what its measurements are kept under (default: the method and the path as
    written, without the query: ``GET /items/{{id}}``)."""

    name: str | None = None
    method: str = DEFAULTS["method"]
    path: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    json_: Any = Field(default=None, alias="json")
    form: list[tuple[str, str]] | None = None
    """A form body: name and value pairs (templated), sent urlencoded."""
    auth: tuple[str, str] | None = None
    """Basic authentication: user and password (templated)."""
    files: list[File] | None = None
    """Files to upload: the body is then ``multipart/form-data`` (``form`` its text
    fields)."""
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    expect: Expect | None = None
    follow_redirects: bool | None = None
    """Whether this request follows redirects (default: the plan's)."""
    max_redirects: int | None = Field(default=None, ge=0, le=MAX_REDIRECTS)
    """The most redirects this request follows (default: the plan's)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )


class Task(_Model):
    """A task: engine tasks list their requests; python tasks are methods of a scenario's
    virtual-user class and list none."""

    name: str
    weight: int = Field(default=DEFAULTS["weight"], ge=1)
    path: Literal["engine", "python"] = DEFAULTS["path"]
    requests: list[Request] = Field(default_factory=list)

    @model_validator(mode="after")
    def _requests_match_path(self) -> Task:
        if self.path == "engine" and not self.requests:
            raise ValueError(f"engine task {self.name!r} needs at least one request")
        return self


class Feeder(_Model):
    """Rows handed out one per iteration."""

    columns: list[str]
    rows: list[list[str]] = Field(min_length=1)
    mode: Literal["cycle", "random", "unique"] = DEFAULTS["feed_mode"]
    seed: int = DEFAULTS["seed"]
    _source: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str | None:
        """The CSV path the rows were read from, as the scenario gave it (None: a frame)."""
        return self._source


class Hooks(_Model):
    """A scenario's per-user hooks, run in Python when the engine asks: ``on_start`` before
    the user's first iteration, ``on_stop`` when the run ends or is stopped. ``values``: the
    attributes ``on_start`` sets that the user's engine requests use as ``{{name}}``."""

    on_start: bool = False
    on_stop: bool = False
    values: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=DEFAULTS["hook_timeout_s"], gt=0, le=MAX_SECONDS)


class Shard(_Model):
    """A slice of a run (distributed runs): every ``count``-th arrival (open model) or user
    (closed model) of the one schedule, starting at ``index``; its clock starts at
    ``start_at`` (seconds since the Unix epoch) and it begins ``from_s`` seconds in, at
    arrival ``from_index`` of the schedule (open model) at the earliest."""

    index: int = Field(ge=0)
    count: int = Field(ge=1)
    start_at: float | None = Field(default=None, gt=0)
    from_s: float = Field(default=0.0, ge=0)
    from_index: int = Field(default=0, ge=0)


class Plan(_Model):
    """A complete run: target, load, tasks."""

    name: str = DEFAULTS["name"]
    target: str
    load: Load
    tasks: list[Task] = Field(min_length=1)
    feeder: Feeder | None = None
    user_vars: list[dict[str, str]] = Field(default_factory=list)
    vars: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=DEFAULTS["timeout_s"], gt=0, le=MAX_SECONDS)
    connect_timeout_s: float = Field(default=DEFAULTS["connect_timeout_s"], gt=0, le=MAX_SECONDS)
    """The longest a new connection may take to open (name lookup, TCP and TLS handshakes),
    within the request's own timeout: past it the request fails as ``dns``, ``connect`` or
    ``tls``."""
    insecure: bool = DEFAULTS["insecure"]
    shard: Shard | None = None
    max_drain_s: float = Field(default=DEFAULTS["max_drain_s"], gt=0, le=MAX_SECONDS)
    """The longest wait after the planned end for requests in flight (also bounded by the
    longest request timeout); what is still in flight then is cancelled."""
    max_users: int = Field(default=DEFAULT_MAX_USERS, ge=1)
    """The most virtual users (closed model) or connections (open model) the plan may ask
    for: a guard against a typo that would need unbounded memory. Raise it on purpose."""
    hooks: Hooks = Field(default_factory=Hooks)
    http: HttpVersion = DEFAULTS["http"]
    """The HTTP version spoken: ``"1.1"`` (a keep-alive connection per user), ``"2"``
    (HTTP/2: by ALPN over TLS, with prior knowledge over cleartext) or ``"auto"`` (HTTP/2
    where the server offers it by ALPN over TLS, HTTP/1.1 otherwise)."""
    max_streams: int = Field(default=DEFAULTS["max_streams"], ge=1, le=MAX_STREAMS)
    """HTTP/2: the most users (closed model) or connections (open model) whose requests
    share one connection as concurrent streams."""
    max_request_names: int = Field(default=DEFAULTS["max_request_names"], ge=1)
    """The most distinct request names measured apart; past it, new names are measured
    together under ``other`` (and the run says so once)."""
    follow_redirects: bool = DEFAULTS["follow_redirects"]
    """Whether requests follow redirects (each request may say otherwise)."""
    max_redirects: int = Field(default=DEFAULTS["max_redirects"], ge=0, le=MAX_REDIRECTS)
    """The most redirects one request follows; past it the request fails (``redirect``)."""
    allow_hosts: list[str] | None = None
    """The hosts redirects may lead to (``host`` or ``host:port`` globs, ``loopback``; empty:
    loopback only), as agents and serve mode set from their allow-list; None: any. A hop
    elsewhere fails (``redirect``) and nothing is sent there."""
    trace: float = Field(default=DEFAULTS["trace"], ge=0, le=1)
    """The share of requests sent with a W3C trace context (a ``traceparent`` header): 1
    every one, 0 none (``True``/``False`` say the same). A request that sets its own keeps it;
    either way its trace id is kept with the request if it is among the slowest."""
    keep_slowest: int = Field(default=DEFAULTS["keep_slowest"], ge=0, le=MAX_KEPT)
    """How many of its slowest requests each request name keeps per second, with their
    context (``run.slowest()``); 0: none."""
    keep_sample: int = Field(default=DEFAULTS["keep_sample"], ge=0, le=MAX_KEPT)
    """How many requests of each name are kept per second as a uniform sample, beside the
    slowest (what an ordinary request looked like); 0: none."""

    @field_validator("trace", mode="before")
    @classmethod
    def _trace_share(cls, v: object) -> object:
        return float(v) if isinstance(v, bool) else v

    def file_paths(self) -> list[str]:
        """The files on disk the plan's requests upload, read by the machine that sends them
        (serve mode and agents send them only when allowed to run code)."""
        return [
            f.path
            for t in self.tasks
            for r in t.requests
            for f in r.files or []
            if f.path is not None
        ]

    def python(self) -> bool:
        """Whether any part of the plan runs Python code (a task body or a hook)."""
        return any(t.path == "python" for t in self.tasks) or (
            self.hooks.on_start or self.hooks.on_stop
        )

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        """A plan from its JSON text. Errors are ``ValueError``s that say what is wrong: not
        UTF-8, not JSON (with the line), nested too deeply, or a field (with its path)."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"not a text file (byte {e.start} is not UTF-8)") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        except RecursionError:
            raise ValueError("not a plan: JSON nested too deeply") from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ValueError(describe(e)) from None

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.load.stages)


def plan_request_names(tasks: Plan | Sequence[Task]) -> list[str]:
    """The names the engine measures the engine tasks' requests under (a request's own, or
    the method and the path as written, without its query), each once, in order."""
    found = tasks.tasks if isinstance(tasks, Plan) else tasks
    names = (_engine.request_name(r.name, r.method, r.path) for t in found for r in t.requests)
    return list(dict.fromkeys(names))


def check_field(field: str, value: Any, model: type[BaseModel] | None = None) -> Any:
    """``value`` validated by the rule of the :class:`Plan` field ``field`` (or of ``model``'s:
    the one rule for it, wherever the value comes from: a decorator, the command line);
    raises ``PlanError`` naming the field."""
    info = (model or Plan).model_fields[field]
    rule: Any = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    try:
        return TypeAdapter(rule).validate_python(value)
    except ValidationError as e:
        msg = e.errors(include_url=False)[0]["msg"]
        raise PlanError(f"invalid {field}: {msg} (got {value!r})") from None


def describe(e: ValidationError) -> str:
    """A pydantic error as one line per problem: where (the field's path), what, and the
    value given."""
    lines = []
    for err in e.errors(include_url=False):
        at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        given = err.get("input")
        shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
        lines.append(f"invalid plan at {at or 'top level'}: {err['msg']}{shown}")
    return "; ".join(lines)
