"""Which requests were slow, and why: the slowest requests a run kept (``run.slowest()``)
shown as a table, and joined with the server's spans by trace id (``explain``): each slow
request's latency split into the generator's wait, the time before the server's first span,
the server's spans (their own time, by service and name) and the rest."""

from __future__ import annotations

import gzip
import html
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from loadpilot.errors import RunDirError

if TYPE_CHECKING:
    import altair as alt

    from loadpilot.running.runs import RunResult

__all__ = ["Explanation", "explain", "html_section", "html_table", "kept", "read_spans", "table"]

#: The columns of a spans frame (``read_spans``): times in nanoseconds since the Unix epoch.
SPAN_SCHEMA: dict[str, pl.DataType] = {
    "trace_id": pl.String(),
    "span_id": pl.String(),
    "parent_id": pl.String(),
    "service": pl.String(),
    "name": pl.String(),
    "start_ns": pl.Int64(),
    "end_ns": pl.Int64(),
}

#: The parts of a request's latency that are not a server span.
WAIT, CONNECT, BEFORE, AFTER, UNACCOUNTED, UNTRACED = (
    "generator wait",
    "connecting",
    "before the server",
    "after the server",
    "unaccounted",
    "no spans found",
)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}" if v >= 100 else f"{v:.2f}"


_HEAD = ("ended (UTC)", "latency ms", "wait ms", "connect ms", "service ms", "status", "request",
         "url", "trace id")  # fmt: skip
#: The columns set right (figures).
_RIGHT = {1, 2, 3, 4}


def _rows(slow: pl.DataFrame, limit: int) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for r in slow.head(limit).iter_rows(named=True):
        status = r["error"] if r["error"] and r["status"] is None else str(r["status"])
        if r["error"] and r["status"] is not None:
            status = f"{r['status']} {r['error']}"
        name = r["task"] if r["request"] == r["task"] else f"{r['task']}: {r['request']}"
        url = r["url"] if len(r["url"]) <= 48 else r["url"][:47] + "…"
        rows.append((
            str(r["end"].strftime("%H:%M:%S.%f")[:-3]),
            _ms(r["latency_ms"]),
            _ms(r["wait_ms"]),
            _ms(r["connect_ms"]),
            _ms(r["service_ms"]),
            str(status),
            str(name),
            str(url),
            str(r["trace_id"] or "-"),
        ))  # fmt: skip
    return rows


