"""Locust's user classes, tasks and wait times, run by LoadPilot.

A locustfile's ``from locust import ...`` resolves to these names while LoadPilot reads and runs
it. A user's tasks are chosen and run as Locust does (a weighted random choice; a TaskSet is
entered and runs its own tasks until ``interrupt()``; a SequentialTaskSet in order); the engine
keeps the time, counts every request and waits the user's ``wait_time`` between tasks as think
time. Each user's tasks run as a greenlet on the Python users' thread (see
:mod:`loadpilot.running.vusers`), so a request or ``time.sleep`` pauses that user only, as under
Locust.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from loadpilot.errors import RequestError, ScenarioError
from loadpilot.locust.clients import HttpSession, RestSession
from loadpilot.locust.events import events
from loadpilot.scenarios.scenario import VUser

F = TypeVar("F", bound=Callable[..., Any])

#: Where Locust's decorators leave their marks (Locust's own attribute names).
WEIGHT = "locust_task_weight"
TAGS = "locust_tag_set"


# -- exceptions (locust.exception) --------------------------------------------------------


class LocustError(Exception):
    pass


class StopUser(Exception):  # noqa: N818 - Locust's name
    """Raised in a task: this user stops (its ``on_stop`` runs) for the rest of the run."""


class InterruptTaskSet(Exception):  # noqa: N818 - Locust's name
    """Raised in a TaskSet's task: back to the parent (``TaskSet.interrupt()``)."""

    def __init__(self, reschedule: bool = True) -> None:
        super().__init__()
        self.reschedule = reschedule


class RescheduleTask(Exception):  # noqa: N818 - Locust's name
    """Raised in a task: it ends here; the user waits and picks its next task."""


class RescheduleTaskImmediately(Exception):  # noqa: N818 - Locust's name
    """Raised in a task: it ends here; the user picks its next task without waiting."""


class CatchResponseError(Exception):
    pass


class ResponseError(Exception):
    pass


# -- decorators ---------------------------------------------------------------------------


def task(weight: Any = 1) -> Any:
    """``@task`` or ``@task(weight)``: a method (or TaskSet class) is a task of its user."""

    def mark(f: F) -> F:
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise ScenarioError(
                f"@task({weight!r}) on {getattr(f, '__qualname__', f)}: a weight "
                "is a whole number >= 0"
            )
        setattr(f, WEIGHT, weight)
        return f

    if callable(weight):  # bare @task
        f, weight = weight, 1
        return mark(f)
    return mark


def tag(*tags: str) -> Callable[[F], F]:
    """``@tag("a", "b")``: the task (or TaskSet) carries these tags, chosen with ``-T``/``-E``."""
    for t in tags:
        if not isinstance(t, str):
            raise ScenarioError(f"@tag({t!r}): tags are text")

    def mark(f: F) -> F:
        setattr(f, TAGS, getattr(f, TAGS, set()) | set(tags))
        return f

    return mark


# -- wait times (locust.user.wait_time) ---------------------------------------------------

#: The mark a wait time carries, so the engine can wait it: ("constant", s),
#: ("between", least, most) or ("pacing", s).
WAIT = "_loadpilot_wait"


def _wait(fn: Callable[[Any], float], kind: tuple[Any, ...]) -> Callable[[Any], float]:
    setattr(fn, WAIT, kind)
    return fn


def constant(wait_time: float) -> Callable[[Any], float]:
    """Waits ``wait_time`` seconds after each task."""
    return _wait(lambda _user: float(wait_time), ("constant", float(wait_time)))


def between(min_wait: float, max_wait: float) -> Callable[[Any], float]:
    """Waits a time drawn uniformly from ``min_wait`` to ``max_wait`` seconds after each task."""
    return _wait(
        lambda _user: min_wait + random.random() * (max_wait - min_wait),
        ("between", float(min_wait), float(max_wait)),
    )


def constant_pacing(wait_time: float) -> Callable[[Any], float]:
    """Starts a task every ``wait_time`` seconds: waits what the task left of it."""

    def wait(user: Any) -> float:
        began = getattr(user, "_loadpilot_task_began", None)
        took = 0.0 if began is None else time.monotonic() - began
        return max(0.0, wait_time - took)

    return _wait(wait, ("pacing", float(wait_time)))


def constant_throughput(task_runs_per_second: float) -> Callable[[Any], float]:
    """At most ``task_runs_per_second`` tasks a second per user: ``constant_pacing(1/x)``."""
    return constant_pacing(1 / task_runs_per_second)


