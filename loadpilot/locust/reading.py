"""Reading a locustfile and turning it into a LoadPilot scenario.

While the file is read, ``locust`` (and the submodules locustfiles import from) is LoadPilot's
implementation, whether or not Locust is installed. A user class whose tasks are plain methods
and whose ``wait_time`` is one of Locust's own (``constant``, ``between``, ``constant_pacing``,
``constant_throughput``) becomes a scenario of those tasks: each straight-line task runs in the
engine, the others in Python, and the engine waits the ``wait_time`` as think time. Anything
else (TaskSets, several user classes, a ``wait_time`` of the file's own, a ``request``
listener) runs each user in Python, one Locust task per iteration, choosing tasks as Locust does.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import importlib
import importlib.abc
import itertools
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadpilot.errors import PlanError, RequestError, ScenarioError
from loadpilot.locust import clients, environment
from loadpilot.locust import users as lu
from loadpilot.locust.events import events
from loadpilot.plan import Constant, Plan, Ramp, Stage, check_field
from loadpilot.profiles import Duration, Profile, parse_duration
from loadpilot.profiles import constant as open_rate
from loadpilot.profiles import users as users_profile
from loadpilot.scenarios import loader
from loadpilot.scenarios.scenario import (
    Scenario,
    VUser,
    _engine_path_reason,
    scenario,
)
from loadpilot.scenarios.scenario import task as lp_task

#: The modules a locustfile imports from, and what stands in for them.
_MODULES = {
    "locust": "loadpilot.locust",
    "locust.user": "loadpilot.locust.users",
    "locust.user.users": "loadpilot.locust.users",
    "locust.user.task": "loadpilot.locust.users",
    "locust.user.wait_time": "loadpilot.locust.users",
    "locust.user.sequential_taskset": "loadpilot.locust.users",
    "locust.user.markov_taskset": "loadpilot.locust.users",
    "locust.exception": "loadpilot.locust.users",
    "locust.shape": "loadpilot.locust.users",
    "locust.contrib": "loadpilot.locust.contrib",
    "locust.contrib.fasthttp": "loadpilot.locust.contrib",
    "locust.clients": "loadpilot.locust.clients",
    "locust.debug": "loadpilot.locust.debug",
    "locust.event": "loadpilot.locust.events",
    "locust.env": "loadpilot.locust.environment",
}


class _NoGevent(importlib.abc.MetaPathFinder):
    """Refuses ``import gevent`` in a locustfile: LoadPilot's users are not greenlets."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] == "gevent":
            raise ImportError(
                "LoadPilot runs locustfiles without gevent (each user's tasks run as a greenlet "
                "of LoadPilot's own; a request or time.sleep pauses that user only): leave "
                "gevent out"
            )
        return None


@contextlib.contextmanager
def aliased() -> Iterator[None]:
    """``import locust`` gives LoadPilot's implementation while the block runs (and
    ``import gevent`` is refused)."""
    names = [*_MODULES, *(n for n in sys.modules if n.split(".")[0] == "gevent")]
    saved = {name: sys.modules.get(name) for name in names}
    finder = _NoGevent()
    try:
        for name in names:
            sys.modules.pop(name, None)
        for name, ours in _MODULES.items():
            sys.modules[name] = importlib.import_module(ours)
        sys.meta_path.insert(0, finder)
        yield
    finally:
        sys.meta_path.remove(finder)
        for name, was in saved.items():
            if was is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = was