def table(slow: pl.DataFrame, limit: int = 10) -> str:
    """The first ``limit`` rows of ``run.slowest()`` as plain text: when each ended (UTC),
    its latency, the generator's wait before sending it, the time opening a connection for
    it, its service time, status or error, task and request name, the URL as sent and its
    trace id."""
    if slow.is_empty():
        return "no requests kept"
    rows = [_HEAD, *_rows(slow, limit)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEAD))]
    lines = [
        "  ".join(
            c.rjust(w) if i in _RIGHT else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    more = len(slow) - limit
    if more > 0:
        lines.append(f"… and {more} more")
    return "\n".join(lines)


def html_table(slow: pl.DataFrame, limit: int = 10) -> str:
    """The same as an HTML table (for reports and the dashboard)."""
    if slow.is_empty():
        return "<p>No requests were kept.</p>"

    def cells(row: Sequence[str], tag: str) -> str:
        return "".join(
            f'<{tag} style="text-align:{"right" if i in _RIGHT else "left"}">'
            f"{html.escape(c)}</{tag}>"
            for i, c in enumerate(row)
        )

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in _rows(slow, limit))
    more = len(slow) - limit
    tail = f"<p>… and {more} more (<code>run.slowest()</code>)</p>" if more > 0 else ""
    return (
        f'<table class="slowest"><thead><tr>{cells(_HEAD, "th")}</tr></thead>'
        f"<tbody>{body}</tbody></table>{tail}"
    )


def kept(run: RunResult) -> pl.DataFrame:
    """Every slowest request ``run`` kept, slowest first; empty for runs that kept none (older
    runs, other tools' logs) and for a ``slow`` file that cannot be read: a report or a
    dashboard shows what there is rather than fail on it."""
    try:
        return run.slowest(above=None)
    except RunDirError:
        return pl.DataFrame()


def html_section(run: RunResult, limit: int, heading: str) -> str:
    """The run's ``limit`` slowest kept requests under ``heading`` (an HTML heading), or
    nothing when it kept none: the report's and the dashboard's final frame's section."""
    slow = kept(run)
    if slow.is_empty():
        return ""
    return (
        f"{heading}<p>The slowest of the requests each request name kept (its slowest of "
        "every second), with the trace id each carried: find them in the server's traces and "
        f"logs.</p>{html_table(slow, limit)}"
    )


def _hex(value: Any) -> str:
    """A trace or span id as lowercase hex (OTLP JSON writes hex; Jaeger too)."""
    return str(value or "").lower()


def _otlp_spans(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The spans of one OTLP JSON document (``resourceSpans``; Tempo's older ``batches``)."""
    for rs in doc.get("resourceSpans") or doc.get("batches") or []:
        service = "unknown"
        for a in (rs.get("resource") or {}).get("attributes") or []:
            if a.get("key") == "service.name":
                service = str((a.get("value") or {}).get("stringValue", service))
        for ss in rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or []:
            for sp in ss.get("spans") or []:
                yield {
                    "trace_id": _hex(sp.get("traceId")),
                    "span_id": _hex(sp.get("spanId")),
                    "parent_id": _hex(sp.get("parentSpanId")) or None,
                    "service": service,
                    "name": str(sp.get("name", "")),
                    "start_ns": int(sp["startTimeUnixNano"]),
                    "end_ns": int(sp["endTimeUnixNano"]),
                }


def _jaeger_spans(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The spans of a Jaeger query API answer (``{"data": [trace, ...]}``)."""
    for trace in doc.get("data") or []:
        processes = trace.get("processes") or {}
        for sp in trace.get("spans") or []:
            parent = next(
                (r.get("spanID") for r in sp.get("references") or []
                 if r.get("refType") == "CHILD_OF"),
                None,
            )  # fmt: skip
            start_us = int(sp["startTime"])
            yield {
                "trace_id": _hex(sp.get("traceID")).rjust(32, "0"),
                "span_id": _hex(sp.get("spanID")),
                "parent_id": _hex(parent) or None,
                "service": str(
                    (processes.get(sp.get("processID")) or {}).get("serviceName", "unknown")
                ),
                "name": str(sp.get("operationName", "")),
                "start_ns": start_us * 1000,
                "end_ns": (start_us + int(sp.get("duration", 0))) * 1000,
            }


def _spans_of(doc: Any) -> Iterator[dict[str, Any]]:
    if isinstance(doc, list):
        for d in doc:
            yield from _spans_of(d)
    elif isinstance(doc, dict):
        if "data" in doc:
            yield from _jaeger_spans(doc)
        elif "trace" in doc and isinstance(doc["trace"], dict):
            yield from _otlp_spans(doc["trace"])  # Tempo 2.x: {"trace": {"resourceSpans"}}
        else:
            yield from _otlp_spans(doc)


def _documents(text: str) -> list[Any]:
    """One JSON document, or one per line (the OpenTelemetry Collector's file exporter)."""
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_spans(
    source: str | Path | dict[str, Any] | list[Any],
    trace_ids: Iterable[str] | None = None,
    *,
    timeout_s: float = 10.0,
) -> pl.DataFrame:
    """Server spans as a frame (``trace_id``, ``span_id``, ``parent_id``, ``service``,
    ``name``, ``start_ns``, ``end_ns``), from:

    - an OTLP JSON file: one ``ExportTraceServiceRequest`` (``resourceSpans``), or one per
      line as the OpenTelemetry Collector's ``file`` exporter and the SDKs' file exporters
      write them (gzipped when its name ends in ``.gz``);
    - a Jaeger query API answer (``{"data": [...]}``) saved to a file;
    - a JSON document already loaded (either form);
    - the base URL of a Jaeger or Tempo query API (``http://jaeger:16686``,
      ``http://tempo:3200``) with ``trace_ids``: each trace is fetched from
      ``/api/traces/<id>``, and a trace it does not have is left out.

    A file that is neither is a ``ValueError`` that names it."""
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        if trace_ids is None:
            raise ValueError(f"{source}: give the trace ids to fetch (trace_ids=...)")
        found: list[dict[str, Any]] = []
        for tid in dict.fromkeys(trace_ids):
            url = f"{source.rstrip('/')}/api/traces/{tid}"
            try:
                with urllib.request.urlopen(url, timeout=timeout_s) as answer:
                    found.extend(_spans_of(json.loads(answer.read())))
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise ValueError(f"{url}: {e.code} {e.reason}") from None
            except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{url}: {getattr(e, 'reason', e)}") from None
        return pl.DataFrame(found, schema=SPAN_SCHEMA)
    if isinstance(source, dict | list):
        return pl.DataFrame(list(_spans_of(source)), schema=SPAN_SCHEMA)
    path = Path(source)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        docs = _documents(raw.decode())
        rows = list(_spans_of(docs))
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ValueError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not OTLP JSON nor a Jaeger answer ({e})") from None
    return pl.DataFrame(rows, schema=SPAN_SCHEMA)


def _own_time(spans: list[dict[str, Any]]) -> dict[str, int]:
    """Each span's own time in ns: its duration less the time covered by its children."""
    children: dict[str, list[tuple[int, int]]] = {}
    for sp in spans:
        if sp["parent_id"]:
            children.setdefault(sp["parent_id"], []).append((sp["start_ns"], sp["end_ns"]))
    own: dict[str, int] = {}
    for sp in spans:
        start, end = sp["start_ns"], sp["end_ns"]
        covered, reach = 0, start
        for a, b in sorted(children.get(sp["span_id"], [])):
            a, b = max(a, reach), min(b, end)
            if b > a:
                covered += b - a
                reach = b
        own[sp["span_id"]] = max(0, end - start - covered)
    return own


def _ns(t: Any) -> int:
    """A UTC datetime from ``run.slowest()`` as ns since the epoch."""
    return int(round(t.timestamp() * 1_000_000)) * 1000


@dataclass(frozen=True)
class Explanation:
    """Slow requests joined with the server's spans. ``frame``: one row per (request, part):
    ``trace_id``, ``task``, ``request``, ``url``, ``latency_ms``, ``part`` (``"generator
    wait"``, ``"before the server"``, ``"<service>: <span>"``, ``"after the server"``,
    ``"unaccounted"``, or ``"no spans found"``) and ``ms``. ``causes``: one row per request,
    its largest part (``cause``), that part's ``ms`` and ``share`` of the latency."""

    frame: pl.DataFrame

    @property
    def causes(self) -> pl.DataFrame:
        f = self.frame
        if f.is_empty():
            return pl.DataFrame(
                schema={"trace_id": pl.String(), "task": pl.String(), "request": pl.String(),
                        "url": pl.String(), "latency_ms": pl.Float64(), "cause": pl.String(),
                        "ms": pl.Float64(), "share": pl.Float64()}
            )  # fmt: skip
        top = f.sort("ms", descending=True).group_by("trace_id", maintain_order=True).first()
        return (
            top.rename({"part": "cause"})
            .with_columns((pl.col("ms") / pl.col("latency_ms")).alias("share"))
            .sort("latency_ms", descending=True)
        )

    def summary(self) -> pl.DataFrame:
        """Per cause: how many of the slow requests it explains, and their median share."""
        return (
            self.causes.group_by("cause")
            .agg(pl.len().alias("requests"), pl.col("share").median().alias("median_share"))
            .sort("requests", descending=True)
        )

    def chart(self, limit: int = 30) -> alt.Chart:
        """One bar per slow request (the ``limit`` slowest), its latency split into parts."""
        import altair as alt

        keep = self.causes.head(limit)["trace_id"].to_list()
        f = self.frame.filter(pl.col("trace_id").is_in(keep)).with_columns(
            (pl.col("trace_id").str.slice(0, 8) + " " + pl.col("url")).alias("label")
        )
        chart: alt.Chart = (
            alt.Chart(f)
            .mark_bar()
            .encode(
                y=alt.Y("label:N", sort="-x", title=None),
                x=alt.X("sum(ms):Q", title="latency (ms)"),
                color=alt.Color("part:N", title="part"),
                tooltip=["trace_id", "url", "part", alt.Tooltip("ms:Q", format=".2f")],
            )
            .properties(width=640, title="Where each slow request's time went")
        )
        return chart

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(str(r['cause']))}</td><td>{r['requests']}</td>"
            f"<td>{r['median_share']:.0%}</td></tr>"
            for r in self.summary().iter_rows(named=True)
        )
        return (
            f"<p>{len(self.causes)} slow requests</p><table><tr><th>largest part</th>"
            f"<th>requests</th><th>median share</th></tr>{rows}</table>"
        )


def explain(
    slow: pl.DataFrame,
    spans: pl.DataFrame | str | Path | dict[str, Any] | list[Any],
) -> Explanation:
    """Joins slow requests (``run.slowest()``) with the server's spans (a frame from
    :func:`read_spans`, or anything it reads; a Jaeger or Tempo URL is asked for these
    requests' trace ids) by trace id, and splits each request's latency into: the generator's
    wait (due to sent, less connecting), opening a connection for it (``connecting``), the
    time before the server's first span (the network, the server's queue), each server span's
    own time (its duration less its children's) by service and name, the time after the
    server's last span, and what is left (``unaccounted``: gaps between the server's spans,
    clock differences). A request whose trace has no spans is one part, ``no spans found``
    (its wait and connecting apart). Parts under a microsecond are left out. Times are
    compared as they are: the generator's and the server's clocks must agree (one machine,
    or NTP) for the before/after parts."""
    if not isinstance(spans, pl.DataFrame):
        ids = slow["trace_id"].drop_nulls().to_list()
        spans = read_spans(spans, ids)
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for sp in spans.iter_rows(named=True):
        by_trace.setdefault(sp["trace_id"], []).append(sp)
    rows: list[dict[str, Any]] = []
    for r in slow.iter_rows(named=True):
        if r["trace_id"] is None:
            continue
        base = {k: r[k] for k in ("trace_id", "task", "request", "url", "latency_ms")}

        def part(name: str, ns: float, base: dict[str, Any] = base) -> None:
            if ns >= 1000:  # parts under a microsecond are left out
                rows.append({**base, "part": name, "ms": ns / 1e6})

        latency_ns = r["latency_ms"] * 1e6
        connect_ns = (r["connect_ms"] or 0.0) * 1e6
        part(CONNECT, connect_ns)
        if r["sent"] is None:  # never sent: waiting, or connecting, all along
            part(WAIT, max(0.0, latency_ns - connect_ns))
            continue
        wait_ns = (r["wait_ms"] or 0.0) * 1e6
        part(WAIT, wait_ns)
        wait_ns += connect_ns
        found = by_trace.get(r["trace_id"], [])
        if not found:
            part(UNTRACED, max(0.0, latency_ns - wait_ns))
            continue
        sent, end = _ns(r["sent"]), _ns(r["end"])
        first = min(sp["start_ns"] for sp in found)
        last = max(sp["end_ns"] for sp in found)
        before = max(0, first - sent)
        after = max(0, end - last)
        part(BEFORE, before)
        own = _own_time(found)
        spent: dict[str, int] = {}
        for sp in found:
            label = f"{sp['service']}: {sp['name']}"
            spent[label] = spent.get(label, 0) + own[sp["span_id"]]
        for label, ns in spent.items():
            part(label, ns)
        part(AFTER, after)
        part(UNACCOUNTED, max(0.0, latency_ns - wait_ns - before - sum(spent.values()) - after))
    frame = pl.DataFrame(
        rows,
        schema={"trace_id": pl.String(), "task": pl.String(), "request": pl.String(),
                "url": pl.String(), "latency_ms": pl.Float64(), "part": pl.String(),
                "ms": pl.Float64()},
    )  # fmt: skip
    return Explanation(frame)