# -- tasks ---------------------------------------------------------------------------------


def _marked(cls: type) -> list[tuple[Any, int]]:
    """The tasks a class declares, as Locust collects them: from its base classes first, then
    its own ``tasks`` (a list of tasks or ``(task, weight)`` pairs, or a mapping to weights),
    then its ``@task`` methods and TaskSets in the order they are written."""
    found: list[tuple[Any, int]] = []
    for klass in reversed(cls.__mro__):
        own = vars(klass)
        given = own.get("tasks")
        if given:
            items = given.items() if isinstance(given, Mapping) else given
            for item in items:
                if isinstance(item, tuple):
                    found.append((item[0], int(item[1])))
                else:
                    found.append((item, 1))
        for value in own.values():
            if getattr(value, WEIGHT, None) is not None:
                found.append((value, getattr(value, WEIGHT)))
    return found


def _tags_of(t: Any) -> set[str]:
    return set(getattr(t, TAGS, set()))


def filter_tasks(
    tasks: list[tuple[Any, int]],
    include: set[str] | None,
    exclude: set[str] | None,
    inherited: set[str] | None = None,
) -> list[tuple[Any, int]]:
    """Locust's ``-T``/``-E``: with ``include``, the tasks tagged with one of them (a tagged
    TaskSet brings all its tasks); ``exclude`` removes tasks tagged with one of them."""
    out = []
    for t, w in tasks:
        tags = _tags_of(t) | (inherited or set())
        if exclude and tags & exclude:
            continue
        if isinstance(t, type) and issubclass(t, TaskSet):
            if include and not (tags & include) and not _any_tagged(t, include):
                continue
            out.append((t, w))
            continue
        if include and not (tags & include):
            continue
        out.append((t, w))
    return out


def _any_tagged(cls: type, include: set[str]) -> bool:
    for t, _w in _marked(cls):
        if _tags_of(t) & include:
            return True
        if isinstance(t, type) and issubclass(t, TaskSet) and _any_tagged(t, include):
            return True
    return False


class _Chooser:
    """Picks a class's next task as Locust does: random by weight, or in order."""

    def __init__(self, owner: Any, tasks: list[tuple[Any, int]], in_order: bool) -> None:
        self._owner = owner
        self._tasks = [t for t, w in tasks for _ in range(w)]
        self._in_order = in_order
        self._next = 0

    def pick(self) -> Any:
        if not self._tasks:
            raise LocustError(f"{type(self._owner).__name__} has no tasks")
        if self._in_order:
            t = self._tasks[self._next % len(self._tasks)]
            self._next += 1
            return t
        return random.choice(self._tasks)


class TaskSet:
    """Tasks that run together: once chosen, its own tasks run (with its ``wait_time``, else
    its user's) until one calls ``self.interrupt()``."""

    tasks: Any = []
    wait_time: Callable[[Any], float] | None = None
    #: Tags and filters, set when the locustfile is read (``-T``/``-E``).
    _loadpilot_filter: tuple[set[str] | None, set[str] | None] = (None, None)

    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.user: Any = parent if isinstance(parent, User) else parent.user
        include, exclude = self._loadpilot_filter
        mine = filter_tasks(_marked(type(self)), include, exclude, _tags_of(type(self)))
        self._chooser = _Chooser(self, mine, isinstance(self, SequentialTaskSet))

    @property
    def client(self) -> Any:
        return self.user.client

    @property
    def environment(self) -> Any:
        return self.user.environment

    def on_start(self) -> None:
        pass

    def on_stop(self) -> None:
        pass

    def interrupt(self, reschedule: bool = True) -> None:
        """Back to the parent: it picks its next task (after waiting, if not ``reschedule``)."""
        raise InterruptTaskSet(reschedule)

    def wait_time_for_next(self) -> float:
        if type(self).wait_time is not None:
            return float(type(self).wait_time(self))  # type: ignore[misc]
        return float(self.parent.wait_time_for_next())


class SequentialTaskSet(TaskSet):
    """A TaskSet whose tasks run in the order they are written (then again from the first)."""


# -- Markov chains (locust.user.markov_taskset) ---------------------------------------------


class NoMarkovTasksError(LocustError):
    """A MarkovTaskSet with no method marked ``@transition``/``@transitions``."""


class InvalidTransitionError(LocustError):
    """A transition to a name the MarkovTaskSet does not have."""


class NonMarkovTaskTransitionError(LocustError):
    """A transition to a method with no transitions of its own."""


