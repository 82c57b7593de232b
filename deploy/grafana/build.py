"""Builds the Grafana dashboard of LoadPilot's Prometheus metrics (`loadpilot.json`, beside
this file) with Grafana's own Foundation SDK: rate against target, error ratio by kind, latency
quantiles from the buckets, service time beside corrected latency, in flight and active users,
missed arrivals, agents; variables for the run and the tasks, and the Prometheus data source.

    python deploy/grafana/build.py          # writes deploy/grafana/loadpilot.json
    python deploy/grafana/build.py --check  # fails if the committed file is not what this builds
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard as DashboardBuilder
from grafana_foundation_sdk.builders.dashboard import (
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

HERE = Path(__file__).resolve().parent
OUT = HERE / "loadpilot.json"

DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'run="$run", task=~"$task"'
#: The window every rate and quantile is read over (Grafana's own choice for the scrape interval
#: and the graph's step).
WINDOW = "$__rate_interval"


def change(metric: str) -> str:
    """How much each of a run's counters grew over the window: the difference of its newest
    sample and the newest sample a window earlier. Each sample a run exports is stamped with the
    end of the interval it closes, so the difference is exact whatever the scrapes' phase, and a
    scrape missed or failed only widens the span. Prometheus's ``rate()`` would extrapolate its
    window past the newest sample by half a scrape interval when a sample is missing near the
    window's end, and so read low at the right edge of a live graph."""
    x = f"{metric}{{{SEL}}}"
    return f"({x} - {x} offset {WINDOW})"


def per_second(metric: str, by: str) -> str:
    """A run's counters as a rate: their ``change`` over the seconds between the two samples'
    stamps (every series of a run carries the same stamps, so a sum of rates is the rate of
    the sum)."""
    x = f"{metric}{{{SEL}}}"
    return f"sum by ({by}) ({change(metric)} / (timestamp({x}) - timestamp({x} offset {WINDOW})))"


def query(expr: str, legend: str, ref: str) -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)


def panel(title: str, unit: str, description: str, *queries: Dataquery) -> Timeseries:
    p = (
        Timeseries()
        .title(title)
        .unit(unit)
        .description(description)
        .datasource(DS)
        .height(8)
        .span(12)
    )
    for q in queries:
        p = p.with_target(q)
    return p


def quantile(q: float, metric: str, legend: str, ref: str, exemplars: bool = False) -> Dataquery:
    """A quantile estimated from the histogram's buckets; with ``exemplars``, the buckets'
    exemplars (the trace ids of the run's kept slow requests) are drawn on the panel."""
    return query(
        f"histogram_quantile({q}, sum by (le) {change(metric + '_bucket')})", legend, ref
    ).exemplar(exemplars)


def build() -> DashboardBuilder:
    return (
        DashboardBuilder("LoadPilot")
        .uid("loadpilot-runs")
        .tags(["loadpilot", "load-testing"])
        .refresh("5s")
        .time("now-15m", "now")
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            QueryVariable("run")
            .label("Run")
            .datasource(DS)
            .query("label_values(loadpilot_requests_total, run)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
        .with_variable(
            QueryVariable("task")
            .label("Task")
            .datasource(DS)
            .query('label_values(loadpilot_requests_total{run="$run"}, task)')
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
        .with_row(Row("Load"))
        .with_panel(
            panel(
                "Rate against target",
                "short",
                "Iterations that ended per second and the profile's rate (open model), per task: "
                "the rate counts iterations, so a task of two requests sends twice as many "
                "requests.",
                query(per_second("loadpilot_iterations_total", "task"), "{{task}}", "A"),
                query(f"sum by (task) (loadpilot_target_rate{{{SEL}}})", "{{task}} target", "B"),
            )
        )
        .with_panel(
            panel(
                "Error ratio by kind",
                "percentunit",
                "Failed requests of each kind over all completed requests.",
                query(
                    f"sum by (kind) {change('loadpilot_errors_total')} / scalar(sum "
                    f"{change('loadpilot_requests_total')})",
                    "{{kind}}",
                    "A",
                ),
            )
        )
        .with_row(Row("Latency"))
        .with_panel(
            panel(
                "Corrected latency quantiles",
                "s",
                "From the instant each request was due (coordinated omission corrected), estimated "
                "from the histogram's buckets; exact figures are in the run's own summary. The "
                "points are exemplars: the trace ids of the run's slowest requests (`loadpilot "
                "slowest RUN_DIR` lists them).",
                quantile(0.5, "loadpilot_request_duration_seconds", "p50", "A"),
                quantile(0.9, "loadpilot_request_duration_seconds", "p90", "B"),
                quantile(0.99, "loadpilot_request_duration_seconds", "p99", "C", exemplars=True),
            )
        )
        .with_panel(
            panel(
                "Service time beside corrected latency (p99)",
                "s",
                "Their gap is the time requests waited in the generator before they were sent.",
                quantile(0.99, "loadpilot_request_duration_seconds", "corrected p99", "A"),
                quantile(0.99, "loadpilot_service_duration_seconds", "service p99", "B"),
            )
        )
        .with_row(Row("Generator"))
        .with_panel(
            panel(
                "In flight and active users",
                "short",
                "Requests in flight; virtual users active (closed model).",
                query('sum(loadpilot_in_flight{run="$run"})', "in flight", "A"),
                query('sum(loadpilot_active_users{run="$run"})', "active users", "B"),
            )
        )
        .with_panel(
            panel(
                "Missed arrivals",
                "reqps",
                "Arrivals per second that found every connection busy (they count from when they "
                "were due).",
                query(per_second("loadpilot_missed_total", "task"), "{{task}}", "A"),
            )
        )
        .with_panel(
            panel(
                "Agents",
                "short",
                "A distributed run's agents by state (running, done, lost).",
                query('sum by (state) (loadpilot_agents{run="$run"})', "{{state}}", "A"),
            )
        )
    )


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT} is not what {Path(__file__).name} builds: run it")
        return
    OUT.write_text(text)
    print(f"written {OUT} ({len(json.loads(text)['panels'])} panels)")


if __name__ == "__main__":
    main()