def is_locustfile(path: Path) -> bool:
    """Whether a Python file imports from ``locust`` (read, not run)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "locust":
            return True
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "locust" for a in node.names
        ):
            return True
    return False


def _classes(cls: type) -> tuple[str | None, list[ast.ClassDef]]:
    """A locustfile class's file and the class definitions in it (read from the file: once
    read, the module is no longer importable for ``inspect``)."""
    file = _FILES.get(cls.__module__) or getattr(sys.modules.get(cls.__module__), "__file__", None)
    if file is None:
        return None, []
    try:
        tree = ast.parse(Path(file).read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError):
        return file, []
    return file, [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]


def _line(cls: type, attr: str | None = None) -> str:
    """file:line of a class of a locustfile, or of the line where it (or a class of the file
    it derives from) sets ``attr``."""
    file, found = _classes(cls)
    line = next((n.lineno for n in found if n.name == cls.__name__), None)
    bases = [k.__name__ for k in cls.__mro__] if attr is not None else []
    for node in (n for name in bases for n in found if n.name == name):
        for stmt in node.body:
            targets: list[ast.expr] = []
            if isinstance(stmt, ast.Assign):
                targets = stmt.targets
            elif isinstance(stmt, ast.AnnAssign):
                targets = [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                return f"{file}:{stmt.lineno}"
    return f"{file}:{line}" if line is not None else cls.__qualname__


#: Settings of Locust's user classes that LoadPilot does not run: Locust's default for each,
#: and why. A class that sets one to anything else is refused, never run as if it had not.
_NOT_RUN: dict[str, tuple[Any, str]] = {
    "max_retries": (0, "counts every failed request and sends none again; retry in the task"),
    "proxy_host": (None, "sends to the run's host directly, never through a proxy"),
    "proxy_port": (None, "sends to the run's host directly, never through a proxy"),
    "client_pool": (None, "keeps each user's connection its own; a pool of the file's is unused"),
    "pool_manager": (None, "keeps each user's connection its own; a pool of the file's is unused"),
    "ssl_context_factory": (
        None,
        "checks certificates as the class's `insecure` says; an SSL context of the file's own "
        "is not used",
    ),
}


def _refuse_what_is_not_run(cls: type) -> None:
    for attr, (default, why) in _NOT_RUN.items():
        value = getattr(cls, attr, default)
        if value not in (None, default):
            raise ScenarioError(
                f"{_line(cls, attr)}: {cls.__name__}.{attr} = {value!r}: LoadPilot {why}"
            )


#: The file each locustfile module was read from.
_FILES: dict[str, str] = {}


@dataclass
class Locustfile:
    """What a locustfile declares."""

    path: Path
    users: list[type[lu.User]]
    shape: lu.LoadTestShape | None


def read(path: str | Path, chosen: list[str] | None = None) -> Locustfile:
    """The locustfile's user classes (those named in ``chosen``, else all) and its shape."""
    file = Path(path)
    events.reset()
    with aliased():
        module = loader.load_module(file)
    _FILES[module.__name__] = str(file)
    found: list[type[lu.User]] = []
    shapes: list[type[lu.LoadTestShape]] = []
    for value in vars(module).values():
        if not isinstance(value, type):
            continue
        if issubclass(value, lu.User) and not vars(value).get("abstract", False):
            if not issubclass(value, lu.HttpUser):
                raise ScenarioError(
                    f"{_line(value)}: {value.__name__} is a Locust User with a client of its "
                    "own; LoadPilot runs HttpUser and FastHttpUser"
                )
            found.append(value)
        elif issubclass(value, lu.LoadTestShape) and not vars(value).get("abstract", False):
            shapes.append(value)
    found = _choose(file, found, chosen)
    for cls in found:
        _refuse_what_is_not_run(cls)
    if not found:
        raise ScenarioError(f"{file}: no user class (a subclass of HttpUser or FastHttpUser)")
    if len(shapes) > 1:
        raise ScenarioError(
            f"{file}: several LoadTestShape classes ({', '.join(s.__name__ for s in shapes)}); "
            "keep one"
        )
    return Locustfile(file, found, shapes[0]() if shapes else None)


