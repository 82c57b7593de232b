"""What a request can carry and how its outcome is judged, against the built-in target."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import loadpilot as lp
from tests.conftest import Recorder, constant, get


def _one_task(target: str, *requests: lp.Request, rate: float = 20, **plan: object) -> lp.Plan:
    return lp.Plan(
        target=target,
        load=constant(rate, 1),
        tasks=[lp.Task(name="t", requests=list(requests))],
        **plan,  # type: ignore[arg-type]
    )


def test_templates_fill_from_feeder_rows_user_values_and_builtins(
    target: lp.TargetServer, out: Path
) -> None:
    plan = _one_task(
        target.url,
        lp.Request(
            method="POST",
            path="/echo",
            json={"user": "{{user}}", "token": "{{token}}", "env": "{{env}}"},
            expect=lp.Expect(json_path="$.user", json_equals="ann"),
        ),
        feeder=lp.Feeder(columns=["user"], rows=[["ann"]]),
        user_vars=[{"token": "t-1"}],
        vars={"env": "lab"},
    )

    summary = lp.run(plan, out).summary()

    assert summary.overall.requests == 20
    assert summary.overall.errors == 0, summary.overall.errors_by_kind


def test_a_unique_feeder_ends_the_run_when_rows_run_out(target: lp.TargetServer, out: Path) -> None:
    plan = _one_task(
        target.url,
        lp.Request(path="/echo?id={{id}}"),
        feeder=lp.Feeder(columns=["id"], rows=[[str(i)] for i in range(5)], mode="unique"),
    )

    summary = lp.run(plan, out).summary()

    assert summary.ended == "exhausted"
    assert summary.overall.requests == 5


def test_cookies_are_kept_per_virtual_user(target: lp.TargetServer, out: Path) -> None:
    plan = lp.Plan(
        target=target.url,
        load=lp.ClosedLoad(stages=[lp.Constant(rate=2, duration_s=1)], think_s=0.2),
        tasks=[
            lp.Task(
                name="session",
                requests=[
                    lp.Request(path="/cookies/set?sid=u{{__vu}}"),
                    lp.Request(path="/cookies", expect=lp.Expect(body_contains="sid=u{{__vu}}")),
                ],
            )
        ],
    )

    summary = lp.run(plan, out).summary()

    # Two users, each iteration two requests (set, then read back the user's own cookie), one
    # iteration per 200 ms of thinking: up to 2 x 6 iterations in the second.
    o = summary.overall
    assert o.requests == 2 * o.iterations and 4 <= o.iterations <= 12, o
    assert o.errors == 0, o.errors_by_kind


def test_failed_checks_and_statuses_are_counted_by_kind(target: lp.TargetServer, out: Path) -> None:
    plan = lp.Plan(
        target=target.url,
        load=constant(30, 1),
        tasks=[
            get("missing", "/status/404"),
            get("wrong_body", "/json", expect=lp.Expect(body_contains="no such text")),
            get("fine", "/status/201", expect=lp.Expect(status_range=(200, 299))),
        ],
    )

    s = lp.run(plan, out).summary()

    assert s.task("missing").errors_by_kind["status"] == 10
    assert s.task("wrong_body").errors_by_kind["check"] == 10
    assert s.task("fine").errors == 0
    # Answered requests count in latency whatever their verdict.
    assert lp.load_run(out).histogram("missing").count == 10


def test_a_slow_answer_is_a_timeout(out: Path) -> None:
    with lp.start_target(delay_ms=300) as target:
        plan = _one_task(target.url, lp.Request(path="/", timeout_s=0.05), rate=10)
        s = lp.run(plan, out).summary()

    assert s.overall.errors_by_kind["timeout"] == 10


def test_an_unreachable_target_completes_with_connect_errors(out: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plan = _one_task(f"http://127.0.0.1:{port}", lp.Request(path="/"))

    summary = lp.run(plan, out).summary()

    assert summary.ended == "completed"
    assert summary.overall.errors_by_kind["connect"] == 20


def test_a_target_that_never_answers_a_connect_fails_within_the_connect_timeout(
    out: Path,
) -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, so a connect
    # neither succeeds nor fails, as at a firewalled or vanished host.
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            plan = _one_task(
                f"http://127.0.0.1:{port}",
                lp.Request(path="/"),
                rate=10,
                connect_timeout_s=0.5,
                max_drain_s=5,
            )
            summary = lp.run(plan, out).summary()

    # Each due request ends as a connect error once its half second is out; none is left
    # for the drain to cancel.
    assert summary.overall.errors_by_kind.get("connect") == 10, summary.overall.errors_by_kind
    assert summary.ended == "completed"
    with pytest.raises(ValueError, match="connect_timeout_s"):
        _one_task("http://127.0.0.1:9", lp.Request(path="/"), connect_timeout_s=0)
    with pytest.raises(lp.PlanError, match="invalid connect_timeout: 'soon'"):

        @lp.scenario(profile=lp.constant(1, "1s"), connect_timeout="soon")
        class Never(lp.VUser):
            @lp.task
            def a(self) -> None:
                self.client.get("/")


@pytest.mark.slow
def test_injected_errors_arrive_at_their_rate(out: Path) -> None:
    with lp.start_target(error_rate=0.2, seed=3) as target:
        plan = lp.Plan(target=target.url, load=constant(1000, 2), tasks=[get("x")])
        s = lp.run(plan, out).summary()

    assert abs(s.overall.error_rate - 0.2) < 0.03
    assert s.overall.errors_by_kind["status"] == s.overall.errors


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"tasks": [{"name": "x", "weight": 0, "requests": [{"path": "/"}]}]}, "weight"),
        ({"tasks": [{"name": "x", "requests": [{"path": "/{{nope}}"}]}]}, "nope"),
        (
            {"tasks": [{"name": "x", "requests": [{"path": "no-slash"}]}]},
            "tasks[0].requests[0].path",
        ),
        ({"target": "ftp://127.0.0.1:1"}, "unsupported scheme"),
        ({"target": "127.0.0.1:8080"}, "127.0.0.1:8080"),
        ({"load": {"model": "open", "stages": []}}, "stages"),
        ({"tasks": [{"name": "a b", "requests": [{"path": "/"}]}]}, "tasks[0].name"),
    ],
)
def test_bad_plans_are_refused_before_anything_is_sent(
    recorder: Recorder, out: Path, change: dict[str, object], where: str
) -> None:
    base = {
        "target": recorder.url,
        "load": {"model": "open", "stages": [{"kind": "constant", "rate": 1, "duration_s": 1}]},
        "tasks": [{"name": "x", "requests": [{"path": "/"}]}],
    }
    base.update(change)

    with pytest.raises((lp.PlanError, lp.TargetError, ValueError)) as err:
        lp.start(lp.Plan.model_validate(base), out)

    assert where in str(err.value)
    assert not (out / "metrics.jsonl").exists()
    time.sleep(0.2)  # a request sent despite the refusal would have arrived by now
    assert recorder.arrivals == [], "the server saw no request"


def test_a_plan_json_with_a_typo_names_the_line(tmp_path: Path) -> None:
    from loadpilot import _engine

    with pytest.raises(lp.PlanError, match="line 1 column") as err:
        _engine.validate_plan('{"target": "http://127.0.0.1:1", "lod": {}}')
    assert "lod" in str(err.value)


def test_https_targets_verify_certificates_unless_told_not_to(tmp_path: Path) -> None:
    with lp.start_target(tls=True) as target:
        assert target.url.startswith("https://")
        strict = _one_task(target.url, lp.Request(path="/json"))
        relaxed = strict.model_copy(update={"insecure": True})
        refused = lp.run(strict, tmp_path / "strict").summary()
        accepted = lp.run(relaxed, tmp_path / "relaxed").summary()

    assert refused.overall.errors_by_kind["tls"] == 20
    assert accepted.overall.errors == 0 and accepted.overall.requests == 20


def test_a_scenario_may_accept_any_certificate(tmp_path: Path) -> None:
    def shop(insecure: bool) -> type[lp.VUser]:
        @lp.scenario(profile=lp.constant(10, "1s"), insecure=insecure)
        class Shop(lp.VUser):
            @lp.task
            def item(self) -> None:
                self.client.get("/json")

        return Shop

    with lp.start_target(tls=True) as target:
        refused = lp.run(shop(False), tmp_path / "strict", target=target.url).summary()
        accepted = lp.run(shop(True), tmp_path / "relaxed", target=target.url).summary()
    assert refused.overall.errors_by_kind["tls"] == 10
    assert accepted.overall.errors == 0 and accepted.overall.requests == 10
