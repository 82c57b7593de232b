"""Named requests: every request is measured under its name beside its task, on the engine
path and the Python path alike, and the counts are what the server counted per path."""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

import loadpilot as lp
from loadpilot.cluster.server import free_port
from loadpilot.scenarios.loader import load_scenario

SHOP = """
import loadpilot as lp

@lp.scenario(profile=lp.constant(rps=100, duration="2s"))
class Shop(lp.VUser):
    @lp.task(weight=2)
    def browse(self):
        self.client.get("/", name="home")
        self.client.get("/items/{{__iter}}", name="item")
        self.client.get("/json?page=1")

    @lp.task
    def buy(self):
        for n in (3, 5):
            self.client.get(f"/bytes/{n}", name="bytes")
        self.client.get("/json?page=2")
        self.client.post("/echo", content="order")
"""


def _scenario(tmp_path: Path, text: str, name: str = "shop.py") -> Path:
    f = tmp_path / name
    f.write_text(textwrap.dedent(text))
    return f


@pytest.mark.slow
def test_each_request_name_counts_what_the_server_counted_on_its_paths(
    tmp_path: Path, out: Path
) -> None:
    shop = load_scenario(_scenario(tmp_path, SHOP), None)
    assert shop.paths == {"browse": "engine", "buy": "python"}
    with lp.start_target() as target:
        run = lp.run(shop, out, target=target.url)
        s = run.summary()
        served = target.served_by_path
    assert s.ended == "completed" and s.overall.errors == 0
    got = {(r.task, r.name): r.requests for r in s.requests}
    items = sum(n for p, n in served.items() if p.startswith("/items/"))
    # The default name is the method and the path as written, without the query; the engine's
    # placeholders stay unexpanded, a Python path is named as given.
    assert got == {
        ("browse", "home"): served["/"],
        ("browse", "item"): items,
        ("browse", "GET /json"): served["/"],  # one per browse iteration, as home
        ("buy", "bytes"): served["/bytes/3"] + served["/bytes/5"],
        ("buy", "GET /json"): served["/json"] - served["/"],
        ("buy", "POST /echo"): served["/echo"],
    }
    assert served["/bytes/3"] == served["/bytes/5"] == served["/echo"] > 0
    assert items == served["/"] > 0
    # A task counts all of its requests.
    for task in s.tasks:
        assert task.requests == sum(n for (t, _), n in got.items() if t == task.name)
    # Rows per second of each name add up to its summary; the tasks' rows stay as they were.
    per_name = run.request_metrics.group_by("task", "request").agg(pl.col("requests").sum())
    assert {(t, r): int(n) for t, r, n in per_name.iter_rows()} == got
    assert int(run.metrics["requests"].sum()) == s.overall.requests
    assert run.metrics["request"].null_count() == len(run.metrics)
    # Histograms per name, exact: live, and read back from the run directory.
    loaded = lp.load_run(out)
    for where in (run, loaded):
        assert where.histogram("browse", request="item").count == got[("browse", "item")]
        both = where.histogram(request="GET /json")
        assert both.count == served["/json"], "a name several tasks send, added up"
        assert where.histogram().count == s.overall.requests
    p99 = s.request("item").latency_ms.p99
    assert loaded.histogram("browse", request="item").percentile(99) == p99
    assert loaded.summary().requests == s.requests
    with pytest.raises(KeyError, match="several tasks"):
        s.request("GET /json")
    assert s.request("GET /json", task="buy").requests == got[("buy", "GET /json")]
    with pytest.raises(KeyError, match="no request named 'nope'"):
        run.histogram(request="nope")
    # The tables people read carry a row per name.
    assert "item" in s.table() and "POST /echo" in s.html()


