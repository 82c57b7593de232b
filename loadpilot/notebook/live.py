"""The live dashboard of a run in a notebook: ``run.live()``.

A display (not a widget) updated in place about once a second from a background thread, so the
kernel stays free for other cells. Every frame is plain HTML with inline SVG: it redraws without
flicker in JupyterLab, and the final frame is an ordinary static output when a notebook is
executed with no browser attached (nbclient, nbval) or viewed on GitHub.

While the run goes, frames are drawn by a few lines of plain Python (``notebook.sparks``:
milliseconds a frame). Altair with vl-convert would cost ~0.25 s of CPU a frame, and vl-convert
holds the GIL while it draws, which stalls Python task bodies: the run would pay for its own
dashboard. The final frame, drawn once the run has ended, is the Altair chart.
"""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from loadpilot import _engine
from loadpilot.analysis import series as _series
from loadpilot.notebook import sparks as _sparks
from loadpilot.running import store as _store

if TYPE_CHECKING:
    # Altair is loaded for the final frame only: importing it can take seconds, and a
    # dashboard must show a run that lasts less than that.
    import altair as alt

    from loadpilot.running.runs import Run
    from loadpilot.summary import Summary

_WIDTH = 300


class _HlogTail:
    """An ``.hlog`` followed as it grows, each interval's tasks added up."""

    def __init__(self, path: Path) -> None:
        self.tail = _store.LogTail(path)
        self.intervals: dict[float, _engine.Histogram] = {}

    def read(self) -> dict[float, _engine.Histogram]:
        for _task, _request, start, h in self.tail.read():
            if start in self.intervals:
                self.intervals[start].add(h)
            else:
                self.intervals[start] = h
        return self.intervals


def _fmt(v: float | None, unit: str = " ms") -> str:
    return "–" if v is None else f"{v:,.2f}{unit}"


#: The per-second columns the dashboard draws (all numbers, as floats).
PER_COLUMNS = [
    "elapsed_s", "achieved_ips", "target_rps", "in_flight", "missed", "active_users",
    *(f"errors_{k}" for k in _store.ERROR_KINDS),
]  # fmt: skip
_LAT_SCHEMA = {"elapsed_s": pl.Float64, "series": pl.String, "ms": pl.Float64}


def requests_now(rows: pl.DataFrame, most: int = 10) -> str:
    """The last second's busiest request names (of ``run.request_metrics``) as an HTML table:
    task, name, rate, p50, p99, errors; empty before the first second."""
    if not len(rows):
        return ""
    last = rows.filter(pl.col("elapsed_s") == rows["elapsed_s"].max()).sort(
        ["requests", "task", "request"], descending=[True, False, False]
    )
    cells = "".join(
        f"<tr><td>{html.escape(str(r['task']))}</td><td>{html.escape(str(r['request']))}</td>"
        f"<td style='text-align:right'>{float(r['achieved_rps']):,.1f}</td>"
        f"<td style='text-align:right'>{_fmt(r['p50_ms'])}</td>"
        f"<td style='text-align:right'>{_fmt(r['p99_ms'])}</td>"
        f"<td style='text-align:right'>{int(r['errors']):,}</td></tr>"
        for r in last.head(most).iter_rows(named=True)
    )
    more = len(last) - most
    note = f"<tr><td colspan='6'>… {more} more names</td></tr>" if more > 0 else ""
    return (
        "<table class='lp-requests' style='font-family: system-ui, sans-serif; "
        "font-size: 0.85rem'><thead><tr><th>task</th><th>request</th><th>rps</th>"
        f"<th>p50</th><th>p99</th><th>errors</th></tr></thead><tbody>{cells}{note}</tbody>"
        "</table>"
    )


def _lines(
    frame: pl.DataFrame, x: alt.X, y_title: str, title: str, band: str | None = None
) -> alt.Chart | alt.LayerChart:
    """One line per column of ``frame`` (besides ``elapsed_s``) over time, legend below;
    ``band``: a column drawn as a broad pale band under the others (a target), so a line that
    agrees with it shows on it rather than hidden under it."""
    import altair as alt

    from loadpilot.analysis.charts import target_band

    columns = [c for c in frame.columns if c != "elapsed_s"]
    colour = alt.Color(
        "variable:N",
        title=None,
        legend=alt.Legend(orient="bottom", symbolOpacity=1),
        scale=alt.Scale(domain=columns),
    )
    base = alt.Chart(frame.unpivot(index="elapsed_s", on=columns)).encode(
        x=x, y=alt.Y("value:Q", title=y_title), color=colour
    )
    lines = base.mark_line()
    if band is not None:
        under = target_band(base.transform_filter(alt.datum.variable == band))
        over = lines.transform_filter(alt.datum.variable != band)
        layered = alt.layer(under, over).properties(title=title, width=_WIDTH, height=150)
        assert isinstance(layered, alt.LayerChart)
        return layered
    chart: alt.Chart = lines.properties(title=title, width=_WIDTH, height=150)
    return chart


