"""Prometheus metrics of runs, fed once per closed interval from what the run itself wrote:
its rows (counters and gauges) and its interval histograms (latency buckets). Nothing is
counted per request in Python, and every figure is the run's own.

Metrics (labels ``run``, ``scenario``, ``task`` and, for requests, ``status_class``; never a
URL):

- ``loadpilot_requests_total{status_class}``: completed requests by status class (``1xx`` ..
  ``5xx``; ``none`` for transport errors, which have no response);
- ``loadpilot_errors_total{kind}``: failed requests by kind (the engine's error kinds);
- ``loadpilot_iterations_total``: iterations that ended, per task (what the target rate
  counts: an iteration of a task of two requests is two requests);
- ``loadpilot_missed_total``: arrivals that found every connection busy;
- ``loadpilot_request_duration_seconds``: corrected latency (from the instant each request was
  due), a histogram with ``LATENCY_BUCKETS``; in the OpenMetrics exposition each bucket carries
  an exemplar, the trace id (``trace_id``) and latency of the latest slow request the run kept
  in it (``run.slowest()``), so a dashboard can go from the tail to the trace;
- ``loadpilot_service_duration_seconds``: service time (from the instant it was sent);
- ``loadpilot_target_rate``: the profile's rate (open model; iterations per second), per task;
- ``loadpilot_in_flight``, ``loadpilot_active_users``: per run;
- ``loadpilot_agents{state}``: a distributed run's agents by state.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    Exemplar,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from loadpilot import _engine
from loadpilot.running import store

if TYPE_CHECKING:
    from loadpilot.running.runs import Run

#: Latency buckets, seconds: fine where services answer (0.1 ms to 10 ms), then a step per
#: doubling-ish up to a minute, so `histogram_quantile` is within a bucket of the exact figure.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
    0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass
class _Buckets:
    counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    count: int = 0
    sum_s: float = 0.0
    #: Per bucket (and +Inf, last): the latest kept request in it that carried a trace id.
    exemplars: list[Exemplar | None] = field(
        default_factory=lambda: [None] * (len(LATENCY_BUCKETS) + 1)
    )

    def exemplar(self, seconds: float, trace_id: str, at: float) -> None:
        """A kept request of ``seconds`` that ended at ``at`` (Unix seconds)."""
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        self.exemplars[i] = Exemplar({"trace_id": trace_id}, seconds, at)

    def add(self, h: _engine.Histogram) -> None:
        if h.count == 0:
            return
        values, counts = h.buckets()
        i = 0
        for v_ms, n in zip(values, counts, strict=True):
            v = v_ms / 1000
            while i < len(LATENCY_BUCKETS) and LATENCY_BUCKETS[i] < v:
                i += 1
            for j in range(i, len(LATENCY_BUCKETS)):
                self.counts[j] += n
        self.count += h.count
        self.sum_s += (h.mean or 0.0) * h.count / 1000


@dataclass
class _Task:
    classes: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*_CLASSES, "none"), 0))
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_engine.ERROR_KINDS, 0))
    missed: int = 0
    iterations: int = 0
    target_rate: float | None = None
    latency: _Buckets = field(default_factory=_Buckets)
    service: _Buckets = field(default_factory=_Buckets)


class _Watched:
    """One run's figures so far, caught up with what it has written."""

    def __init__(self, run: Run, name: str) -> None:
        self.run = run
        self.name = name
        self.scenario = run.plan.name
        #: By (task, request name): "" for the task's own series (all its requests).
        self.tasks: dict[tuple[str, str], _Task] = {}
        self.in_flight = 0
        self.active_users = 0
        self.rows_seen = 0
        #: The end of the last closed interval (seconds since the epoch): the timestamp of the
        #: counters, so a sample says how much was done by when, whatever the scrape's phase.
        self.ts: float | None = None
        self.slow = store.SlowTail(Path(run.path) / store.SLOW_JSONL)
        self.logs = [
            (store.LogTail(Path(run.path) / store.LATENCY_LOG), False),
            (store.LogTail(Path(run.path) / store.SERVICE_LOG), True),
            (store.LogTail(Path(run.path) / store.REQUESTS_LATENCY_LOG), False),
            (store.LogTail(Path(run.path) / store.REQUESTS_SERVICE_LOG), True),
        ]
        self.finished = False
        # Every task's series exists (at zero) from the start, so a scrape before the first
        # closed second gives rate() its baseline.
        for name in run.tasks:
            self.task(name)

    def task(self, name: str, request: str | None = None) -> _Task:
        return self.tasks.setdefault((name, request or ""), _Task())

    def catch_up(self) -> None:
        done = self.run.done
        # Tasks' rows and request names', only those not seen yet.
        new, self.rows_seen = self.run._rows_after(self.rows_seen)
        # A row's iterations, its requests in rows written before iterations were counted.
        new = new.with_columns(store.ITERATIONS.alias("iterations"))
        for row in new.iter_rows(named=True):
            t = self.task(row["task"], row["request"])
            with_status = 0
            for c in _CLASSES:
                n = row[f"status_{c}"]
                t.classes[c] += n
                with_status += n
            t.classes["none"] += max(0, row["requests"] - with_status)
            for kind in t.errors:
                t.errors[kind] += row[f"errors_{kind}"]
            t.missed += row["missed"]
            if row["request"] is None:
                t.iterations += row["iterations"]
            t.target_rate = row["target_rps"]
            self.ts = row["time"].timestamp() + row["interval_s"]
            self.in_flight = row["in_flight"]
            self.active_users = row["active_users"]
        for tail, service in self.logs:
            for task, request, _start, h in tail.read():
                t = self.task(task or "untagged", request)
                (t.service if service else t.latency).add(h)
        for k in self.slow.read():
            if k.get("trace_id"):
                seconds = k["latency_ms"] / 1000
                for t in (self.task(k["task"]), self.task(k["task"], k["request"])):
                    t.latency.exemplar(seconds, k["trace_id"], k["end"])
        if done:
            self.in_flight = 0
            self.active_users = 0
            self.finished = True