def test_past_the_limit_new_names_are_measured_together_as_other(
    out: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    class Many(lp.VUser):
        @lp.task
        def walk(self) -> None:
            for i in range(6):
                self.client.get(f"/items/{i}")

    scenario = lp.scenario(profile=lp.constant(rps=20, duration="1s"), max_request_names=4)(Many)
    with lp.start_target() as target:
        s = lp.run(scenario, out, target=target.url).summary()
    names = {r.name: r.requests for r in s.requests}
    assert list(names) == [*(f"GET /items/{i}" for i in range(4)), "other"]
    assert names["other"] == 2 * names["GET /items/0"] == 40
    assert sum(names.values()) == s.overall.requests
    said = capfd.readouterr().err
    assert said.count("more than 4 request names") == 1, said


def test_thresholds_name_requests_and_gate_the_run(tmp_path: Path) -> None:
    f = _scenario(
        tmp_path,
        """
        import loadpilot as lp

        @lp.scenario(profile=lp.constant(rps=20, duration="1s"),
                     thresholds={"checkout.error_rate": "< 1%", "GET /json.p99": "< 10s"})
        class Gate(lp.VUser):
            @lp.task
            def flow(self):
                self.client.get("/json")
                self.client.get("/status/503", name="checkout")
        """,
    )
    with lp.start_target() as target:
        done = subprocess.run(
            [sys.executable, "-m", "loadpilot.cli", "run", str(f), "--target", target.url,
             "--out", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  checkout.error_rate < 1%  (actual 100%)" in done.stdout, done.stdout
    assert "pass  GET /json.p99 < 10s" in done.stdout, done.stdout
    # An engine request's failed check has its line in the failures too.
    failures = done.stdout.split("failures", 1)[1]
    assert "checkout" in failures and "HTTP 503" in failures, done.stdout


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('self.client.get("/items/{{__iter}}", name="item {{__iter}}")', "holds a placeholder"),
        ('self.client.get("/", name="")', "cannot be empty"),
    ],
)
def test_a_bad_request_name_is_refused_with_file_and_line_before_anything_is_sent(
    tmp_path: Path, line: str, why: str
) -> None:
    f = _scenario(
        tmp_path,
        f"""
        import loadpilot as lp

        @lp.scenario(profile=lp.constant(rps=20, duration="1s"))
        class Bad(lp.VUser):
            @lp.task
            def t(self):
                {line}
        """,
    )
    with lp.start_target() as target:
        done = subprocess.run(
            [sys.executable, "-m", "loadpilot.cli", "run", str(f), "--target", target.url,
             "--out", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        served = target.served
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"{f}:8: " in done.stderr and why in done.stderr, done.stderr
    assert served == 0


@pytest.mark.slow
def test_prometheus_counts_each_name_once_in_families_of_their_own(out: Path) -> None:
    port = free_port()
    with lp.start_target() as target:
        plan = lp.Plan(
            target=target.url,
            load=lp.OpenLoad(stages=[lp.Constant(rate=50, duration_s=2)]),
            tasks=[
                lp.Task(
                    name="flow",
                    requests=[lp.Request(path="/", name="home"), lp.Request(path="/json")],
                )
            ],
        )
        run = lp.start(plan, out, prometheus=f"127.0.0.1:{port}")
        s = run.summary()
        # The exporter follows the run's files: scraped until it has caught up with the end.
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                samples = _samples(r.read().decode())
            named = samples.get(("loadpilot_named_requests_total", "GET /json", "2xx"), 0)
            if named == 100:
                break
            assert time.monotonic() < deadline, samples
            time.sleep(0.1)
    assert samples[("loadpilot_requests_total", None, "2xx")] == 200
    for name in ("home", "GET /json"):
        assert samples[("loadpilot_named_requests_total", name, "2xx")] == 100
        count = samples[("loadpilot_named_request_duration_seconds_count", name, None)]
        assert count == s.request(name).requests == 100
    # The task families carry no request label: adding any family up counts each request once.
    assert samples[("loadpilot_request_duration_seconds_count", None, None)] == 200
    with_request = {k[0] for k in samples if k[1] is not None}
    assert with_request == {
        "loadpilot_named_requests_total",
        "loadpilot_named_request_duration_seconds_count",
        "loadpilot_named_request_duration_seconds_sum",
        "loadpilot_named_service_duration_seconds_count",
        "loadpilot_named_service_duration_seconds_sum",
    }, with_request


def _samples(text: str) -> dict[tuple[str, str | None, str | None], float]:
    """The scraped samples of task ``flow`` as (metric, request label, status class): value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sm in family.samples:
            if sm.labels.get("task") == "flow" and "le" not in sm.labels:
                key = (sm.name, sm.labels.get("request"), sm.labels.get("status_class"))
                if sm.labels.get("kind") is None:
                    out[key] = sm.value
    return out


def test_a_run_recorded_before_request_names_still_loads(tmp_path: Path) -> None:
    """A run directory as runs wrote it before request names: no request column, no request
    rows, no request logs, no ``requests`` in the summary."""
    import json

    out = tmp_path / "run"
    with lp.start_target() as target:
        plan = lp.Plan(
            target=target.url,
            load=lp.OpenLoad(stages=[lp.Constant(rate=20, duration_s=2)]),
            tasks=[lp.Task(name="t", requests=[lp.Request(path="/")])],
        )
        s = lp.run(plan, out).summary()
    old = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    old = [{k: v for k, v in row.items() if k != "request"} for row in old if not row["request"]]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    pl.read_parquet(out / "metrics.parquet").filter(pl.col("request").is_null()).drop(
        "request"
    ).write_parquet(out / "metrics.parquet")
    for log in ("requests-latency.hlog", "requests-service.hlog"):
        (out / log).unlink()
    summary = json.loads((out / "summary.json").read_text())
    del summary["requests"]
    (out / "summary.json").write_text(json.dumps(summary))

    for finished in (True, False):
        if not finished:  # cut short: the summary rebuilt from the rows and logs
            (out / "summary.json").unlink()
            (out / "metrics.parquet").unlink()
        run = lp.load_run(out)
        assert run.metrics["request"].null_count() == len(run.metrics) == 2
        assert run.request_metrics.is_empty() and run.requests == []
        assert run.summary().requests == []
        assert run.summary().overall.requests == s.overall.requests == 40
        assert run.histogram("t").count == 40


CHECKS = """
import loadpilot as lp

@lp.scenario(profile=lp.constant(rps=50, duration="2s"))
class Checked(lp.VUser):
    @lp.task
    def sync_checks(self):
        with self.client.get("/json", name="cart", catch_response=True) as r:
            if "total" not in r.text:
                r.failure("no total")
        with self.client.get("/status/404", name="gone", catch_response=True) as r:
            r.success()                       # a 404 is what this request expects
        with self.client.get("/status/503", name="down", catch_response=True):
            pass                              # undecided: a 5xx is a status error
        try:
            with self.client.get("/json", name="parsed", catch_response=True) as r:
                r.json()["missing"]
        except KeyError:
            pass

    @lp.task
    async def async_checks(self):
        async with self.client.get("/echo", name="echo", catch_response=True) as r:
            if r.text != "":
                r.failure(f"echoed {r.text!r}")
            else:
                r.failure("empty echo")
"""


@pytest.mark.slow
def test_python_code_decides_a_caught_response_and_its_messages_are_kept(
    tmp_path: Path, out: Path
) -> None:
    checked = load_scenario(_scenario(tmp_path, CHECKS, "checked.py"), None)
    with lp.start_target() as target:
        s = lp.run(checked, out, target=target.url).summary()
        served = target.served_by_path
    by = {r.name: r for r in s.requests}
    iterations = s.task("sync_checks").iterations
    assert iterations and by["cart"].requests == iterations
    # Each request counted once as a request; its failure as an error of its kind.
    assert by["cart"].errors_by_kind["check"] == by["cart"].requests
    assert by["gone"].errors == 0 and served["/status/404"] == by["gone"].requests
    assert by["down"].errors_by_kind["status"] == by["down"].requests == served["/status/503"]
    assert by["parsed"].errors_by_kind["check"] == by["parsed"].requests
    assert by["echo"].errors_by_kind["check"] == by["echo"].requests == served["/echo"]
    assert s.task("sync_checks").errors == 3 * iterations
    assert s.task("sync_checks").errors_by_kind["exception"] == 0, "caught in the task"
    # The messages, most frequent first, with their counts.
    failures = {(f.request, f.message): f.count for f in s.failures}
    assert failures == {
        ("cart", "no total"): iterations,
        ("down", "HTTP 503"): iterations,
        ("parsed", "KeyError: 'missing'"): iterations,
        ("echo", "empty echo"): by["echo"].requests,
    }
    counts = [f.count for f in s.failures]
    assert counts == sorted(counts, reverse=True)
    assert "no total" in s.table() and "KeyError: &#x27;missing&#x27;" in s.html()
    assert lp.load_run(out).summary().failures == s.failures


FORMS = """
import loadpilot as lp
import polars as pl

@lp.scenario(profile=lp.constant(rps=20, duration="1s"))
class Forms(lp.VUser):
    feed = lp.feed(pl.DataFrame({"user": ["al ice", "bob&co"]}))

    @lp.task
    def engine_form(self):
        self.client.post("/engine", data={"user": "{{user}}", "note": "a b&c=d é"},
                         auth=("{{user}}", "p:w é"))

    @lp.task
    def python_form(self):
        user = self.row["user"]
        self.client.post("/python", data=[("user", user), ("note", "a b&c=d é")],
                         auth=(user, "p:w é"))
"""


def test_forms_and_basic_auth_mean_the_same_on_both_paths(
    tmp_path: Path, out: Path, recorder: Any
) -> None:
    forms = load_scenario(_scenario(tmp_path, FORMS, "forms.py"), None)
    assert forms.paths == {"engine_form": "engine", "python_form": "python"}
    s = lp.run(forms, out, target=recorder.url).summary()
    assert s.overall.errors == 0 and s.overall.requests == 20
    seen = {"/engine": [], "/python": []}
    for path, content_type, body in recorder.bodies:
        assert content_type == "application/x-www-form-urlencoded"
        # Read back by the standard library's parser, not by the code that wrote it.
        seen[path].append(urllib.parse.parse_qsl(body.decode(), strict_parsing=True))
    auths = {}
    for _method, path, auth in recorder.seen:
        scheme, _, token = (auth or "").partition(" ")
        assert scheme == "Basic", auth
        auths.setdefault(path, set()).add(base64.b64decode(token).decode())
    for path in ("/engine", "/python"):
        assert seen[path], path
        assert {tuple(p) for p in seen[path]} <= {
            (("user", u), ("note", "a b&c=d é")) for u in ("al ice", "bob&co")
        }
        assert auths[path] <= {"al ice:p:w é", "bob&co:p:w é"} and auths[path]
    # Two names, the method and the path: a form is a body like any other.
    assert {r.name for r in s.requests} == {"POST /engine", "POST /python"}


@pytest.mark.parametrize(
    ("call", "why"),
    [
        ('self.client.get("/", stream=True)', "get() takes no keyword 'stream'"),
        ('self.client.get("/", verify=False)', "get() takes no keyword 'verify'"),
    ],
)
def test_a_keyword_the_client_does_not_take_is_refused_at_load_on_either_path(
    tmp_path: Path, call: str, why: str
) -> None:
    for body in (call, "x = 1\n" + " " * 20 + call):  # engine path, then Python path
        f = _scenario(
            tmp_path,
            f"""
            import loadpilot as lp

            @lp.scenario(profile=lp.constant(rps=20, duration="1s"))
            class Bad(lp.VUser):
                @lp.task
                def t(self):
                    {body}
            """,
            "kw.py",
        )
        done = subprocess.run(
            [sys.executable, "-m", "loadpilot.cli", "run", str(f), "--target", "http://127.0.0.1:9"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        line = 8 + body.count("\n")
        assert f"{f}:{line}: {why}" in done.stderr, done.stderr


@pytest.mark.slow
def test_a_runs_verdicts_from_python_are_the_ones_the_cli_gives(tmp_path: Path) -> None:
    """`run.verdicts()` judges the scenario's own thresholds (or those given) on the run's
    figures, word for word as `loadpilot run` prints them; the report carries them too."""

    @lp.scenario(
        profile=lp.constant(rps=20, duration="1s"),
        thresholds={"checkout.error_rate": "< 1%", "GET /json.p99": "< 10s"},
    )
    class Gate(lp.VUser):
        @lp.task
        def flow(self) -> None:
            self.client.get("/json")
            self.client.get("/status/503", name="checkout")

    with lp.start_target() as target:
        run = lp.run(Gate, tmp_path / "run", target=target.url)
    said = [str(v) for v in run.verdicts()]
    assert said[0] == "FAIL  checkout.error_rate < 1%  (actual 100%)", said
    assert said[1].startswith("pass  GET /json.p99 < 10s  (actual "), said
    assert [v.passed for v in run.verdicts({"p99": "< 10s"})] == [True]
    assert [v.passed for v in run.verdicts({"flow.error_rate": "< 60%"})] == [True]
    with pytest.raises(lp.PlanError, match="unknown threshold metric"):
        run.verdicts({"p98.5": "< 1s"})
    # A run loaded from disk knows no scenario: it judges what it is given.
    loaded = lp.load_run(tmp_path / "run")
    assert loaded.verdicts() == []
    assert [str(v) for v in loaded.verdicts({"checkout.error_rate": "< 1%"})] == said[:1]
    page = run.report(tmp_path / "report.html").read_text()
    assert "checkout.error_rate" in page and "FAIL" in page
