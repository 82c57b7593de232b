"""Prometheus metrics of runs, scraped by a real Prometheus (Debian's package) on loopback every
second and queried over its HTTP API."""

from __future__ import annotations

import bisect
import json
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import get

import loadpilot as lp
from loadpilot.cluster.server import free_port
from loadpilot.exporter import LATENCY_BUCKETS

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ROOT = Path(__file__).resolve().parent.parent


class Prometheus:
    def __init__(self, tmp: Path, scrape: list[str]) -> None:
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
             f"--web.listen-address=127.0.0.1:{self.port}"],
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

    def value(self, q: str, at: float | None = None) -> float | None:
        result = self.query(q, at)
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    started: list[Prometheus] = []

    def start(scrape: list[str]) -> Prometheus:
        p = Prometheus(tmp_path / f"prom{len(started)}", scrape)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
        return text


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
        time.sleep(2.5)  # the last seconds scraped
    assert len(rates) >= 6, rates
    within = [v for v in rates if abs(v - 500) <= 25]
    assert abs(statistics.median(rates) - 500) <= 25, rates
    assert len(within) >= len(rates) * 0.75, rates
    # After it: the quantile Prometheus estimates from the buckets lands within one bucket of
    # the run's own p99, for the whole run and per task.
    for task, exact in [
        (None, s.overall.latency_ms.p99),
        ("browse", s.task("browse").latency_ms.p99),
    ]:
        where = "" if task is None else f'task="{task}"'
        est = prom.value(
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(loadpilot_request_duration_seconds_bucket{{{where}}}[1m])))"
        )
        assert est is not None and exact is not None
        b_est = bisect.bisect_left(LATENCY_BUCKETS, est)
        b_exact = bisect.bisect_left(LATENCY_BUCKETS, exact / 1000)
        assert abs(b_est - b_exact) <= 1, (task, est, exact, LATENCY_BUCKETS[b_exact])
    # Counters are the run's own totals.
    # This run's series: the exporter of this process serves every run it has exported.
    total = prom.value('sum(loadpilot_requests_total{scenario="scraped"})')
    assert total == s.overall.requests == 10_000
    ok = prom.value('sum(loadpilot_requests_total{scenario="scraped",status_class="2xx"})')
    assert ok == 10_000
    assert prom.value('sum(loadpilot_errors_total{scenario="scraped"})') == 0
    assert prom.value('loadpilot_target_rate{task="browse"}') == pytest.approx(400)


def test_the_exposition_names_only_run_scenario_task_and_class_labels(tmp_path: Path) -> None:
    port = free_port()
    with lp.start_target() as target:
        plan = lp.Plan(
            name="labels",
            target=target.url,
            load=lp.OpenLoad(stages=[lp.Constant(rate=50, duration_s=2)]),
            tasks=[get("a", "/status/503"), get("b", "/?id=42")],
        )
        r = lp.run(plan, tmp_path / "labelled", prometheus=f"127.0.0.1:{port}")
    time.sleep(0.5)
    text = scrape_text(port)
    a = 'run="labelled",scenario="labels"'
    assert f'loadpilot_requests_total{{{a},status_class="5xx",task="a"}} 50.0' in text
    assert (
        'loadpilot_errors_total{kind="status",run="labelled",scenario="labels",task="a"} 50.0'
        in text
    )
    assert "loadpilot_request_duration_seconds_bucket" in text
    # No URL becomes a label: a request's default name is its path as written, without the
    # query, and only the per-request families carry it (bounded by max_request_names).
    assert "id=42" not in text
    with_path = [ln for ln in text.splitlines() if "/status" in ln and not ln.startswith("#")]
    assert with_path and all(
        ln.startswith("loadpilot_named_") and 'request="GET /status/503"' in ln for ln in with_path
    )
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
                if not prom.query(expr):
                    empty.append((p["title"], expr))
        r.wait()
    assert queries >= 10
    assert not empty, empty
