"""Reading and finishing run directories (format: docs/run-directory.md)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import polars as pl

from loadpilot import _engine
from loadpilot.errors import RunDirError
from loadpilot.summary import Validity

# The run directory's file names are the engine's (docs/run-directory.md).
_FILES = _engine.RUN_FILES
PLAN = _FILES["plan"]
LATENCY_LOG = _FILES["latency_log"]
SERVICE_LOG = _FILES["service_log"]
REQUESTS_LATENCY_LOG = _FILES["requests_latency_log"]
REQUESTS_SERVICE_LOG = _FILES["requests_service_log"]
METRICS_JSONL = _FILES["metrics_jsonl"]
METRICS_PARQUET = _FILES["metrics_parquet"]
SUMMARY = _FILES["summary"]
AGENTS_LOG = _FILES["agents_log"]
EVENTS = _FILES["events"]
AGENTS_JSONL = _FILES["agents_jsonl"]
AGENTS_PARQUET = _FILES["agents_parquet"]
SLOW_JSONL = _FILES["slow_jsonl"]
SLOW_PARQUET = _FILES["slow_parquet"]

#: Kinds of failed request, each with an ``errors_<kind>`` column (the engine's order).
ERROR_KINDS: list[str] = list(_engine.ERROR_KINDS)

_TYPES: dict[str, pl.DataType] = {
    "f64": pl.Float64(),
    "u64": pl.UInt64(),
    "i64": pl.Int64(),
    "str": pl.String(),
}

#: The columns of ``run.metrics``, in order, as they are read from the engine's rows (the
#: engine's schema: ``_engine.ROW_COLUMNS``).
RAW_SCHEMA: dict[str, pl.DataType] = {name: _TYPES[kind] for name, kind in _engine.ROW_COLUMNS}


def rows_from_ndjson(data: bytes, extra: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
    """Interval rows (newline-delimited JSON, as the engine emits them) as a typed frame;
    ``extra``: columns some rows carry besides (an agent's name)."""
    if not data.strip():
        return empty_metrics()
    frame = pl.read_ndjson(io.BytesIO(data), schema={**(extra or {}), **RAW_SCHEMA})
    return _typed(frame)


def empty_metrics() -> pl.DataFrame:
    return _typed(pl.DataFrame(schema=RAW_SCHEMA))


def _typed(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        pl.from_epoch((pl.col("time") * 1_000_000).round().cast(pl.Int64), time_unit="us")
        .dt.replace_time_zone("UTC")
        .alias("time")
    )


def read_metrics(path: Path) -> pl.DataFrame:
    """The interval rows of a run directory: the Parquet file when the run finished, else the
    append-only file it was writing (a torn last line, from a killed writer, is dropped).
    Columns added since a run was recorded read as 0. A file that cannot be read as rows is a
    :class:`RunDirError` naming it."""
    parquet = path / METRICS_PARQUET
    jsonl = path / METRICS_JSONL
    try:
        if parquet.exists():
            return _complete(pl.read_parquet(parquet))
        if not jsonl.exists():
            return empty_metrics()
        data = jsonl.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
        return rows_from_ndjson(data)
    except (pl.exceptions.PolarsError, OSError, ValueError) as e:
        bad = parquet if parquet.exists() else jsonl
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunDirError(f"{bad}: not readable as interval rows ({first})") from None


def _complete(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with every column of today's schema, in its order (older runs lack some)."""
    missing = [c for c in RAW_SCHEMA if c not in frame.columns]
    if not missing:
        return frame
    # Rows of runs recorded before requests were measured apart are all tasks' rows; before
    # iterations were counted per interval, their count is unknown (null), not 0.
    unknown = {"request", "iterations"}
    return frame.with_columns(
        pl.lit(None if c in unknown else 0, dtype=RAW_SCHEMA[c]).alias(c) for c in missing
    ).select(list(RAW_SCHEMA))


#: Iterations that ended, in a row (``ITERATIONS``) and per second (``ACHIEVED_IPS``): what a
#: profile's rate (``target_rps``, which counts iterations begun) is held to, where
#: ``achieved_rps`` counts requests (two per iteration of a task of two requests). 0 in the
#: drain row, as ``achieved_rps``; rows written before iterations were counted give their
#: requests.
ITERATIONS = pl.coalesce("iterations", "requests")
ACHIEVED_IPS = (
    pl.when(pl.col("requests") > 0)
    .then(pl.col("achieved_rps") * ITERATIONS / pl.col("requests"))
    .otherwise(0.0)
)


def task_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows of tasks (each counts all of its task's requests): the frame without its
    per-request rows."""
    return frame.filter(pl.col("request").is_null())


def request_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows of request names (``request`` set): one per name of a task per interval."""
    return frame.filter(pl.col("request").is_not_null())


def write_parquet(path: Path, frame: pl.DataFrame) -> None:
    """Writes ``metrics.parquet`` whole or not at all (a temporary file, then renamed); on
    failure (a full disk) the append-only ``metrics.jsonl`` stays the run's rows."""
    tmp = path / (METRICS_PARQUET + ".tmp")
    try:
        frame.write_parquet(tmp)
        tmp.replace(path / METRICS_PARQUET)
    except (OSError, pl.exceptions.PolarsError) as e:
        tmp.unlink(missing_ok=True)
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise RunDirError(
            f"{path / METRICS_PARQUET}: cannot be written ({why}); the rows stay in {METRICS_JSONL}"
        ) from None


#: ``slow.jsonl``'s fields as the engine writes them (its ``SlowLine``).
_SLOW_RAW: dict[str, pl.DataType] = {
    "task": pl.String(),
    "request": pl.String(),
    "kind": pl.String(),
    "elapsed_s": pl.Float64(),
    "latency_ms": pl.Float64(),
    "service_ms": pl.Float64(),
    "due": pl.Float64(),
    "sent": pl.Float64(),
    "end": pl.Float64(),
    "status": pl.Int32(),
    "error": pl.String(),
    "url": pl.String(),
    "user": pl.UInt64(),
    "iteration": pl.UInt64(),
    "row": pl.List(pl.String()),
    "connection": pl.UInt64(),
    "new_connection": pl.Boolean(),
    "connect_ms": pl.Float64(),
    "trace_id": pl.String(),
    "agent": pl.String(),
}


def _instant(col: str) -> pl.Expr:
    return (
        pl.from_epoch((pl.col(col) * 1_000_000).round().cast(pl.Int64), time_unit="us")
        .dt.replace_time_zone("UTC")
        .alias(col)
    )


def _slow_typed(frame: pl.DataFrame) -> pl.DataFrame:
    """Raw kept requests as ``run.slowest()`` gives them: when each was due, sent and ended
    as times, and ``wait_ms``: from due to sent, less ``connect_ms`` (the generator's own
    delay: a late start, no free connection)."""
    due_to_sent = ((pl.col("sent") - pl.col("due")) * 1_000_000).round() / 1000
    return frame.with_columns(
        (due_to_sent - pl.col("connect_ms").fill_null(0.0)).round(3).alias("wait_ms"),
        _instant("due"),
        _instant("sent"),
        _instant("end"),
    ).select(
        "end", "elapsed_s", "task", "request", "kind", "latency_ms", "service_ms", "wait_ms",
        "status", "error", "url", "trace_id", "user", "iteration", "row", "connection",
        "new_connection", "connect_ms", "agent", "due", "sent",
    )  # fmt: skip


def read_slow(path: Path) -> pl.DataFrame:
    """The kept requests of a run directory (slowest and sampled, per request name and
    second): the Parquet file once the run finished, else the file being appended (a torn
    last line dropped); empty when none were kept."""
    parquet = path / SLOW_PARQUET
    jsonl = path / SLOW_JSONL
    try:
        if parquet.exists():
            return pl.read_parquet(parquet)
        data = jsonl.read_bytes() if jsonl.exists() else b""
        data = data[: data.rfind(b"\n") + 1]
        if not data:
            return _slow_typed(pl.DataFrame(schema=_SLOW_RAW))
        return _slow_typed(pl.read_ndjson(io.BytesIO(data), schema=_SLOW_RAW))
    except (pl.exceptions.PolarsError, OSError, ValueError) as e:
        bad = parquet if parquet.exists() else jsonl
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunDirError(f"{bad}: not readable as kept requests ({first})") from None


def write_slow_parquet(path: Path) -> None:
    """Writes ``slow.parquet`` from ``slow.jsonl`` once the run has ended (whole or not at
    all; the JSON lines stay the record when it cannot be written)."""
    if not (path / SLOW_JSONL).exists():
        return
    tmp = path / (SLOW_PARQUET + ".tmp")
    try:
        read_slow(path).write_parquet(tmp)
        tmp.replace(path / SLOW_PARQUET)
    except (OSError, pl.exceptions.PolarsError, RunDirError):
        tmp.unlink(missing_ok=True)


def add_validity(path: Path, validity: Validity) -> None:
    """Adds the run's validity to its ``summary.json`` (whole or not at all). A summary that
    cannot be read or rewritten (a full disk) stays as the engine wrote it: the run itself
    knows its validity, and a later reader judges the run again from its files."""
    f = path / SUMMARY
    tmp = path / (SUMMARY + ".tmp")
    try:
        data = json.loads(f.read_bytes())
        data["validity"] = validity.model_dump(mode="json")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(f)
    except (OSError, ValueError):
        tmp.unlink(missing_ok=True)


class LogTail:
    """One of a run's interval logs followed as it grows: each call reads the lines completed
    since the last (the engine's reader, from where it stopped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[tuple[str | None, str | None, float, _engine.Histogram]]:
        """The new histograms as ``(task, request, elapsed_s, histogram)`` (``request`` is
        None for a task's histogram); none while the log does not exist yet."""
        if not self.path.exists():
            return []
        lines, self.offset = _engine.read_hlog_from(self.path, self.offset)
        return [(*split_tag(tag), start, h) for tag, start, _length, h in lines]


class SlowTail:
    """A run's ``slow.jsonl`` followed as it grows: each call reads the kept requests of the
    lines completed since the last (none while the file does not exist)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


def split_tag(tag: str | None) -> tuple[str | None, str | None]:
    """An interval log's tag as ``(task, request)``: a task's histograms have no request;
    an untagged (foreign) one has neither."""
    if tag is None:
        return None, None
    return _engine.split_tag(tag)
