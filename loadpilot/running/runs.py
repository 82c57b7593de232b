"""Run handles: a live run in this process, and a run directory loaded from disk, with one API."""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import polars as pl
from pydantic import ValidationError

from loadpilot import _engine
from loadpilot import validity as _validity
from loadpilot.errors import RunDirError
from loadpilot.plan import Plan, describe
from loadpilot.running import store as _store
from loadpilot.summary import Summary, Validity

if TYPE_CHECKING:
    from loadpilot.notebook.live import Dashboard
    from loadpilot.thresholds import Threshold, Verdict

Histogram = _engine.Histogram

#: The columns of ``Run.agents``.
AGENT_SCHEMA: dict[str, pl.DataType] = {
    "name": pl.String(),
    "state": pl.String(),
    "clock_offset_ms": pl.Float64(),
    "rtt_ms": pl.Float64(),
    "last_seen_s": pl.Float64(),
    "requests": pl.Int64(),
}


class RunResult:
    """What live and loaded runs (and foreign interval logs) have in common."""

    path: Path
    _plan: Plan
    #: The thresholds of the scenario it ran (``verdicts()``, ``report()``).
    _thresholds: tuple[Threshold, ...] = ()
    #: The unit the histograms' values are in (LoadPilot's own: microseconds).
    unit: str = "us"
    #: Whether service time was recorded beside corrected latency (foreign logs: no).
    has_service: bool = True

    @property
    def plan(self) -> Plan:
        """The plan the run ran."""
        return self._plan

    @property
    def tasks(self) -> list[str]:
        """The names histograms and rows are kept under (a log's tags)."""
        return [t.name for t in self.plan.tasks]

    @property
    def requests(self) -> list[tuple[str, str]]:
        """The request names measured, as ``(task, name)``, in the order first seen."""
        rows = self.request_metrics.select("task", "request")
        return [(t, r) for t, r in rows.unique(maintain_order=True).iter_rows()]

    @property
    def metrics(self) -> pl.DataFrame:
        """One row per (interval, task): each counts all of its task's requests (``request``
        is null). Per request name: :attr:`request_metrics`."""
        return _store.task_rows(self._rows)

    @property
    def request_metrics(self) -> pl.DataFrame:
        """One row per (interval, task, request name), the name in ``request``; the same
        columns as :attr:`metrics` (the task's load and gauges are on the task's rows)."""
        return _store.request_rows(self._rows)

    @property
    def _rows(self) -> pl.DataFrame:
        """Every interval row as the run wrote it: tasks' and request names'."""
        raise NotImplementedError

    def summary(self) -> Summary:
        raise NotImplementedError

    def histogram(
        self,
        task: str | Sequence[str] | None = None,
        *,
        request: str | None = None,
        service: bool = False,
        start: float | None = None,
        end: float | None = None,
    ) -> _engine.Histogram:
        """The latency histogram (corrected, or service time with ``service=True``) of one task,
        a list of tasks, or all of them added up; with ``request``, of that request name (in
        the chosen tasks, or in every task that sends it); of the whole run, or of the
        intervals that start in ``[start, end)`` seconds into it. Percentiles of any window and
        any subset come out exact this way, never by averaging percentiles."""
        total = _engine.Histogram(self.unit)
        for _, h in self.interval_histograms(
            task, request=request, service=service, start=start, end=end
        ):
            total.add(h)
        return total

    def interval_histograms(
        self,
        task: str | Sequence[str] | None = None,
        *,
        request: str | None = None,
        service: bool = False,
        start: float | None = None,
        end: float | None = None,
    ) -> list[tuple[float, _engine.Histogram]]:
        """Per-interval histograms from the ``.hlog`` as ``(elapsed_s, histogram)``, the chosen
        tasks added up (all of them unless ``task`` names one or a list), or the request name
        ``request`` of those tasks, for the intervals that start in ``[start, end)`` seconds
        into the run: add any of them for exact percentiles of that window."""
        wanted = _task_set(self, task)
        if request is not None and not any(r == request for _, r in self.requests):
            names = sorted({r for _, r in self.requests})
            raise KeyError(f"no request named {request!r}; requests: {names}")
        by_start: dict[float, _engine.Histogram] = {}
        for tag, t0, h in self._logged(service, requests=request is not None):
            of_task, of_request = _store.split_tag(tag) if request is not None else (tag, None)
            if of_request != request:
                continue
            if wanted is not None and of_task not in wanted:
                continue
            if (start is not None and t0 < start) or (end is not None and t0 >= end):
                continue
            # One histogram at an instant stays as it was written (a foreign log's figures are
            # its file's); several (tasks) are added into a new one, never into a kept one.
            seen = by_start.get(t0)
            by_start[t0] = h if seen is None else seen + h
        return sorted(by_start.items())

    def _logged(
        self, service: bool, requests: bool = False
    ) -> list[tuple[str | None, float, _engine.Histogram]]:
        """Every interval histogram of the run's log as ``(tag, elapsed_s, histogram)``: the
        tasks' log, or with ``requests`` the request names' (tags ``task|name``)."""
        name = {
            (False, False): _store.LATENCY_LOG,
            (True, False): _store.SERVICE_LOG,
            (False, True): _store.REQUESTS_LATENCY_LOG,
            (True, True): _store.REQUESTS_SERVICE_LOG,
        }[(service, requests)]
        log = self.path / name
        if not log.exists():
            return []
        return [(tag, t0, h) for tag, t0, _length, h in _engine.read_hlog(log)]

    def slowest(
        self,
        task: str | Sequence[str] | None = None,
        request: str | None = None,
        above: str | float | None = "p99.9",
        *,
        sample: bool = False,
    ) -> pl.DataFrame:
        """The slowest requests, slowest first, with their context: when each was due, sent
        (``wait_ms`` between: the generator's own delay, connecting included) and ended, its
        latency and service time, status or error, the URL as sent, its trace id, user,
        iteration, feeder row, connection (``new_connection``: opened for it) and agent. Each
        request name keeps its ``plan.keep_slowest`` slowest of every second, so the tail of
        the histogram is all here whatever the rate, up to that many a second.

        ``task``/``request`` choose (as :meth:`histogram`); ``above`` keeps those at or above
        a percentile of their own task's latency (``"p99.9"``, ``"p99"``; at the histogram's
        precision, so the request at the percentile is among them), those slower than a
        latency in milliseconds (``250``), or every kept one (``None``). ``sample=True``:
        the uniform sample kept beside them instead (``plan.keep_sample`` a second per
        name), what an ordinary request looked like; ``above`` then applies as given
        (default: none)."""
        kept = _store.read_slow(self.path)
        kept = kept.filter(pl.col("kind") == ("sample" if sample else "slowest"))
        wanted = _task_set(self, task)
        if wanted is not None:
            kept = kept.filter(pl.col("task").is_in(sorted(wanted)))
        if request is not None:
            kept = kept.filter(pl.col("request") == request)
        if sample and above == "p99.9":
            above = None
        if isinstance(above, str):
            q = _percentile_of(above)
            tasks = kept["task"].unique().to_list()
            limits = {t: _bucket_floor_ms(self.histogram(t).percentile(q)) for t in tasks}
            kept = kept.filter(
                pl.col("latency_ms") >= pl.col("task").replace_strict(limits, default=None)
            )
        elif above is not None:
            kept = kept.filter(pl.col("latency_ms") > float(above))
        return kept.sort(["latency_ms", "end"], descending=[True, False]).drop("kind")

    def report(self, path: str | Path, thresholds: Sequence[Threshold] | None = None) -> Path:
        """Writes this run's self-contained HTML report (see :func:`loadpilot.report`), with
        the verdicts of ``thresholds`` (default: its scenario's)."""
        from loadpilot.analysis.reporting import report

        return report(self, path, self._thresholds if thresholds is None else thresholds)

    def verdicts(self, thresholds: Mapping[str, str] | None = None) -> list[Verdict]:
        """Each threshold judged on the run's figures, as ``loadpilot run`` judges them: those
        given here (``{"p99": "< 50ms", "item.p99": "< 20ms"}``, written as
        ``@lp.scenario(thresholds=...)`` takes them), or else the scenario's own (a run started
        from a plan or loaded from disk has none). ``str(v)`` reads ``pass  p99 < 50ms
        (actual 6.910 ms)``; ``v.passed`` and ``v.actual`` give the same in figures. A run still
        going is judged on its figures so far."""
        from loadpilot import thresholds as checks

        judged = (
            list(self._thresholds)
            if thresholds is None
            else checks.parse_all(dict(thresholds), self.tasks)
        )
        return checks.evaluate(self.summary_so_far(), judged)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.plan.name!r} at {str(self.path)!r}>"

    def _state(self) -> str:
        return "finished"

    def _repr_html_(self) -> str:
        """A compact summary in a notebook: state, target, then the figures per task."""
        s = self.summary() if self._state() != "running" else self.summary_so_far()
        return (
            f"<div><strong>{html.escape(self.plan.name)}</strong> · {html.escape(self._state())}"
            f" ({html.escape(s.ended)}) · {s.duration_s:,.1f} s of {s.planned_duration_s:,.1f}"
            f" s · {html.escape(s.model)} model · target {html.escape(self.plan.target)} · "
            f"<code>{html.escape(str(self.path))}</code></div>" + s.html()
        )

    def summary_so_far(self) -> Summary:
        return self.summary()


