"""``run_single_user`` (``locust.debug``): one user of a class, every request printed.

Under ``loadpilot locust`` a locustfile's ``if __name__ == "__main__": run_single_user(...)``
block does not run (the file is read as a module), so a file that has one loads as any other.
Called (from a notebook, or a script of LoadPilot's own imports), it runs the class as one
LoadPilot user for a bounded time and prints each request as Locust's ``PrintListener`` does.
"""

from __future__ import annotations

import datetime
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadpilot.errors import ScenarioError
from loadpilot.locust import environment
from loadpilot.locust.events import events
from loadpilot.locust.reading import Locustfile, to_scenario, users_over
from loadpilot.locust.users import HttpUser
from loadpilot.profiles import Duration, parse_duration

if TYPE_CHECKING:
    from loadpilot.running.runs import Run


class PrintListener:
    """Prints every request a user sends (type, name, response time in ms, its error), with
    its length, start time and context when asked: Locust's columns."""

    def __init__(
        self,
        include_length: bool = False,
        include_time: bool = False,
        include_context: bool = False,
    ) -> None:
        self.include_length = include_length
        self.include_time = include_time
        self.include_context = include_context
        heads = [
            "time                    " if include_time else None,
            "type",
            "name".ljust(50),
            "resp_ms",
            "length" if include_length else None,
            "exception",
            "context" if include_context else None,
        ]
        print("\n" + "\t".join(h for h in heads if h is not None), flush=True)

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: float | None,
        response_length: int,
        exception: BaseException | None,
        context: Any = None,
        start_time: float | None = None,
        **_kwargs: Any,
    ) -> None:
        error = "" if exception is None else repr(exception)
        cells = []
        if self.include_time:
            at = start_time if start_time else datetime.datetime.now().timestamp()
            cells.append(str(datetime.datetime.fromtimestamp(at, tz=datetime.UTC)))
        cells += [
            request_type,
            (name or "").ljust(50),
            str(round(-1 if response_time is None else response_time)).ljust(7),
        ]
        if self.include_length:
            cells.append(str(response_length))
        cells.append(error[:500].replace("\n", " ").ljust(9))
        if self.include_context:
            cells.append(str(context or ""))
        print("\t".join(cells), flush=True)


def _host_argument() -> str | None:
    """``-H URL`` or ``--host URL`` (or ``--host=URL``) on the command line, as Locust's
    ``run_single_user`` reads it."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg in ("-H", "--host") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--host="):
            return arg.removeprefix("--host=")
    return None


def run_single_user(
    user_class: type[HttpUser],
    include_length: bool = False,
    include_time: bool = False,
    include_context: bool = False,
    include_payload: bool = False,
    loglevel: str | None = "WARNING",
    *,
    host: str | None = None,
    run_time: Duration = "1m",
    out: str | Path | None = None,
) -> Run:
    """Runs one user of ``user_class`` for ``run_time`` (Locust's runs until it is stopped; a
    LoadPilot run is bounded, and Ctrl-C ends it sooner), printing every request. The host:
    ``host``, else ``-H``/``--host`` on the command line, else the class's ``host``. The
    ``init`` and ``test_start`` listeners are called first (``test_stop`` and ``quit`` are not,
    as under Locust). ``include_payload`` and ``loglevel`` are accepted and change nothing.
    The run directory is ``out`` (a new temporary one by default); the :class:`Run` is
    returned."""
    from loadpilot.launch import run

    if not (isinstance(user_class, type) and issubclass(user_class, HttpUser)):
        raise ScenarioError(
            f"run_single_user({user_class!r}): give a user class (a subclass of HttpUser)"
        )
    target = host or _host_argument() or user_class.host
    if not target:
        raise ScenarioError(
            f"run_single_user({user_class.__name__}): give a host (host=, -H on the command "
            f"line, or {user_class.__name__}.host)"
        )
    seconds = parse_duration(run_time, what="run_time")
    module = sys.modules.get(user_class.__module__)
    file = Path(getattr(module, "__file__", None) or f"<{user_class.__module__}>")
    env = environment.Environment(host=target)
    printer = PrintListener(include_length, include_time, include_context)
    events.request.add_listener(printer.on_request)
    try:
        events.init.fire(environment=env, runner=None, web_ui=None)
        events.test_start.fire(environment=env)
        scenario = to_scenario(
            Locustfile(file, [user_class], None), users_over(1, 1.0, seconds), env=env
        )
        where = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="loadpilot-"))
        return run(scenario, where, target=target)
    finally:
        events.request.remove_listener(printer.on_request)


__all__ = ["PrintListener", "run_single_user"]