class MarkovTaskTagError(LocustError):
    """A Markov task with ``@tag``: tags could cut the chain."""


#: Where ``@transition(s)`` leave the transitions (Locust's attribute name).
TRANSITIONS = "transitions"


def transition(func_name: str, weight: int = 1) -> Callable[[F], F]:
    """``@transition("other", weight=1)``: after this task, the MarkovTaskSet goes on to
    ``other`` with this weight (among the task's transitions)."""
    return transitions({func_name: weight})


def transitions(weights: Mapping[str, int] | Sequence[tuple[str, int] | str]) -> Callable[[F], F]:
    """``@transitions({"a": 2, "b": 1})`` or ``@transitions([("a", 2), "b"])``: several
    transitions at once (a bare name has weight 1)."""
    pairs = (
        dict(weights)
        if isinstance(weights, Mapping)
        else dict(w if isinstance(w, tuple) else (w, 1) for w in weights)
    )

    def mark(f: F) -> F:
        vars(f).setdefault(TRANSITIONS, {}).update(pairs)
        return f

    return mark


def _markov_chain(cls: type) -> tuple[str, dict[str, list[str]]]:
    """The first task of a MarkovTaskSet and, for each task, the names it goes on to (each as
    many times as its weight); refused as Locust refuses it, when the class is made."""
    name = cls.__name__
    tasks = [f for f in vars(cls).values() if callable(f) and hasattr(f, TRANSITIONS)]
    if not tasks:
        raise NoMarkovTasksError(
            f"No Markov tasks defined in class {name}. Use the @transition(s) decorators to "
            "define some."
        )
    chain: dict[str, list[str]] = {}
    for f in tasks:
        if f.__name__ == "run":
            raise LocustError(f"{name}.run: a Markov task may not be called run")
        if hasattr(f, TAGS):
            raise MarkovTaskTagError(
                "Tags are unsupported for MarkovTaskSet since they can make the markov chain "
                f"invalid. Tags detected on {name}.{f.__name__}: {getattr(f, TAGS)}"
            )
        for dest, weight in getattr(f, TRANSITIONS).items():
            target = vars(cls).get(dest)
            if target is None:
                raise InvalidTransitionError(
                    f"Transition to {dest} from {f.__name__} is invalid since no such element "
                    f"exists on class {name}"
                )
            if not hasattr(target, TRANSITIONS):
                raise NonMarkovTaskTransitionError(
                    f"{name}.{dest} cannot be used as a target for a transition since it does "
                    f"not define any transitions of its own. Used as a transition from "
                    f"{f.__name__}."
                )
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise LocustError(
                    f"{name}.{f.__name__}: transition to {dest} has weight {weight!r}; a weight "
                    "is a whole number >= 0"
                )
        chain[f.__name__] = [d for d, w in getattr(f, TRANSITIONS).items() for _ in range(w)]
        if not chain[f.__name__]:
            raise InvalidTransitionError(f"{name}.{f.__name__}: every transition has weight 0")
    return tasks[0].__name__, chain


class _MarkovChooser:
    """A MarkovTaskSet's next task: the one it is at, then a transition drawn by weight."""

    def __init__(self, owner: MarkovTaskSet) -> None:
        self._cls = type(owner)
        self._at = self._cls._markov_first

    def pick(self) -> Any:
        at = self._at
        self._at = random.choice(self._cls._markov_chain[at])
        return vars(self._cls)[at]