class RunMetrics(Collector):
    """The Prometheus collector of every run it watches (``watch``); ``serve`` exposes it."""

    def __init__(self, every_s: float = 0.1) -> None:
        self._watched: list[_Watched] = []
        self._lock = threading.Lock()
        self._every_s = every_s
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="loadpilot-metrics", daemon=True)
        self._thread.start()
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def watch(self, run: Run, name: str | None = None) -> None:
        """Exports ``run`` from now on, labelled ``name`` (default its directory's name; a
        label already taken gets ``-2``, ``-3``...)."""
        with self._lock:
            label = base = name or Path(run.path).name
            taken = {w.name for w in self._watched}
            n = 1
            while label in taken:
                n += 1
                label = f"{base}-{n}"
            self._watched.append(_Watched(run, label))
        self._wake.set()

    def forget(self, name: str) -> None:
        """Stops exporting the run labelled ``name``: its series leave ``/metrics``."""
        with self._lock:
            self._watched = [w for w in self._watched if w.name != name]

    def _follow(self) -> None:
        while True:
            self._wake.wait(self._every_s)
            self._wake.clear()
            with self._lock:
                watched = [w for w in self._watched if not w.finished]
            for w in watched:
                try:
                    with self._lock:
                        w.catch_up()
                except Exception:  # a run directory that went away: stop following it
                    w.finished = True

    def serve(self, host: str, port: int) -> int:
        """Serves ``/metrics`` on ``host:port`` (0: a free port) in a thread; returns the port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        bound: int = server.server_address[1]
        return bound

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "loadpilot_requests", "Completed requests, by status class (none: no response).",
            labels=["run", "scenario", "task", "status_class"],
        )  # fmt: skip
        errors = CounterMetricFamily(
            "loadpilot_errors",
            "Failed requests, by kind.",
            labels=["run", "scenario", "task", "kind"],
        )
        missed = CounterMetricFamily(
            "loadpilot_missed", "Arrivals that found every connection busy.",
            labels=["run", "scenario", "task"],
        )  # fmt: skip
        iterations = CounterMetricFamily(
            "loadpilot_iterations",
            "Iterations that ended: what the target rate counts (a task of two requests sends "
            "two per iteration).",
            labels=["run", "scenario", "task"],
        )
        target = GaugeMetricFamily(
            "loadpilot_target_rate", "The profile's rate, iterations per second (open model).",
            labels=["run", "scenario", "task"],
        )  # fmt: skip
        latency = HistogramMetricFamily(
            "loadpilot_request_duration_seconds",
            "Corrected latency: from the instant each request was due to its answer.",
            labels=["run", "scenario", "task"],
        )
        service = HistogramMetricFamily(
            "loadpilot_service_duration_seconds",
            "Service time: from the instant each request was sent to its answer.",
            labels=["run", "scenario", "task"],
        )
        # Per request name: families of their own, so that adding up any family over all its
        # labels counts each request once.
        named_requests = CounterMetricFamily(
            "loadpilot_named_requests",
            "Completed requests per request name, by status class (none: no response).",
            labels=["run", "scenario", "task", "request", "status_class"],
        )
        named_errors = CounterMetricFamily(
            "loadpilot_named_errors",
            "Failed requests per request name, by kind.",
            labels=["run", "scenario", "task", "request", "kind"],
        )
        named_latency = HistogramMetricFamily(
            "loadpilot_named_request_duration_seconds",
            "Corrected latency per request name.",
            labels=["run", "scenario", "task", "request"],
        )
        named_service = HistogramMetricFamily(
            "loadpilot_named_service_duration_seconds",
            "Service time per request name.",
            labels=["run", "scenario", "task", "request"],
        )
        in_flight = GaugeMetricFamily(
            "loadpilot_in_flight", "Requests in flight.", labels=["run", "scenario"]
        )
        users = GaugeMetricFamily(
            "loadpilot_active_users",
            "Active virtual users (closed model).",
            labels=["run", "scenario"],
        )
        agents = GaugeMetricFamily(
            "loadpilot_agents",
            "A distributed run's agents, by state.",
            labels=["run", "scenario", "state"],
        )
        validity = GaugeMetricFamily(
            "loadpilot_run_validity",
            "1 for the run's validity verdict (valid, suspect, invalid) once it ended and was "
            "judged, 0 for the others.",
            labels=["run", "scenario", "verdict"],
        )
        with self._lock:
            for w in self._watched:
                judged = w.run.validity
                if judged is not None:
                    for verdict in ("valid", "suspect", "invalid"):
                        validity.add_metric(
                            [w.name, w.scenario, verdict], float(judged.verdict == verdict)
                        )
                for (name, request), t in w.tasks.items():
                    labels = [w.name, w.scenario, name] + ([request] if request else [])
                    ts = w.ts
                    counts, kinds, lat, svc = (
                        (named_requests, named_errors, named_latency, named_service)
                        if request
                        else (requests, errors, latency, service)
                    )
                    for c, n in t.classes.items():
                        counts.add_metric([*labels, c], n, timestamp=ts)
                    for kind, n in t.errors.items():
                        kinds.add_metric([*labels, kind], n, timestamp=ts)
                    if not request:
                        missed.add_metric(labels, t.missed, timestamp=ts)
                        iterations.add_metric(labels, t.iterations, timestamp=ts)
                        if t.target_rate is not None:
                            target.add_metric(labels, t.target_rate)
                    for fam, b in ((lat, t.latency), (svc, t.service)):
                        les = [*(str(le) for le in LATENCY_BUCKETS), "+Inf"]
                        buckets: list[Any] = [
                            (le, n) if e is None else (le, n, e)
                            for le, n, e in zip(les, [*b.counts, b.count], b.exemplars, strict=True)
                        ]
                        fam.add_metric(labels, buckets, sum_value=b.sum_s, timestamp=ts)
                in_flight.add_metric([w.name, w.scenario], w.in_flight)
                users.add_metric([w.name, w.scenario], w.active_users)
                frame = w.run.agents
                for state in ("running", "done", "lost"):
                    n = frame.filter(frame["state"] == state).height
                    if frame.height:
                        agents.add_metric([w.name, w.scenario, state], n)
        yield from (
            requests,
            errors,
            iterations,
            missed,
            target,
            latency,
            service,
            in_flight,
            users,
            agents,
        )
        yield validity
        yield from (named_requests, named_errors, named_latency, named_service)


_default: RunMetrics | None = None
_served: dict[tuple[str, int], int] = {}


def export(run: Run, address: str) -> int:
    """Exports ``run`` at ``http://HOST:PORT/metrics`` (``address`` is ``HOST:PORT``; the
    server is started once per address and serves every run exported there). Returns the
    port."""
    global _default
    host, _, port_text = address.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"prometheus address {address!r}: give HOST:PORT") from None
    host = host.strip("[]") or "127.0.0.1"
    if _default is None:
        _default = RunMetrics()
    key = (host, port)
    if key not in _served:
        try:
            _served[key] = _default.serve(host, port)
        except OSError as e:
            raise ValueError(
                f"prometheus address {address!r}: cannot serve there ({e.strerror or e})"
            ) from None
    _default.watch(run)
    return _served[key]