class _Handle(Protocol):
    """What a Run drives: the engine's own run, or a distributed run's coordinator."""

    @property
    def done(self) -> bool: ...
    @property
    def path(self) -> str | Path: ...
    def take_rows(self) -> bytes: ...
    def wait(self, timeout_s: float | None = None) -> bool: ...
    def stop(self, reason: str = "stopped") -> None: ...
    def summary_json(self) -> str | None: ...
    def summary_so_far_json(self) -> str: ...
    def failure(self) -> str | None: ...
    def histogram(
        self, task: str | None = None, service: bool = False, request: str | None = None
    ) -> _engine.Histogram: ...
    def elapsed_s(self) -> float: ...


class Run(RunResult):
    """A run going on in this process (or, distributed, on agents it coordinates).
    ``metrics`` grows while it runs."""

    def __init__(self, handle: _Handle, plan: Plan) -> None:
        self._handle = handle
        self._plan = plan
        self.path = Path(handle.path)
        self._lock = threading.Lock()
        self._frames: list[pl.DataFrame] = []
        self._finished = False
        self._end_hooks: list[Callable[[], None]] = []
        # The generator is this process unless agents run the load (they judge their own).
        self._probe = None if hasattr(handle, "agents_frame") else _validity.Probe()
        self._validity: Validity | None = None

    @property
    def done(self) -> bool:
        return self._handle.done

    def _take(self) -> None:
        """Takes the rows closed since the last call (under the lock).

        Rows are kept in chunks whose sizes at least double towards the oldest: a new chunk
        is merged into the one before it while that one is not twice its size. So there are
        only a few chunks (about log2 of the rows), and each row is copied a few times over
        the whole run, not once a second: what reading the newest rows costs does not grow
        with the run's length."""
        data = self._handle.take_rows()
        if not data:
            return
        self._frames.append(_store.rows_from_ndjson(data))
        while len(self._frames) > 1 and self._frames[-2].height < 2 * self._frames[-1].height:
            last = self._frames.pop()
            self._frames[-1] = pl.concat([self._frames[-1], last], rechunk=True)

    def _pull(self) -> pl.DataFrame:
        with self._lock:
            self._take()
            if len(self._frames) > 1:
                # One contiguous frame for whoever asks for all of it.
                self._frames = [pl.concat(self._frames, rechunk=True)]
            return self._frames[0] if self._frames else _store.empty_metrics()

    def _rows_after(self, seen: int) -> tuple[pl.DataFrame, int]:
        """The rows (tasks' and request names') after the first ``seen``, and how many there
        are in all: what a follower of the run (the exporter, serve mode's stream, the CLI's
        progress) reads each time, at a cost that does not grow with the run's length."""
        with self._lock:
            self._take()
            total = sum(f.height for f in self._frames)
            new: list[pl.DataFrame] = []
            end = total
            for f in reversed(self._frames):
                if end <= seen:
                    break
                start = end - f.height
                new.append(f.slice(max(0, seen - start)))
                end = start
            if not new:
                return _store.empty_metrics(), total
            return (new[0] if len(new) == 1 else pl.concat(new[::-1])), total

    def _write_parquet(self) -> None:
        """Once the run has ended and every row is in: ``metrics.parquet`` for readers of the
        run directory (once; reading ``metrics`` never writes anything)."""
        if not self._handle.done:
            return
        frame = self._pull()
        with self._lock:
            if not self._finished:
                self._validity = self._judge(frame)
                _store.write_parquet(self.path, frame)
                _store.write_slow_parquet(self.path)
                self._finished = True

    def _judge(self, rows: pl.DataFrame) -> Validity | None:
        """The run's validity, also written into its ``summary.json``."""
        text = self._handle.summary_json()
        if text is None:
            return None
        v = _validity.judge(
            Summary.model_validate_json(text),
            rows,
            self._probe.end() if self._probe else None,
            _connections(self._plan),
        )
        slices = getattr(self._handle, "slice_validity", None)
        if slices is not None:
            v = _validity.with_slices(v, slices())
        _store.add_validity(self.path, v)
        return v

    @property
    def _rows(self) -> pl.DataFrame:
        return self._pull()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Blocks until the run ends (or ``timeout_s`` passes); True if it ended. Ctrl-C (or a
        notebook interrupt) stops the run, keeps what it measured, and re-raises."""
        try:
            ended = self._handle.wait(timeout_s)
        except KeyboardInterrupt:
            self.stop()
            raise
        if ended:
            failure = self._handle.failure()
            try:
                self._write_parquet()
            except RunDirError:
                if not failure:
                    raise
            self._ended()
            if failure:
                # The engine's own error first: it is the cause (e.g. the disk filled up).
                raise RunDirError(failure)
        return ended

    def _on_end(self, hook: Callable[[], None]) -> None:
        """Calls ``hook`` in the thread that sees the run end through ``wait``/``stop``."""
        self._end_hooks.append(hook)

    def _ended(self) -> None:
        while self._end_hooks:
            self._end_hooks.pop(0)()

    def live(self, *, every_s: float = 1.0, window_s: float | None = 300.0) -> Dashboard:
        """Shows a dashboard in the notebook that updates about once a second while the run
        goes (rate vs target, latency percentiles corrected and service time, errors by kind,
        in flight and missed) and freezes on the final state. The kernel stays free: run
        other cells meanwhile. ``window_s`` bounds the seconds drawn (None: all)."""
        from loadpilot.notebook.live import Dashboard

        return Dashboard(self, every_s=every_s, window_s=window_s).show()

    def _state(self) -> str:
        return "finished" if self.done else "running"

    @property
    def validity(self) -> Validity | None:
        """Whether the run measured the system or the generator, once it has ended and its
        rows are in (``None`` until then): also ``summary().validity``."""
        return self._validity

    @property
    def agents(self) -> pl.DataFrame:
        """The agents of a distributed run, one row each: name, state (running, done, lost),
        clock offset and round trip to the coordinator, seconds since last heard of, requests
        reported. Empty for a run in this process."""
        frame = getattr(self._handle, "agents_frame", None)
        if frame is None:
            return pl.DataFrame(schema=AGENT_SCHEMA)
        result: pl.DataFrame = frame()
        return result

    def stop(self, reason: Literal["stopped", "aborted"] = "stopped") -> None:
        """Stops the run within moments: nothing new is sent, requests in flight are counted
        as cancelled, what was measured is kept and summarised (``ended`` is ``reason``:
        ``stopped``, or ``aborted`` when a threshold failed while the run went)."""
        self._handle.stop(reason)
        self._handle.wait(None)
        self._write_parquet()
        self._ended()

    @property
    def elapsed_s(self) -> float:
        """Seconds since the run's clock started (0 while its users are set up)."""
        return self._handle.elapsed_s()

    def poll(self, timeout_s: float) -> bool:
        """True once the run has ended, waiting at most ``timeout_s`` for it; unlike
        :meth:`wait` it finishes nothing (for watchers such as the dashboard)."""
        return self._handle.wait(timeout_s)

    def summary(self) -> Summary:
        """Whole-run figures; waits for the run to end first."""
        self.wait()
        text = self._handle.summary_json()
        assert text is not None, "a finished run has a summary"
        return self._with_validity(Summary.model_validate_json(text))

    def _with_validity(self, s: Summary) -> Summary:
        return s.model_copy(update={"validity": self._validity}) if self._validity else s

    def histogram(
        self,
        task: str | Sequence[str] | None = None,
        *,
        request: str | None = None,
        service: bool = False,
        start: float | None = None,
        end: float | None = None,
    ) -> _engine.Histogram:
        whole = start is None and end is None
        if whole and (task is None or isinstance(task, str)) and (request is None or task):
            # Everything closed so far, straight from the engine.
            if task is not None:
                _task_set(self, task)
            try:
                return self._handle.histogram(task, service, request)
            except _engine.PlanError as e:
                raise KeyError(str(e)) from None
        return super().histogram(task, request=request, service=service, start=start, end=end)

    def _summary_if_done(self) -> Summary | None:
        """The final summary if the run has ended, without waiting (or running end hooks)."""
        text = self._handle.summary_json() if self._handle.done else None
        return self._with_validity(Summary.model_validate_json(text)) if text else None

    def summary_so_far(self) -> Summary:
        """Figures of the intervals closed so far (``ended == "running"`` while it runs), from
        the same merged histograms as the final summary: what thresholds are checked against
        during a run."""
        if self.done:
            return self.summary()
        return Summary.model_validate_json(self._handle.summary_so_far_json())


