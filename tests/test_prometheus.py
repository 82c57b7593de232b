"""Prometheus metrics of runs, scraped by a real Prometheus (Debian's package) on loopback every
second and queried over its HTTP API."""

from __future__ import annotations

import bisect
import itertools
import json
import math
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import exposition, get, read_with_hdrh, samples, total

import loadpilot as lp
from loadpilot.cluster.server import free_port
from loadpilot.exporter import LATENCY_BUCKETS

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ROOT = Path(__file__).resolve().parent.parent


class Prometheus:
    def __init__(self, tmp: Path, scrape: list[str], features: Sequence[str] = ()) -> None:
        self.port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: loadpilot\n    static_configs:\n"
            f"      - targets: {json.dumps(scrape)}\n"
        )
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             *(f"--enable-feature={f}" for f in features)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("prometheus did not become ready")

    def query(self, q: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": q} | ({"time": f"{at:.3f}"} if at is not None else {})
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def exemplars(self, q: str, start: float, end: float) -> list[dict[str, Any]]:
        """The exemplars of the series ``q`` selects, as the exemplar API gives them."""
        params = {"query": q, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        url = f"http://127.0.0.1:{self.port}/api/v1/query_exemplars?" + urllib.parse.urlencode(
            params
        )
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return [e for series in body["data"] for e in series["exemplars"]]

    def value(self, q: str, at: float | None = None) -> float | None:
        result = self.query(q, at)
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    started: list[Prometheus] = []

    def start(scrape: list[str], features: Sequence[str] = ()) -> Prometheus:
        p = Prometheus(tmp_path / f"prom{len(started)}", scrape, features)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
        return text


def scraped_when(port: int, ready: Callable[[str], bool], timeout_s: float = 10) -> str:
    """The exporter's text once ``ready(text)`` holds (it catches up with the run's files a
    few times a second), or a failure after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = scrape_text(port)
        if ready(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"the exporter did not catch up:\n{text[-2000:]}")
        time.sleep(0.1)


def hlog_buckets(path: Path) -> list[int]:
    """Cumulative counts at each of ``LATENCY_BUCKETS`` of every value in an ``.hlog``, read
    by hdrh, each value placed by the highest latency its HdrHistogram bucket stands for."""
    counts = [0] * len(LATENCY_BUCKETS)
    for h in read_with_hdrh(path):
        for item in h.get_recorded_iterator():
            v = item.value_iterated_to / 1e6
            first = bisect.bisect_left(LATENCY_BUCKETS, v)
            for j in range(first, len(LATENCY_BUCKETS)):
                counts[j] += item.count_at_value_iterated_to
    return counts


def test_prometheus_sees_the_target_rate_and_the_runs_own_p99(
    tmp_path: Path, prometheus: Callable[[list[str]], Prometheus]
) -> None:
    port = free_port()
    with lp.start_target(delay_ms=1, delay_max_ms=6) as target:
        plan = lp.Plan(
            name="scraped",
            target=target.url,
            load=lp.OpenLoad(stages=[lp.Constant(rate=500, duration_s=20)]),
            tasks=[get("browse", "/", weight=4), get("buy", "/json")],
        )
        prom = prometheus([f"127.0.0.1:{port}"])
        r = lp.start(plan, tmp_path / "run", prometheus=f"127.0.0.1:{port}")
        # While it runs: the scraped request rate tracks the target rate. The newest sample
        # is the last closed second, one to two seconds old under load; a window that runs
        # past the newest sample by more than 1.1 scrape intervals is extrapolated by only
        # half of one (Prometheus's rule: 350/s read for 500), so each rate is asked of the
        # window that ended 3 s before.
        time.sleep(10)
        rates = []
        for _ in range(8):
            time.sleep(1)
            v = prom.value("sum(rate(loadpilot_requests_total[5s]))", at=time.time() - 3)
            if v is not None:
                rates.append(v)
        r.wait()
        s = r.summary()
        # The last seconds scraped.
        deadline = time.monotonic() + 10
        while prom.value('sum(loadpilot_requests_total{scenario="scraped"})') != 10_000:
            assert time.monotonic() < deadline, "Prometheus never scraped the run's total"
            time.sleep(0.2)
    assert len(rates) >= 6, rates
    within = [v for v in rates if abs(v - 500) <= 25]
    assert abs(statistics.median(rates) - 500) <= 25, rates
    assert len(within) >= len(rates) * 0.75, rates
    # After it: every bucket the exporter serves is the count hdrh reads from the run's own
    # log at that bound, and so the quantile Prometheus estimates from the buckets lands in
    # the bucket of the run's own p99, for the whole run and per task. The estimate is of the
    # buckets' totals: a rate() over the run holds only what came after its first scrape (and
    # is extrapolated bucket by bucket), so its p99 is of other requests, and lands in the next
    # bucket when the run's own sits just under a bound (7.487 ms against 7.5 read 7.85). Of
    # the totals it is exact: hdrh's p99 is the value at rank ceil(0.99 n), and Prometheus
    # interpolates inside the first bucket whose count reaches 0.99 n, the one holding it.
    text = scraped_when(
        port, lambda x: total(x, "loadpilot_requests_total", scenario="scraped") == 10_000
    )
    served = {
        float(labels["le"]): v
        for labels, v in samples(
            text, "loadpilot_request_duration_seconds_bucket", scenario="scraped"
        )
        if labels["task"] == "browse"
    }
    summed: dict[float, float] = {}
    for labels, v in samples(text, "loadpilot_request_duration_seconds_bucket", scenario="scraped"):
        summed[float(labels["le"])] = summed.get(float(labels["le"]), 0) + v
    expected = hlog_buckets(r.path / "latency.hlog")
    assert [summed[le] for le in LATENCY_BUCKETS] == expected
    assert summed[float("inf")] == 10_000 and len(served) == len(LATENCY_BUCKETS) + 1
    for task, exact in [
        (None, s.overall.latency_ms.p99),
        ("browse", s.task("browse").latency_ms.p99),
    ]:
        where = 'scenario="scraped"' + ("" if task is None else f',task="{task}"')
        est = prom.value(
            "histogram_quantile(0.99, sum by (le) "
            f"(loadpilot_request_duration_seconds_bucket{{{where}}}))"
        )
        assert est is not None and exact is not None
        b_est = bisect.bisect_left(LATENCY_BUCKETS, est)
        b_exact = bisect.bisect_left(LATENCY_BUCKETS, exact / 1000)
        assert b_est == b_exact, (task, est, exact, LATENCY_BUCKETS[b_exact])
    # Counters are the run's own totals.
    # This run's series: the exporter of this process serves every run it has exported.
    total_seen = prom.value('sum(loadpilot_requests_total{scenario="scraped"})')
    assert total_seen == s.overall.requests == 10_000
    ok = prom.value('sum(loadpilot_requests_total{scenario="scraped",status_class="2xx"})')
    assert ok == 10_000
    assert prom.value('sum(loadpilot_errors_total{scenario="scraped"})') == 0
    assert prom.value('loadpilot_target_rate{task="browse"}') == pytest.approx(400)
    # The other families, each against the run's own figure.
    assert total(text, "loadpilot_missed_total", scenario="scraped") == s.overall.missed
    assert total(text, "loadpilot_service_duration_seconds_count", scenario="scraped") == 10_000
    service = samples(text, "loadpilot_service_duration_seconds_bucket", scenario="scraped")
    assert [
        sum(v for lb, v in service if float(lb["le"]) == le) for le in LATENCY_BUCKETS
    ] == hlog_buckets(r.path / "service.hlog")
    assert total(text, "loadpilot_in_flight", scenario="scraped") == 0, (
        "nothing in flight once it ended"
    )


def test_the_exposition_names_only_run_scenario_task_and_class_labels(tmp_path: Path) -> None:
    port = free_port()
    with lp.start_target() as target:
        plan = lp.Plan(
            name="labels",
            target=target.url,
            load=lp.OpenLoad(stages=[lp.Constant(rate=50, duration_s=2)]),
            tasks=[get("a", "/status/503"), get("b", "/?id=42")],
        )
        r = lp.start(plan, tmp_path / "labelled", prometheus=f"127.0.0.1:{port}")
        # Before its first second closes, the run's series are there at zero (so rate() has its
        # baseline from the first scrape).
        early = scraped_when(port, lambda x: bool(samples(x, "loadpilot_requests_total")))
        assert (
            not (tmp_path / "labelled" / "metrics.jsonl").exists()
            or not (tmp_path / "labelled" / "metrics.jsonl").read_text()
        )
        zeros = samples(early, "loadpilot_requests_total", run="labelled")
        assert zeros and all(v == 0 for _, v in zeros), zeros
        r.wait()
    text = scraped_when(port, lambda x: total(x, "loadpilot_requests_total", run="labelled") == 100)
    a = 'run="labelled",scenario="labels"'
    assert f'loadpilot_requests_total{{{a},status_class="5xx",task="a"}} 50.0' in text
    assert (
        'loadpilot_errors_total{kind="status",run="labelled",scenario="labels",task="a"} 50.0'
        in text
    )
    parsed = exposition(text)
    assert all(math.isfinite(s.value) for s in parsed), [
        s for s in parsed if not math.isfinite(s.value)
    ]
    # No URL becomes a label: a request's default name is its path as written, without the
    # query, and only the per-request families carry it (bounded by max_request_names).
    keys = {k for s in parsed for k in s.labels}
    assert keys <= {
        "run", "scenario", "task", "request", "status_class", "kind", "state", "verdict", "le"
    }  # fmt: skip
    assert "id=42" not in text
    # The ended run's validity: one verdict at 1, the others at 0, the summary's.
    verdicts = {
        s.labels["verdict"]: s.value
        for s in parsed
        if s.name == "loadpilot_run_validity" and s.labels["run"] == "labelled"
    }
    judged = r.summary().validity
    assert judged is not None
    assert verdicts == {v: float(v == judged.verdict) for v in ("valid", "suspect", "invalid")}
    named = [s for s in parsed if "request" in s.labels]
    assert {s.labels["request"] for s in named if s.labels["run"] == "labelled"} == {
        "GET /status/503",
        "GET /",
    }
    assert all(s.name.startswith("loadpilot_named_") for s in named)
    assert r.summary().overall.requests == 100


def test_every_dashboard_panel_has_data_for_a_distributed_run(
    tmp_path: Path, prometheus: Callable[[list[str]], Prometheus]
) -> None:
    build = ROOT / "deploy" / "grafana" / "build.py"
    check = subprocess.run(
        [sys.executable, str(build), "--check"], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stderr
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "loadpilot.json").read_text())
    port = free_port()
    with lp.start_target(delay_ms=1) as target:
        plan = lp.Plan(
            name="dashboard",
            target=target.url,
            load=lp.OpenLoad(stages=[lp.Constant(rate=200, duration_s=12)]),
            tasks=[get("browse", "/", weight=3), get("fail", "/status/500")],
        )
        prom = prometheus([f"127.0.0.1:{port}"])
        r = lp.start(plan, tmp_path / "dash", agents=2, prometheus=f"127.0.0.1:{port}")
        time.sleep(9)
        empty = []
        queries = 0
        for p in dashboard["panels"]:
            for t in p.get("targets", []):
                expr = (
                    t["expr"]
                    .replace("$run", "dash")
                    .replace("$task", ".*")
                    .replace("$__rate_interval", "5s")
                )
                queries += 1
                values = [float(x["value"][1]) for x in prom.query(expr)]
                # A query over nothing (a quantile of no buckets, a ratio of zeros) answers NaN:
                # no data, however many series it returns.
                if not values or not all(math.isfinite(v) for v in values):
                    empty.append((p["title"], expr, values))
        r.wait()
        s = r.summary()
        text = scraped_when(
            port,
            lambda x: (
                total(x, "loadpilot_requests_total", scenario="dashboard") == s.overall.requests
            ),
        )
    assert queries >= 10
    assert not empty, empty
    # The distributed exporter's figures are the merged summary's.
    assert (
        total(text, "loadpilot_requests_total", scenario="dashboard") == s.overall.requests == 2400
    )
    assert total(text, "loadpilot_errors_total", scenario="dashboard") == s.overall.errors == 600
    assert total(text, "loadpilot_iterations_total", scenario="dashboard") == s.overall.iterations
    assert total(text, "loadpilot_request_duration_seconds_count", scenario="dashboard") == 2400
    assert total(text, "loadpilot_agents", scenario="dashboard", state="done") == 2
    assert total(text, "loadpilot_agents", scenario="dashboard", state="lost") == 0


def test_a_closed_model_run_exports_its_active_users(tmp_path: Path) -> None:
    port = free_port()
    with lp.start_target(delay_ms=5) as target:
        plan = lp.Plan(
            name="closed-users",
            target=target.url,
            load=lp.ClosedLoad(stages=[lp.Constant(rate=3, duration_s=3)], think_s=0.05),
            tasks=[get("a")],
        )
        r = lp.start(plan, tmp_path / "closed", prometheus=f"127.0.0.1:{port}")
        text = scraped_when(
            port, lambda x: total(x, "loadpilot_requests_total", scenario="closed-users") > 0
        )
        assert total(text, "loadpilot_active_users", scenario="closed-users") == 3
        r.wait()


def _dashboard_queries() -> dict[str, list[dict[str, Any]]]:
    """The dashboard's panels' queries by panel title."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "loadpilot.json").read_text())
    return {p["title"]: p.get("targets", []) for p in dashboard["panels"]}


def _as_grafana_sends(expr: str, run: str) -> str:
    return expr.replace("$run", run).replace("$task", ".*").replace("$__rate_interval", "5s")


class FailingScrapes:
    """A loopback proxy in front of an exporter that answers every ``every``-th scrape with a
    503: Prometheus then misses that scrape's sample, as it does when a scrape is late, slow or
    lands just before a second closes."""

    def __init__(self, upstream: int, every: int = 3) -> None:
        seen = itertools.count(1)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                if next(seen) % every == 0:
                    self.send_error(503)
                    return
                req = urllib.request.Request(
                    f"http://127.0.0.1:{upstream}{self.path}",
                    headers={"Accept": self.headers.get("Accept", "*/*")},
                )
                try:
                    with urllib.request.urlopen(req, timeout=5) as r:
                        body, kind = r.read(), r.headers["Content-Type"]
                except OSError:  # the exporter is not serving yet
                    self.send_error(502)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_the_dashboard_reads_true_at_now_when_scrapes_are_missed_and_draws_exemplars(
    tmp_path: Path, prometheus: Callable[..., Prometheus]
) -> None:
    """Every third scrape fails, so a second's sample is missing every three seconds (what a
    late or slow scrape does now and then). `rate()` then reads a window that ends just past a
    missing sample up to a fifth low (Prometheus extrapolates only half a scrape interval past
    the newest sample), which is what the live edge of the dashboard once showed. The dashboard's
    own rate query, asked at "now" as Grafana asks at a graph's right edge, reads true on every
    reading; its p99 draws the kept slow requests as exemplars."""
    port = free_port()
    panels = _dashboard_queries()
    (rate_query, _target) = panels["Rate against target"]
    latency = [t for t in panels["Corrected latency quantiles"] if t.get("exemplar")]
    assert len(latency) == 1, "the p99 draws the exemplars"
    series = 'loadpilot_requests_total{run="edge"}'
    proxy = FailingScrapes(port)
    with lp.start_target(delay_ms=1, delay_max_ms=8) as target:
        plan = lp.Plan(
            name="edge", target=target.url,
            load=lp.OpenLoad(stages=[lp.Constant(rate=400, duration_s=24)]),
            tasks=[get("a", "/")],
        )  # fmt: skip
        try:
            # Prometheus first, scraping already when the run begins (a slow start of its own
            # would leave too little of the run to read).
            prom = prometheus([f"127.0.0.1:{proxy.port}"], features=["exemplar-storage"])
            started = time.time()
            r = lp.start(plan, tmp_path / "edge", prometheus=f"127.0.0.1:{port}")
            # Once Prometheus holds two windows of the run (the query reads a window back).
            deadline = time.monotonic() + 20
            while (prom.value(f"count_over_time({series}[10s])") or 0) < 6:
                assert time.monotonic() < deadline, "Prometheus never held ten seconds of the run"
                time.sleep(0.2)
            readings = []
            for _ in range(12):
                readings.append(prom.value(_as_grafana_sends(rate_query["expr"], "edge")))
                time.sleep(0.37)
            running = not r.done
            r.wait()
        finally:
            proxy.close()
    assert running, "every reading was taken while the run went"
    assert all(v is not None and abs(v - 400) <= 400 * 0.02 for v in readings), readings
    # The cause, shown on the same samples: they are missing every third second, and rate()
    # over the same window, swept across those seconds, reads low where the window ends just
    # past a missing one; the dashboard's query reads true at every instant.
    # The sweep: from a window's worth after the first sample to the last whole second.
    stamps = [float(t) for t, _ in prom.query(f"{series}[2m]", time.time())[0]["values"]]
    whole = [s for s in stamps if abs((s - stamps[0]) - round(s - stamps[0])) < 0.01]
    assert 2.0 in [round(b - a, 1) for a, b in itertools.pairwise(whole)], stamps
    at = [t for i in range(400) if (t := whole[0] + 9 + i * 0.05) <= whole[-1]]
    assert len(at) >= 80, ("too little of the run was scraped to sweep", stamps)
    extrapolated = [prom.value(f"sum(rate({series}[5s] offset 3s))", t) for t in at]
    assert min(v or 0 for v in extrapolated) < 400 * 0.9, extrapolated
    exact = [prom.value(_as_grafana_sends(rate_query["expr"], "edge"), t) for t in at]
    assert all(v is not None and abs(v - 400) <= 400 * 0.02 for v in exact), exact
    # Exemplars: the p99 panel's query finds, in the buckets it reads, the trace ids and
    # latencies of requests the run kept.
    both = pl.concat([r.slowest(above=None), r.slowest(sample=True)])
    kept = {k["trace_id"]: k["latency_ms"] for k in both.iter_rows(named=True)}
    found = prom.exemplars(_as_grafana_sends(latency[0]["expr"], "edge"), started, time.time())
    assert len(found) >= 10, found
    for e in found:
        tid = e["labels"]["trace_id"]
        assert tid in kept and abs(float(e["value"]) * 1000 - kept[tid]) < 1e-6, e