def dashboard_chart(
    per: pl.DataFrame, lat: pl.DataFrame, since: float, end: float
) -> alt.VConcatChart:
    """The dashboard's four charts from :meth:`Dashboard.data`: rate vs target, latency,
    errors by kind, in flight and missed."""
    import altair as alt

    from loadpilot.analysis import charts

    x = alt.X("elapsed_s:Q", title="seconds")
    rate = _lines(
        per.select(
            "elapsed_s",
            pl.col("achieved_ips").alias("achieved"),
            pl.col("target_rps").alias("target"),
        ),
        x,
        "iterations/s",
        "Rate: achieved vs target",
        band="target",
    )
    latency = (
        alt.Chart(lat)
        .mark_line()
        .encode(
            x=x,
            y=alt.Y("ms:Q", title="ms", scale=alt.Scale(type="symlog")),
            color=alt.Color(
                "series:N",
                title=None,
                sort=["p50", "p99", "max", "service p50", "service p99"],
                legend=alt.Legend(orient="bottom", columns=3),
            ),
            strokeDash=alt.condition(
                "indexof(datum.series, 'service') >= 0",
                alt.value([4, 3]),
                alt.value([1, 0]),
            ),
        )
        .properties(title="Latency (corrected; service dashed)", width=_WIDTH, height=150)
    )
    failed = sum(int(per[f"errors_{k}"].fill_null(0).sum()) for k in _store.ERROR_KINDS)
    errors: alt.Chart
    if failed:
        errors = charts.error_bars(
            per, title="Errors by kind", width=_WIDTH, height=150, domain=(since, end)
        )
    else:
        # A sentence, not an empty chart with an empty legend.
        errors = (
            alt.Chart(pl.DataFrame({"text": ["No request failed"]}))
            .mark_text(size=13, color="#555")
            .encode(text="text:N")
            .properties(title="Errors by kind", width=_WIDTH, height=150)
        )
    closed = per["target_rps"].null_count() == len(per)
    gauges = ["in_flight", "missed", *(["active_users"] if closed else [])]
    load = _lines(
        per.select("elapsed_s", *gauges),
        x,
        "requests" if not closed else "requests / users",
        "In flight and missed arrivals" + (", active users" if closed else ""),
    )
    top = alt.hconcat(rate, latency).resolve_scale(color="independent")
    bottom = alt.hconcat(errors, load).resolve_scale(color="independent")
    out: alt.VConcatChart = alt.vconcat(top, bottom).resolve_scale(color="independent")
    return out


def live_frame(per: pl.DataFrame, lat: pl.DataFrame, since: float, end: float) -> str:
    """The four panels of a frame drawn while the run goes (see ``notebook.sparks``)."""
    c = _sparks.COLOURS
    span = (since, max(end, since + 1))

    def pts(frame: pl.DataFrame, col: str) -> list[tuple[float, float]]:
        f = frame.select("elapsed_s", col).drop_nulls()
        return list(zip(f["elapsed_s"].to_list(), f[col].to_list(), strict=True))

    def series(name: str) -> list[tuple[float, float]]:
        f = lat.filter(pl.col("series") == name)
        return list(zip(f["elapsed_s"].to_list(), f["ms"].to_list(), strict=True))

    rate = _sparks.panel(
        "Rate: achieved vs target",
        [
            # The target first, so the achieved line is drawn over it where they agree.
            _sparks.Series("target", pts(per, "target_rps"), c[1], dashed=True),
            _sparks.Series("achieved", pts(per, "achieved_ips"), c[0]),
        ],
        span,
        y_title="iterations/s",
    )
    latency = _sparks.panel(
        "Latency (corrected; service dashed)",
        [
            _sparks.Series("p50", series("p50"), c[0]),
            _sparks.Series("p99", series("p99"), c[1]),
            _sparks.Series("max", series("max"), c[2]),
            _sparks.Series("service p50", series("service p50"), c[3], dashed=True),
            _sparks.Series("service p99", series("service p99"), c[4], dashed=True),
        ],
        span,
        y_title="ms",
        symlog=True,
    )
    stacked, bottom = [], [0.0] * len(per)
    xs = per["elapsed_s"].to_list()
    for i, kind in enumerate(_store.ERROR_KINDS):
        values = per[f"errors_{kind}"].fill_null(0).to_list()
        if not any(values):
            continue
        tops = [b + v for b, v in zip(bottom, values, strict=True)]
        stacked.append(
            _sparks.Series(kind, list(zip(xs, tops, strict=True)), c[i % len(c)], bars=True,
                           bottoms=list(bottom))
        )  # fmt: skip
        bottom = tops
    if stacked:
        errors = _sparks.panel("Errors by kind", stacked, span, y_title="errors/s")
    else:
        errors = (
            "<div style='width:358px;font-family:sans-serif;font-size:11px'>"
            "<b>Errors by kind</b><p>No request failed so far.</p></div>"
        )
    closed = per["target_rps"].null_count() == len(per)
    gauges = [
        _sparks.Series("in flight", pts(per, "in_flight"), c[0]),
        _sparks.Series("missed", pts(per, "missed"), c[1]),
    ]
    if closed:
        gauges.append(_sparks.Series("active users", pts(per, "active_users"), c[2]))
    load = _sparks.panel(
        "In flight and missed arrivals" + (", active users" if closed else ""),
        gauges,
        span,
        y_title="requests" if not closed else "requests / users",
    )
    return (
        "<div style='display:flex;flex-wrap:wrap;gap:0.5rem 1.5rem'>"
        + rate + latency + errors + load
        + "</div>"
    )  # fmt: skip