class LoadedRun(RunResult):
    """A run directory read back from disk (finished, stopped, or cut short by a crash)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        plan_file = path / _store.PLAN
        if not plan_file.exists():
            raise RunDirError(f"{path}: not a run directory (no {_store.PLAN})")
        try:
            self._plan = Plan.from_json(plan_file.read_bytes())
        except (ValueError, OSError) as e:
            raise RunDirError(f"{plan_file}: {e}") from None
        self._all_rows = _store.read_metrics(path)

    @property
    def _rows(self) -> pl.DataFrame:
        return self._all_rows

    def _state(self) -> str:
        return "finished" if self.complete else "cut short"

    @property
    def complete(self) -> bool:
        """False for a run that was killed before it could write its summary."""
        return (self.path / _store.SUMMARY).exists()

    def summary(self) -> Summary:
        """The run's ``summary.json``; for a run cut short, a summary rebuilt from its
        interval logs (``ended == "interrupted"``)."""
        s = self._summary()
        if s.validity is None:
            # Written before runs were judged, or cut short: judged from what is here.
            v = _validity.judge(s, self._rows, None, _connections(self._plan))
            s = s.model_copy(update={"validity": v})
        return s

    def _summary(self) -> Summary:
        f = self.path / _store.SUMMARY
        if f.exists():
            try:
                return Summary.model_validate_json(f.read_bytes())
            except (ValidationError, OSError) as e:
                detail = (
                    describe(e).replace("invalid plan", "invalid summary")
                    if isinstance(e, ValidationError)
                    else str(e)
                )
                raise RunDirError(f"{f}: {detail}") from None
        try:
            return Summary.model_validate_json(_engine.summarize_dir(self.path))
        except ValidationError as e:
            raise RunDirError(f"{self.path}: {describe(e)}") from None


def _connections(plan: Plan) -> int | None:
    return getattr(plan.load, "connections", None)


def _bucket_floor_ms(ms: float | None) -> float | None:
    """The lowest latency in the histogram bucket of ``ms`` (a percentile as histograms
    report it: its bucket's highest value), so that the request at the percentile counts as
    at it. Buckets are 1 µs wide up to 2048 µs, then double with each power of two."""
    if ms is None:
        return None
    us = round(ms * 1000)
    width = 1 if us < 2048 else 2 ** (us.bit_length() - 11)
    return (us - width + 1) / 1000


def _percentile_of(text: str) -> float:
    """``"p99.9"`` as ``99.9``; anything else is a ValueError that says what is meant."""
    m = re.fullmatch(r"p(\d+(?:\.\d+)?)", text.strip())
    if m is None or not 0 < float(m[1]) < 100:
        raise ValueError(f"above={text!r}: give a percentile such as 'p99.9', or milliseconds")
    return float(m[1])


def _task_set(run: RunResult, task: str | Sequence[str] | None) -> set[str] | None:
    if task is None:
        return None
    names = [task] if isinstance(task, str) else list(task)
    known = run.tasks
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"no task named {unknown[0]!r}; tasks: {known}")
    return set(names)


def load_run(path: str | Path) -> LoadedRun:
    """Opens a run directory written by any run, finished or not."""
    return LoadedRun(Path(path))