class MarkovTaskSet(TaskSet):
    """A TaskSet whose tasks follow a Markov chain: it starts at its first task marked
    ``@transition``/``@transitions``; after each task it goes on to one of that task's
    transitions, drawn by weight. The chain is checked when the class is made (as Locust
    checks it)."""

    abstract = True
    _markov_first: str
    _markov_chain: dict[str, list[str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not vars(cls).get("abstract", False):
            cls._markov_first, cls._markov_chain = _markov_chain(cls)

    def __init__(self, parent: Any) -> None:
        super().__init__(parent)
        self._chooser = _MarkovChooser(self)  # type: ignore[assignment]


class User(VUser):
    """Locust's ``User``. LoadPilot runs HTTP users (:class:`HttpUser`, :class:`FastHttpUser`)."""

    abstract = True
    host: str | None = None
    weight: int = 1
    fixed_count: int = 0
    tasks: Any = []
    wait_time: Callable[[Any], float] | None = None
    _loadpilot_filter: tuple[set[str] | None, set[str] | None] = (None, None)

    def __init__(self, environment: Any = None) -> None:
        from loadpilot.locust.environment import current

        self.environment = environment if environment is not None else current()
        self._lp_client: Any = None
        self._stack: list[Any] = []
        self._stopped = False

    def on_start(self) -> None:
        pass

    def on_stop(self) -> None:
        pass

    def wait_time_for_next(self) -> float:
        fn = type(self).wait_time
        return 0.0 if fn is None else float(fn(self))

    # -- one step of the user, as LoadPilot's Python path runs it -------------------------

    def _loadpilot_step(self) -> float | None:
        """Runs the user's next task (entering TaskSets as Locust does); the wait before the
        one after, or None once the user has stopped."""
        if self._stopped:
            return None
        if not hasattr(self, "_chooser"):
            include, exclude = self._loadpilot_filter
            self._chooser = _Chooser(
                self, filter_tasks(_marked(type(self)), include, exclude), False
            )
        self._loadpilot_task_began = time.monotonic()
        while True:
            owner: Any = self._stack[-1] if self._stack else self
            chosen = owner._chooser.pick()
            if isinstance(chosen, type) and issubclass(chosen, TaskSet):
                child = chosen(owner)
                self._stack.append(child)
                child.on_start()
                continue
            try:
                chosen(owner)
            except InterruptTaskSet as e:
                if not self._stack:
                    raise LocustError("interrupt() outside a TaskSet") from None
                left = self._stack.pop()
                left.on_stop()
                return 0.0 if e.reschedule else float(owner.parent.wait_time_for_next())
            except RescheduleTaskImmediately:
                return 0.0
            except RescheduleTask:
                pass
            except StopUser:
                self._loadpilot_stop()
                return None
            except RequestError:
                raise  # the run ended under it
            except Exception as e:
                events.user_error.fire(user_instance=self, exception=e, tb=e.__traceback__)
                raise
            return float(owner.wait_time_for_next())

    def _loadpilot_stop(self) -> None:
        """Stops the user as Locust does: its TaskSets' ``on_stop`` (innermost first), then
        its own."""
        self._stopped = True
        while self._stack:
            self._stack.pop().on_stop()
        self.on_stop()


class HttpUser(User):
    """A user with an HTTP client (``self.client``, requests' API), sent through the engine,
    and Locust's ``rest()`` and ``rest_()``."""

    abstract = True

    @property
    def client(self) -> Any:
        return self._lp_client

    @client.setter
    def client(self, inner: Any) -> None:
        # LoadPilot gives the user its engine client; Locust's API is a view of it.
        if inner is None or isinstance(inner, HttpSession):
            self._lp_client = inner
            return
        session = self._session_type(inner, self)
        session.headers.update(getattr(self, "default_headers", None) or {})
        self._lp_client = session

    _session_type: type[HttpSession] = HttpSession

    def rest(self, method: str, url: str, **kwargs: Any) -> Any:
        """A JSON request checked in a ``with`` block (see :meth:`HttpSession.rest`)."""
        return self.client.rest(method, url, **kwargs)

    def rest_(self, method: str, url: str, **kwargs: Any) -> Any:
        """``rest()`` with a cache-busting ``_=<ms>`` query (see :meth:`HttpSession.rest_`)."""
        return self.client.rest_(method, url, **kwargs)


class FastHttpUser(HttpUser):
    """Locust's ``FastHttpUser``: the same client. Its settings ``network_timeout``,
    ``connection_timeout``, ``max_redirects`` and ``insecure`` become the run's;
    ``default_headers`` go with each of its requests (a request's own header wins)."""

    abstract = True
    _session_type = RestSession
    #: Locust's default: any certificate is accepted (set ``insecure = False`` to check them).
    insecure = True
    #: Headers sent with every request of the user (Locust's ``FastHttpUser.default_headers``).
    default_headers: Mapping[str, str] | None = None


class LoadTestShape:
    """Users and spawn rate over time: ``tick()`` returns ``(users, spawn_rate)``, or None to
    stop. LoadPilot reads the shape before the run (its ``tick()`` at each second of a clock
    of its own), so the profile is known and drawn ahead."""

    abstract = True

    def __init__(self) -> None:
        self._now = 0.0
        self.runner: Any = None

    def reset_time(self) -> None:
        self._now = 0.0

    def get_run_time(self) -> float:
        return self._now

    def get_current_user_count(self) -> int:
        return 0

    def tick(self) -> tuple[int, float] | tuple[int, float, Any] | None:
        raise NotImplementedError