class Dashboard:
    """What :meth:`loadpilot.Run.live` shows: achieved vs target rate, corrected latency
    p50/p99/max and service-time p50/p99 per second (exact, all tasks together), errors by
    kind, requests in flight and missed arrivals. It freezes on the final state, with the
    run's summary, when the run ends."""

    def __init__(self, run: Run, *, every_s: float = 1.0, window_s: float | None = 300.0) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self.run = run
        self.every_s = every_s
        self.window_s = window_s
        self.frames = 0
        self.render_s = 0.0
        self._lat = _HlogTail(run.path / _store.LATENCY_LOG)
        self._svc = _HlogTail(run.path / _store.SERVICE_LOG)
        self._handle: Any = None
        self._lock = threading.RLock()
        self._final: dict[str, str] | None = None
        self._thread: threading.Thread | None = None
        self._lat_rows: dict[float, list[tuple[float, str, float]]] = {}
        #: The rows of the seconds drawn (the last ``window_s``), read as they close: a frame
        #: costs the same at the run's first minute and at its tenth hour.
        self._window = _store.empty_metrics()
        self._seen = 0
        self._missed = 0

    # -- rendering ---------------------------------------------------------------------------

    def _latency_frame(self, since: float) -> pl.DataFrame:
        """Per-second corrected p50/p99/max and service p50/p99, all tasks together; each
        closed second is computed once."""
        lat, svc = self._lat.read(), self._svc.read()
        for t, h in lat.items():
            if t not in self._lat_rows:
                self._lat_rows[t] = _series.latency_points(t, h, svc.get(t))
        rows = [r for t, rs in self._lat_rows.items() if t >= since for r in rs]
        return pl.DataFrame(rows, schema=_LAT_SCHEMA, orient="row")

    def _rows(self) -> pl.DataFrame:
        """Every row (tasks' and request names') of the seconds drawn, with those closed
        since the last call."""
        with self._lock:
            new, self._seen = self.run._rows_after(self._seen)
            if new.height:
                self._missed += int(_store.task_rows(new)["missed"].sum())
                self._window = pl.concat([self._window, new])
                if self.window_s:
                    end = float(self._window["elapsed_s"].max()) + 1  # type: ignore[arg-type]
                    keep = pl.col("elapsed_s") >= end - self.window_s - 1
                    self._window = self._window.filter(keep)
            return self._window

    def data(self) -> tuple[pl.DataFrame, pl.DataFrame, float, float]:
        """What the charts draw, for the seconds closed so far (the last ``window_s``):
        per-second rows (all tasks), per-second latency series, and the time span."""
        m = _store.task_rows(self._rows())
        end = float(m["elapsed_s"].max() or 0.0) + 1 if len(m) else 0.0  # type: ignore[arg-type]
        since = max(0.0, end - self.window_s) if self.window_s else 0.0
        per = _series.per_second(m.filter(pl.col("elapsed_s") >= since)).select(PER_COLUMNS)
        return (
            per.cast(dict.fromkeys(PER_COLUMNS, pl.Float64)),
            self._latency_frame(since),
            since,
            end,
        )

    def chart(self) -> alt.VConcatChart:
        """The dashboard's charts as an Altair chart (what each frame draws)."""
        return dashboard_chart(*self.data())

    def _headline(self, final: Summary | None) -> str:
        run = self.run
        m = _store.task_rows(self._rows())
        planned = run.plan.duration_s
        if final is not None:
            s = final
            state = f"■ {html.escape(s.ended)}"
            figures = (
                f"{s.overall.requests:,} requests · {s.overall.achieved_rps:,.1f} rps · "
                f"p50 {_fmt(s.overall.latency_ms.p50)} · p99 {_fmt(s.overall.latency_ms.p99)} · "
                f"max {_fmt(s.overall.latency_ms.max)} · errors {s.overall.errors:,} · "
                f"missed {s.overall.missed:,}"
            )
            elapsed = s.duration_s
        else:
            state = "● running"
            elapsed = run.elapsed_s
            if len(m):
                last_t = m["elapsed_s"].max()
                last = m.filter(pl.col("elapsed_s") == last_t)
                target = last["target_rps"].sum() if last["target_rps"].null_count() == 0 else None
                h = self._lat.intervals.get(float(last_t))  # type: ignore[arg-type]
                figures = (
                    f"{float(last['achieved_rps'].sum()):,.1f} rps"
                    + (
                        f" · {float(last.select(_store.ACHIEVED_IPS.sum()).item()):,.1f} "
                        f"iterations/s (target {float(target):,.1f})"
                        if target is not None
                        else ""
                    )
                    + f" · p50 {_fmt(h.percentile(50) if h else None)}"
                    + f" · p99 {_fmt(h.percentile(99) if h else None)}"
                    + f" · errors {int(last['errors'].sum()):,}/s"
                    + f" · in flight {int(last['in_flight'].max() or 0):,}"  # type: ignore[arg-type]
                    + f" · missed {self._missed:,}"
                )
            else:
                figures = "waiting for the first second"
        return (
            f"<div style='font-family: system-ui, sans-serif; margin: 0.25rem 0'>"
            f"<strong>{html.escape(run.plan.name)}</strong> {state} · "
            f"{elapsed:,.0f} s of {planned:,.0f} s · {figures}</div>"
        )

    def _bundle(self) -> tuple[dict[str, str], bool]:
        """The current frame, and whether it is the final one."""
        t0 = time.perf_counter()
        # Read without waiting: waiting on the run from this thread would run its end hooks.
        final = self.run._summary_if_done()
        if final is not None:
            self.run._write_parquet()
            final = self.run._summary_if_done()  # now with its validity
        head = self._headline(final)
        svg = ""
        if self._rows().height:
            if final is not None:
                import vl_convert as vlc

                svg = vlc.vegalite_to_svg(self.chart().to_dict())
            else:
                svg = live_frame(*self.data())
        body = head + f"<div class='lp-live'>{svg}</div>"
        if final is None:
            # Per request name, the last second (the final frame's summary has the whole run).
            body += requests_now(_store.request_rows(self._rows()))
        if final is not None:
            from loadpilot.analysis.traces import html_section

            body += final.html() + html_section(self.run, 5, "<h4>Slowest requests</h4>")
        self.render_s += time.perf_counter() - t0
        self.frames += 1
        bundle = {"text/html": body, "text/plain": f"<Dashboard of {self.run.plan.name!r}>"}
        return bundle, final is not None

    # -- display -----------------------------------------------------------------------------

    def show(self) -> Dashboard:
        """Displays the dashboard and keeps it updated until the run ends."""
        from IPython.display import display

        with self._lock:
            bundle, final = self._bundle()
            if final:
                self._final = bundle
            self._handle = display(bundle, raw=True, display_id=True)  # type: ignore[no-untyped-call]
        if not final:
            self._thread = threading.Thread(target=self._loop, name="loadpilot-live", daemon=True)
            self._thread.start()
            self.run._on_end(self.finish)
        return self

    def _update(self) -> None:
        """Draws a new frame, unless the final one was drawn already."""
        with self._lock:
            if self._final is not None:
                return
            bundle, final = self._bundle()
            if final:
                self._final = bundle
            self._handle.update(bundle, raw=True)

    def _loop(self) -> None:
        next_at = time.monotonic()
        try:
            while not self.run.done:
                next_at += self.every_s
                self.run.poll(max(0.0, next_at - time.monotonic()))
                self._update()
            for _ in range(50):  # the summary is written a moment after the run ends
                self._update()
                if self._final is not None:
                    break
                time.sleep(0.1)
        except Exception as e:  # a drawing problem must not take the run down
            with self._lock:
                self._handle.update({"text/plain": f"dashboard stopped: {e!r}"}, raw=True)

    def finish(self) -> None:
        """Shows the final frame from the calling thread: ``run.wait()`` calls it in the
        waiting cell, so the final frame reaches notebook runners that only listen to the cell
        being executed (nbclient, nbval), whichever thread drew it first."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._update()
        with self._lock:
            if self._final is not None:
                self._handle.update(self._final, raw=True)

    def _repr_html_(self) -> str:
        return self._bundle()[0]["text/html"]