class _Options:
    """What a locustfile's ``init_command_line_parser`` listeners get as the parser: options
    go to the ``loadpilot locust`` command line; Locust's web-UI keywords are accepted and
    have no use here."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._parser = parser

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        for web_only in ("include_in_web_ui", "is_secret", "is_required", "env_var"):
            kwargs.pop(web_only, None)
        return self._parser.add_argument(*args, **kwargs)

    def add_argument_group(self, *args: Any, **kwargs: Any) -> _Options:
        return _Options(self._parser.add_argument_group(*args, **kwargs))  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def add_own_options(parser: argparse.ArgumentParser) -> None:
    """The options the locustfile adds (``events.init_command_line_parser``), added to
    ``parser``."""
    events.init_command_line_parser.fire(parser=_Options(parser))


def _choose(
    file: Path, found: list[type[lu.User]], chosen: list[str] | None
) -> list[type[lu.User]]:
    if not chosen:
        return found
    names = {c.__name__: c for c in found}
    missing = [c for c in chosen if c not in names]
    if missing:
        raise ScenarioError(
            f"{file}: no user class {missing[0]!r}; user classes: {', '.join(names) or 'none'}"
        )
    return [names[c] for c in chosen]


def choose(lf: Locustfile, chosen: list[str]) -> Locustfile:
    """The locustfile with only the user classes named in ``chosen`` (all when none is)."""
    return dataclasses.replace(lf, users=_choose(lf.path, lf.users, chosen))


def shape_profile(shape: lu.LoadTestShape, limit_s: float = 86_400.0) -> Profile:
    """A LoadTestShape as a closed-model profile: its ``tick()`` each second (on a clock of
    LoadPilot's own) gives the users wanted and the spawn rate; users move towards the number
    wanted at that rate, as Locust spawns and stops them."""
    stages: list[Stage] = []
    now = 0.0
    users_now = 0.0
    while now < limit_s:
        shape._now = now
        wanted = shape.tick()
        if wanted is None:
            break
        if not isinstance(wanted, tuple) or len(wanted) < 2:
            raise ScenarioError(
                f"{_line(type(shape))}: tick() returned {wanted!r}; it returns (users, spawn_rate) "
                "or None"
            )
        target, rate = float(wanted[0]), float(wanted[1])
        if target < 0 or rate <= 0 or not math.isfinite(target) or not math.isfinite(rate):
            raise ScenarioError(
                f"{_line(type(shape))}: tick() returned {wanted!r}: users >= 0 and a spawn rate > 0"
            )
        diff = target - users_now
        ramp = min(1.0, abs(diff) / rate)
        after = users_now + max(-rate, min(rate, diff))
        if ramp > 0:
            stages.append(Ramp(from_=users_now, to=after, duration_s=ramp))
        if ramp < 1:
            last = stages[-1] if stages else None
            if isinstance(last, Constant) and last.rate == after:
                stages[-1] = last.model_copy(update={"duration_s": last.duration_s + 1 - ramp})
            else:
                stages.append(Constant(rate=after, duration_s=1 - ramp))
        users_now = after
        now += 1
    if not stages:
        raise ScenarioError(f"{_line(type(shape))}: tick() returned None at once: no load")
    return Profile("closed", tuple(stages))


def value_at(corners: list[tuple[float, float]], t: float) -> float:
    """A profile's value ``t`` seconds in, from its corners (joined by straight lines)."""
    if not corners or t < corners[0][0]:
        return 0.0
    for (t0, v0), (t1, v1) in zip(corners, corners[1:], strict=False):
        if t0 <= t < t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
    return corners[-1][1] if t <= corners[-1][0] else 0.0


def users_over(users_n: int, spawn_rate: float, run_time_s: float) -> Profile:
    """Locust's ``-u``/``-r``/``-t``: users started at ``spawn_rate`` a second up to
    ``users_n``, the whole run lasting ``run_time_s``."""
    ramp = users_n / spawn_rate
    if ramp <= 0 or users_n <= 1 and ramp <= 1:
        return users_profile(users_n, run_time_s)
    if ramp >= run_time_s:
        reached = spawn_rate * run_time_s
        return Profile("closed", (Ramp(from_=0, to=reached, duration_s=run_time_s),))
    return users_profile(users_n, run_time_s, ramp=ramp)


def _wait_kind(cls: type) -> tuple[Any, ...] | None:
    """The wait the engine can keep for this user class (``()``: none), or None when its
    ``wait_time`` is code of the file's own."""
    fn = getattr(cls, "wait_time", None)
    if fn is None:
        return ()
    return getattr(fn, lu.WAIT, None)


def _with_wait(profile: Profile, kind: tuple[Any, ...]) -> Profile:
    if not kind:
        return profile
    if kind[0] == "constant":
        return dataclasses.replace(profile, think_s=kind[1])
    if kind[0] == "between":
        return dataclasses.replace(profile, think_s=kind[1], think_max_s=kind[2])
    return dataclasses.replace(profile, pace_s=kind[1])


def _python_task(fn: Callable[..., Any], why: str | None = None) -> Callable[..., Any]:
    """A Locust task run on LoadPilot's Python path, with Locust's exceptions' meanings
    (``why``: the reason it runs there, when its own code would not say)."""

    @functools.wraps(fn)
    def run(self: Any) -> None:
        try:
            fn(self)
        except (lu.RescheduleTask, lu.RescheduleTaskImmediately):
            pass
        except lu.StopUser:
            self._loadpilot_stop()
            self._lp_client._inner._session.wait_next(1e9)
        except RequestError:
            raise  # the run ended under it
        except Exception as e:
            events.user_error.fire(user_instance=self, exception=e, tb=e.__traceback__)
            raise

    if why is not None:
        run._loadpilot_python = why  # type: ignore[attr-defined]
    return run


def _session_state(cls: type) -> bool:
    """Whether the class's code sets or reads its client's own state (``self.client.headers``
    or ``.auth``, as requests.Session has): then its requests depend on it at run time, and
    no task can be read into the engine once."""
    file, found = _classes(cls)
    if file is None or not found:
        return True
    names = {k.__name__ for k in cls.__mro__}
    return any(
        isinstance(sub, ast.Attribute)
        and sub.attr in ("headers", "auth")
        and ast.unparse(sub.value) == "self.client"
        for node in found
        if node.name in names
        for sub in ast.walk(node)
    )


def _flat(
    cls: type[lu.User], include: set[str] | None, exclude: set[str] | None
) -> dict[str, Any] | None:
    """A user class's tasks as LoadPilot tasks, when each is a plain method (None when it
    has TaskSets)."""
    chosen = lu.filter_tasks(lu._marked(cls), include, exclude)
    body: dict[str, Any] = {}
    stateful = _session_state(cls)
    for fn, weight in chosen:
        if isinstance(fn, type) or not callable(fn):
            return None
        if weight == 0:
            continue
        name = fn.__name__
        if name in body:
            return None
        if stateful:
            why = f"{cls.__name__} uses self.client.headers or .auth, set at run time"
            body[name] = lp_task(_python_task(fn, why), weight=weight)
            continue
        on_engine = _engine_path_reason(fn) is None
        body[name] = lp_task(fn if on_engine else _python_task(fn), weight=weight)
    if not body:
        raise ScenarioError(f"{_line(cls)}: {cls.__name__} has no task (after -T/-E)")
    return body


#: The settings of a user class (``FastHttpUser``'s) that become the run's, by Locust's name:
#: the scenario keyword each sets. Left unset, LoadPilot's defaults hold (docs/locust.md).
_CLASS_SETTINGS = {
    "network_timeout": "timeout",
    "connection_timeout": "connect_timeout",
    "max_redirects": "max_redirects",
}


def _class_settings(users: list[type]) -> dict[str, Any]:
    """The scenario options the user classes set (``network_timeout``, ``connection_timeout``,
    ``max_redirects``, ``insecure``), each held to the plan's rule for it. One run has one of
    each: classes that set different timeouts or redirect limits are refused, with where."""
    options: dict[str, Any] = {}
    for attr, option in _CLASS_SETTINGS.items():
        given = [(c, v) for c in users if (v := getattr(c, attr, None)) is not None]
        if not given:
            continue
        (first, value), *rest = given
        for c, v in rest:
            if v != value:
                raise ScenarioError(
                    f"{_line(c)}: {c.__name__}.{attr} = {v!r}, but {first.__name__}'s is "
                    f"{value!r}: a LoadPilot run has one {attr} for all its user classes"
                )
        try:
            if option != "max_redirects":
                options[option] = parse_duration(value, what=f"{first.__name__}.{attr}")
            elif check_field("max_redirects", value) == 0:
                options["follow_redirects"] = False  # Locust's 0: redirects not followed
            else:
                options[option] = value
        except PlanError as e:
            raise ScenarioError(f"{_line(first)}: {e}") from None
    # Certificates: a FastHttpUser accepts any (Locust's default, `insecure = True`), an
    # HttpUser checks them (requests' `verify=True`); the run accepts any only if every class
    # does, so a class that checks is never run unchecked.
    if all(getattr(c, "insecure", False) is True for c in users):
        options["insecure"] = True
    return options


def to_scenario(
    lf: Locustfile,
    profile: Profile | None,
    *,
    include: set[str] | None = None,
    exclude: set[str] | None = None,
    env: environment.Environment,
    scenario_options: dict[str, Any] | None = None,
) -> Scenario:
    """The locustfile as one scenario. ``profile``: an open model (``--rps``), or the closed
    one of ``-u``/``-r``/``-t`` or the file's shape, whose think time each user's
    ``wait_time`` sets."""
    options = {**_class_settings(list(lf.users)), **(scenario_options or {})}
    origin = {
        "locustfile": str(lf.path.resolve()),
        "classes": [c.__name__ for c in lf.users],
        "tags": sorted(include) if include else None,
        "exclude": sorted(exclude) if exclude else None,
    }
    for cls in lf.users:
        cls._loadpilot_filter = (include, exclude)
        for klass in _tasksets(cls):
            klass._loadpilot_filter = (include, exclude)  # type: ignore[attr-defined]
    env.user_classes = list(lf.users)
    environment.set_current(env)
    assert profile is not None
    only = lf.users[0] if len(lf.users) == 1 else None
    wait = _wait_kind(only) if only is not None else None
    flat = _flat(only, include, exclude) if only is not None and wait is not None else None
    if flat is not None and not events.request.has_listeners() and only is not None:
        cls = only
        if profile.model == "closed":
            profile = _with_wait(profile, wait or ())
        body = dict(flat)
        if cls.on_start is not lu.User.on_start:
            body["on_start"] = cls.on_start
        stop = cls.on_stop

        def on_stop(self: Any) -> None:
            if not self._stopped:
                self._stopped = True
                stop(self)

        body["on_stop"] = on_stop
        body["_client_keywords"] = clients.KEYWORDS

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
            # Each virtual user is made without arguments; a user class may take Locust's
            # environment in an __init__ of its own.
            cls.__init__(self, *(args or (env,)), **kwargs)

        body["__init__"] = __init__
        made = type(cls.__name__, (cls,), body)
        made.__module__ = cls.__module__
        read = scenario(profile=profile, name=cls.__name__, **options)(made).describe()
        return dataclasses.replace(read, origin=origin)
    if len(lf.users) > 1:
        why = f"{len(lf.users)} user classes, each user one of them"
    elif wait is None:
        why = f"{only.__name__}.wait_time is the file's own code"  # type: ignore[union-attr]
    elif flat is None:
        why = f"{only.__name__} has TaskSets"  # type: ignore[union-attr]
    else:
        why = "a request listener sees every request"
    made_driver = scenario(profile=profile, name=_driver_name(lf), **options)(
        _driver(lf.users, env)
    ).describe()
    return dataclasses.replace(
        made_driver, reason=f"each user runs in Python: {why}", origin=origin
    )


def read_again(file: Path, plan: Plan, origin: Mapping[str, Any]) -> Scenario:
    """A locustfile read on an agent as its coordinator read it (its user classes and tags),
    for the plan the coordinator sent."""
    lf = read(file, list(origin.get("classes") or []))
    profile = Profile.of_load(plan.load)
    tags, exclude = origin.get("tags"), origin.get("exclude")
    env = environment.Environment(host=plan.target)
    return to_scenario(
        lf,
        profile,
        include=set(tags) if tags else None,
        exclude=set(exclude) if exclude else None,
        env=env,
    )


def _tasksets(cls: type) -> Iterator[type]:
    for t, _w in lu._marked(cls):
        if isinstance(t, type) and issubclass(t, lu.TaskSet):
            yield t
            yield from _tasksets(t)


def _driver_name(lf: Locustfile) -> str:
    return lf.users[0].__name__ if len(lf.users) == 1 else "users"


def _driver(classes: list[type[lu.User]], env: environment.Environment) -> type[VUser]:
    """Runs each virtual user as one of ``classes`` (by their ``weight``, in turn), one Locust
    task per iteration; the engine waits what the user's ``wait_time`` says between them."""
    # As Locust spreads users: a class's fixed_count users first, then the others in turn
    # by weight.
    fixed = [c for c in classes if int(getattr(c, "fixed_count", 0) or 0) > 0]
    first = [c for c in fixed for _ in range(int(c.fixed_count))]
    shared = [c for c in classes if c not in fixed]
    turns: list[type[lu.User]] = []
    weights = [max(0, int(getattr(c, "weight", 1))) for c in shared]
    unit = math.gcd(*weights) or 1
    for c, w in zip(shared, weights, strict=True):
        turns.extend([c] * (w // unit))
    if not turns and not first:
        raise ScenarioError("every user class has weight 0")
    counter = itertools.count()

    def pick(n: int) -> type[lu.User]:
        if n < len(first):
            return first[n]
        return turns[(n - len(first)) % len(turns)] if turns else first[n % len(first)]

    def on_start(self: Any) -> None:
        cls = pick(next(counter))
        user = cls(env)
        user.client = self.client
        self.user = user
        user.on_start()

    def step(self: Any) -> None:
        wait = self.user._loadpilot_step()
        self.client._session.wait_next(1e9 if wait is None else wait)

    def on_stop(self: Any) -> None:
        user = getattr(self, "user", None)
        if user is not None and not user._stopped:
            user._loadpilot_stop()

    name = classes[0].__name__ if len(classes) == 1 else "users"
    step.__name__ = step.__qualname__ = name
    body = {name: lp_task(step), "on_start": on_start, "on_stop": on_stop}
    return type(f"Locust{name}", (VUser,), body)


__all__ = [
    "Locustfile",
    "aliased",
    "is_locustfile",
    "read",
    "shape_profile",
    "to_scenario",
    "users_over",
]


def load_locustfile(
    path: str | Path,
    *,
    users: int = 1,
    spawn_rate: float = 1.0,
    run_time: Duration | None = None,
    rps: float | None = None,
    classes: list[str] | None = None,
    tags: list[str] | None = None,
    exclude_tags: list[str] | None = None,
) -> Scenario:
    """A locustfile as a scenario, as ``loadpilot locust`` would run it: ``users`` started at
    ``spawn_rate`` a second for ``run_time`` (or the file's ``LoadTestShape``), or its tasks at
    ``rps`` iterations a second (an open model). Run it with
    ``lp.run(scenario, target="http://...")``."""
    lf = read(path, classes)
    seconds = None if run_time is None else parse_duration(run_time, what="run_time")
    if rps is not None:
        if seconds is None:
            raise ScenarioError("rps needs a run_time")
        profile = open_rate(rps, seconds)
    elif lf.shape is not None:
        profile = shape_profile(lf.shape, seconds or 86_400.0)
    else:
        if seconds is None:
            raise ScenarioError(f"{path}: give a run_time (a LoadPilot run is bounded)")
        profile = users_over(users, spawn_rate, seconds)
    return to_scenario(
        lf,
        profile,
        include=set(tags) if tags else None,
        exclude=set(exclude_tags) if exclude_tags else None,
        env=environment.Environment(),
    )
