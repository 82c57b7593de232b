"""Whole-run figures, as written to ``summary.json``."""

from __future__ import annotations

import html
from typing import Literal

from pydantic import BaseModel, ConfigDict

#: Why a run ended: the engine's reasons (``_engine.END_REASONS``; a test holds them equal).
EndReason = Literal[
    "running",
    "completed",
    "stopped",
    "aborted",
    "drain_timeout",
    "exhausted",
    "failed",
    "interrupted",
]


class Percentiles(BaseModel):
    """Latency in milliseconds from merged histograms (exact to 3 significant digits);
    ``None`` where nothing was recorded."""

    model_config = ConfigDict(frozen=True)
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    p999: float | None = None
    max: float | None = None
    mean: float | None = None
    min: float | None = None


class Stats(BaseModel):
    model_config = ConfigDict(frozen=True)
    requests: int
    errors: int
    errors_by_kind: dict[str, int]
    error_rate: float
    """Failed requests, exceptions and cancelled iterations over all of them plus the
    answered requests: a request that never came back counts against the run."""
    missed: int
    iterations: int | None = None
    """Iterations that ran to their end (for tasks of one request, ``requests``); ``None``
    in a summary rebuilt from the interval rows of a run cut short."""
    cancelled: int = 0
    """Iterations sent and still unanswered when the run was stopped or its drain ended."""
    unsent: int = 0
    """Arrivals that were due and never sent (the generator fell behind, or the run ended)."""
    bytes_in: int
    redirects: int = 0
    """Redirects followed (each request's hops are part of that one request)."""
    achieved_rps: float
    """Requests per second over ``duration_s``, the time requests were being sent."""
    latency_ms: Percentiles
    """From the instant each request was due (coordinated-omission corrected)."""
    service_ms: Percentiles
    """From the instant each request was sent."""
    late_ms: Percentiles = Percentiles()
    """How late each iteration began after its due instant (open model): the generator's own
    delay, part of ``latency_ms``."""


class TaskSummary(Stats):
    name: str
    path: str
    """Where the task's iterations ran: ``engine`` (entirely in Rust) or ``python``; ``hook``
    for the ``on_start`` entry, whose iterations are the users' set-ups."""
    target_requests: float | None = None
    """Arrivals of this task that were due (open model); for ``on_start``, the users set up."""


class RequestSummary(Stats):
    """Whole-run figures of one request name of a task (``iterations`` is the task's)."""

    task: str
    name: str


Verdict = Literal["valid", "suspect", "invalid"]


class Reason(BaseModel):
    """One finding: what was seen, how grave (``info`` explains without counting against the
    run), and whose it is (``generator`` or ``system``)."""

    model_config = ConfigDict(frozen=True)
    code: Literal["late", "connections", "saturated", "cpu", "run_queue"]
    level: Literal["info", "suspect", "invalid"]
    side: Literal["generator", "system"]
    text: str


class Generator(BaseModel):
    """The generator process over the run: what ``/proc`` said of it."""

    model_config = ConfigDict(frozen=True)
    wall_s: float
    cpu_s: float
    """User and system CPU time of the whole process (every thread)."""
    cores: int
    """CPUs the process may run on (its affinity)."""
    run_queue_s: float | None = None
    """Time its threads spent runnable but waiting for a CPU (``schedstat``)."""
    cpu_pressure_s: float | None = None
    """Time some task on the machine waited for a CPU (PSI ``cpu some``; the whole machine)."""

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / (self.wall_s * self.cores) if self.wall_s > 0 else 0.0


class Validity(BaseModel):
    model_config = ConfigDict(frozen=True)
    verdict: Verdict
    limit: Literal["generator", "system"] | None = None
    reasons: list[Reason] = []
    generator: Generator | None = None

    @property
    def headline(self) -> str:
        """``valid``, ``invalid (generator-limited)``, ``valid (system-limited)``..."""
        return self.verdict + (f" ({self.limit}-limited)" if self.limit else "")

    def lines(self) -> list[str]:
        """The verdict, then each reason on a line of its own."""
        return [f"validity: {self.headline}", *(f"  {r.level}: {r.text}" for r in self.reasons)]

    def __str__(self) -> str:
        return "\n".join(self.lines())


class FailureCount(BaseModel):
    """A failure message of a request name (a failed check's, as Python gave it) and how often
    it came."""

    model_config = ConfigDict(frozen=True)
    task: str
    request: str
    message: str
    count: int


class Summary(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    started_at: float
    duration_s: float
    """How long requests were being sent: the planned duration, or up to the stop."""
    drain_s: float = 0.0
    """How long the run then waited for requests still in flight."""
    planned_duration_s: float
    ended: EndReason
    """``completed``; ``stopped`` (stop(), Ctrl-C, SIGTERM); ``aborted`` (a threshold failed
    during the run); ``drain_timeout`` (requests still in flight when the drain ended were
    cancelled); ``exhausted`` (a unique feeder ran out); ``failed`` (the run directory could
    not be written, e.g. a full disk: the files may lack rows); ``interrupted`` or ``running`` for a
    summary rebuilt from a run cut short or still going."""
    model: str
    target_requests: float | None
    """Arrivals that were due (open model): ``iterations + cancelled + unsent``, overall and
    per task."""
    overall: Stats
    tasks: list[TaskSummary]
    requests: list[RequestSummary] = []
    """Per request name of each task, in the order the names were first seen (empty for
    runs recorded before requests were measured apart)."""
    failures: list[FailureCount] = []
    """The messages of failed checks (``response.failure(...)``, an exception in a
    ``catch_response`` block), most frequent first; at most 100, each request name keeping
    the first 100 distinct messages it met (later ones as ``(other messages)``)."""
    fate_unknown: int = 0
    """Distributed runs: arrivals a lost agent may have sent after its last report of
    progress, which the survivors taking over its share sent again. The target may have
    received up to this many requests more than ``target_requests``; 0 when no agent was
    lost."""
    validity: Validity | None = None
    """Whether the run measured the system or the generator (``loadpilot.validity``);
    ``None`` while the run goes."""

    def task(self, name: str) -> TaskSummary:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task named {name!r}; tasks: {[t.name for t in self.tasks]}")

    def request(self, name: str, task: str | None = None) -> RequestSummary:
        """The figures of request ``name`` (of ``task``; needed only when two tasks send
        requests of that name)."""
        found = [r for r in self.requests if r.name == name and task in (None, r.task)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise KeyError(
                f"no request named {name!r}"
                + (f" in task {task!r}" if task else "")
                + f"; requests: {sorted({r.name for r in self.requests})}"
            )
        tasks = ", ".join(r.task for r in found)
        raise KeyError(f"request {name!r} is sent by several tasks ({tasks}): name the task")

    def html(self) -> str:
        """An HTML table, one row per task and one for all (what reports and notebooks show)."""
        return _summary_table(self)

    def _repr_html_(self) -> str:
        return self.html()

    def table(self) -> str:
        """A plain-text table, one line per task and one for all."""
        head = (
            f"{'task':<16}{'path':<8}{'requests':>10}{'errors':>8}{'cancelled':>10}{'unsent':>8}"
            f"{'missed':>8}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'svc p99':>9}"
        )
        lines = [head]

        def fmt(v: float | None) -> str:
            return f"{v:9.2f}" if v is not None else f"{'-':>9}"

        rows: list[tuple[str, str, Stats]] = [(t.name, t.path, t) for t in self.tasks]
        rows.append(("all", "", self.overall))
        for name, path, s in rows:
            lines.append(
                f"{name[:15]:<16}{path:<8}{s.requests:>10}{s.errors:>8}{s.cancelled:>10}"
                f"{s.unsent:>8}{s.missed:>8}{s.achieved_rps:>10.1f}"
                f"{fmt(s.latency_ms.p50)}{fmt(s.latency_ms.p99)}{fmt(s.latency_ms.max)}"
                f"{fmt(s.service_ms.p99)}"
            )
        if self.requests:
            lines.append("")
            lines.append(
                f"{'request':<32}{'task':<16}{'requests':>10}{'errors':>8}{'rps':>10}"
                f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            )
            for r in self.requests:
                lines.append(
                    f"{r.name[:31]:<32}{r.task[:15]:<16}{r.requests:>10}{r.errors:>8}"
                    f"{r.achieved_rps:>10.1f}{fmt(r.latency_ms.p50)}{fmt(r.latency_ms.p99)}"
                    f"{fmt(r.latency_ms.max)}"
                )
        if self.failures:
            lines.append("")
            lines.append(f"{'failures':>10}  {'request':<32}message")
            for f in self.failures:
                lines.append(f"{f.count:>10}  {f.request[:31]:<32}{f.message}")
        if self.validity is not None:
            lines.append("")
            lines.extend(self.validity.lines())
        return "\n".join(lines)


def _stats_row(name: str, path: str, s: Stats, iterations: bool = True) -> str:
    """A table row; ``iterations``: with the counts of iterations (missed, cancelled, unsent),
    which a request name's row has not."""
    cells = [
        html.escape(name),
        html.escape(path),
        f"{s.requests:,}",
        f"{s.errors:,}",
        f"{s.error_rate * 100:.3g}%",
        f"{s.achieved_rps:,.1f}",
        *(_ms(getattr(s.latency_ms, k)) for k in ("p50", "p90", "p99", "p999", "max")),
        _ms(s.service_ms.p99),
    ]
    if iterations:
        cells += [f"{s.missed:,}", f"{s.cancelled:,}", f"{s.unsent:,}"]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _summary_table(s: Summary) -> str:
    head = [
        "task", "path", "requests", "errors", "error rate", "req/s", "p50 ms", "p90 ms",
        "p99 ms", "p99.9 ms", "max ms", "service p99 ms", "missed", "cancelled", "unsent",
    ]  # fmt: skip
    rows = [_stats_row(t.name, t.path, t) for t in s.tasks]
    rows.append(_stats_row("all", "", s.overall))
    table = (
        "<table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    if s.requests:
        named = [_stats_row(r.name, r.task, r, iterations=False) for r in s.requests]
        table += (
            "<table class='loadpilot-requests'><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in ["request", "task", *head[2:-3]])
            + "</tr></thead><tbody>"
            + "".join(named)
            + "</tbody></table>"
        )
    if s.validity is not None:
        v = s.validity
        table += (
            f"<p class='loadpilot-validity {v.verdict}'><strong>validity: "
            f"{html.escape(v.headline)}</strong></p>"
        )
        if v.reasons:
            table += (
                "<ul class='loadpilot-validity'>"
                + "".join(f"<li>{r.level}: {html.escape(r.text)}</li>" for r in v.reasons)
                + "</ul>"
            )
    if s.failures:
        table += (
            "<table class='loadpilot-failures'><thead><tr><th>failures</th><th>request</th>"
            "<th>task</th><th>message</th></tr></thead><tbody>"
            + "".join(
                f"<tr><td>{f.count:,}</td><td>{html.escape(f.request)}</td>"
                f"<td>{html.escape(f.task)}</td><td>{html.escape(f.message)}</td></tr>"
                for f in s.failures
            )
            + "</tbody></table>"
        )
    return table


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.2f}"
