"""A run's validity: the rule on summaries made to order, then real runs of each kind the rule
tells apart (a healthy run, too few connections, a slow target, a saturated target, a generator
starved of CPU), through the API and the CLI's exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

import loadpilot as lp
from loadpilot import validity
from loadpilot.summary import Generator, Percentiles, Stats, Summary
from tests.conftest import busy, constant, get

LOADPILOT = [sys.executable, "-c", "import sys; from loadpilot.cli import main; sys.exit(main())"]


def _stats(**kw: object) -> Stats:
    base: dict[str, object] = dict(
        requests=1000, errors=0, errors_by_kind={}, error_rate=0.0, missed=0, iterations=1000,
        bytes_in=0, achieved_rps=200.0, latency_ms=Percentiles(p99=20.0),
        service_ms=Percentiles(p50=10.0, p99=19.0), late_ms=Percentiles(p99=0.3),
    )  # fmt: skip
    base.update(kw)
    return Stats.model_validate(base)


def _summary(**kw: object) -> Summary:
    overall = _stats(**kw)
    return Summary(
        name="s", started_at=0.0, duration_s=5.0, planned_duration_s=5.0, ended="completed",
        model="open", target_requests=1000.0, overall=overall,
        tasks=[{"name": "t", "path": "engine", **overall.model_dump()}],  # type: ignore[list-item]
    )  # fmt: skip


def _rows(service_p50: list[float], missed: list[int], in_flight: int) -> pl.DataFrame:
    n = len(service_p50)
    return pl.DataFrame(
        {
            "task": ["t"] * n,
            "request": pl.Series([None] * n, dtype=pl.String),
            "requests": [200] * n,
            "missed": missed,
            "in_flight": [in_flight] * n,
            "service_p50_ms": service_p50,
        }
    )


def test_a_clean_run_is_valid_with_no_reasons() -> None:
    v = validity.judge(_summary(), _rows([10.0] * 5, [0] * 5, 2), None, 256)
    assert (v.verdict, v.limit, v.reasons) == ("valid", None, [])


def test_connections_all_busy_are_the_generator_s_unless_the_service_time_grew() -> None:
    s = _summary(missed=300, late_ms=Percentiles(p99=900.0), latency_ms=Percentiles(p99=910.0))
    flat = validity.judge(s, _rows([10.0, 10.5, 10.2, 10.1, 10.3], [60] * 5, 4), None, 4)
    assert (flat.verdict, flat.limit) == ("invalid", "generator")
    assert [r.code for r in flat.reasons] == ["connections"]
    assert "all 4 connections busy while the service time stayed at 10 ms" in flat.reasons[0].text
    grew = validity.judge(s, _rows([10.0, 200.0, 600.0, 700.0, 700.0], [0] + [75] * 4, 4), None, 4)
    assert (grew.verdict, grew.limit) == ("valid", "system")
    assert [(r.code, r.level) for r in grew.reasons] == [("saturated", "info")]
    assert "grew from 10 ms to 650 ms" in grew.reasons[0].text
    # Missed arrivals while connections were free are lateness, judged as such.
    free = validity.judge(s, _rows([10.0] * 5, [60] * 5, 2), None, 4)
    assert [r.code for r in free.reasons] == ["late"]


@pytest.mark.parametrize(
    ("late", "tail", "verdict"),
    [
        (0.3, 0.6, "valid"),  # half the tail, but a fraction of a millisecond
        (1.9, 2.5, "valid"),  # below the floor
        (3.0, 100.0, "valid"),  # 3% of the tail
        (3.0, 20.0, "suspect"),  # 15%
        (3.5, 4.1, "invalid"),  # 85%: a starved generator against a fast target
    ],
)
def test_lateness_counts_past_its_floor_by_its_share_of_the_tail(
    late: float, tail: float, verdict: str
) -> None:
    s = _summary(late_ms=Percentiles(p99=late), latency_ms=Percentiles(p99=tail))
    v = validity.judge(s, None, None, 256)
    assert v.verdict == verdict, v
    assert (v.limit == "generator") == (verdict != "valid")


def test_a_short_run_s_lateness_is_read_where_ten_iterations_lie() -> None:
    # 100 iterations: the p99 is one iteration (a hiccup); the p90 holds ten.
    hiccup = dict(
        late_ms=Percentiles(p90=0.2, p99=2.6), latency_ms=Percentiles(p90=0.5, p99=2.8),
        requests=100, iterations=100,
    )  # fmt: skip
    assert validity.judge(_summary(**hiccup), None, None, 256).verdict == "valid"
    late = dict(hiccup, late_ms=Percentiles(p90=4.0, p99=5.0), latency_ms=Percentiles(p90=4.5))
    v = validity.judge(_summary(**late), None, None, 256)
    assert v.verdict == "invalid" and "p90 4 ms after due" in v.reasons[0].text, v


def test_the_generator_s_cpu_makes_a_run_suspect_and_is_kept_as_evidence() -> None:
    busy = Generator(wall_s=10.0, cpu_s=19.0, cores=2, run_queue_s=1.0, cpu_pressure_s=2.0)
    v = validity.judge(_summary(), None, busy, 256)
    assert (v.verdict, [r.code for r in v.reasons]) == ("suspect", ["cpu"])
    assert "95% of its 2 CPUs" in v.reasons[0].text
    queued = Generator(wall_s=10.0, cpu_s=3.0, cores=2, run_queue_s=6.0)
    assert [r.code for r in validity.judge(_summary(), None, queued, 256).reasons] == ["run_queue"]
    calm = Generator(wall_s=10.0, cpu_s=3.0, cores=2, run_queue_s=0.8)
    assert validity.judge(_summary(), None, calm, 256).verdict == "valid"


def test_a_distributed_run_adds_each_agent_s_own_reasons() -> None:
    merged = validity.judge(_summary(), None, None, 256)
    starved = validity.judge(
        _summary(late_ms=Percentiles(p99=4.0), latency_ms=Percentiles(p99=5.0)), None, None, 256
    )
    saturated = validity.judge(
        _summary(missed=300),
        _rows([10.0, 200.0, 600.0, 700.0, 700.0], [0] + [75] * 4, 4),
        None,
        4,
    )
    v = validity.with_slices(merged, [("a1", merged), ("a2", starved), ("a3", saturated)])
    assert (v.verdict, v.limit) == ("invalid", "generator")
    # Only generator reasons travel up (a slice's saturation is the merged figures' to say).
    assert [(r.code, r.text[:12]) for r in v.reasons] == [("late", "agent a2: ar")]
    assert validity.with_slices(merged, [("a1", merged)]) == merged


def test_the_probe_reads_this_process_s_cpu_and_waits() -> None:
    probe = validity.Probe()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    g = probe.end()
    assert 0.2 < g.cpu_s < 1.0 and 0.25 < g.wall_s < 2.0, g
    assert g.cores == len(os.sched_getaffinity(0))
    assert g.run_queue_s is not None and g.run_queue_s >= 0.0


# -- real runs ------------------------------------------------------------------------------------


def _run(
    url: str, out: Path, rate: float, seconds: float = 3.0, connections: int = 256
) -> lp.Summary:
    plan = lp.Plan(
        name="cell", target=url, load=constant(rate, seconds, connections), tasks=[get("get")]
    )
    return lp.run(plan, out).summary()


@pytest.mark.slow
def test_a_healthy_run_is_valid(out: Path) -> None:
    with lp.start_target() as t:
        s = _run(t.url, out, 1000)
    assert s.validity is not None and s.validity.verdict == "valid", s.validity
    assert s.validity.generator is not None and s.validity.generator.cpu_s > 0
    assert s.overall.late_ms.p99 is not None and s.overall.late_ms.p99 < 2.0
    # Written into summary.json, read back by load_run.
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["validity"]["verdict"] == "valid"
    assert lp.load_run(out).summary().validity == s.validity


@pytest.mark.slow
def test_too_few_connections_make_the_run_invalid_and_say_so(out: Path) -> None:
    with lp.start_target(delay_ms=10) as t:
        s = _run(t.url, out, 1000, connections=4)
    v = s.validity
    assert v is not None and (v.verdict, v.limit) == ("invalid", "generator"), v
    assert v.reasons[0].code == "connections"
    assert "raise connections" in v.reasons[0].text


@pytest.mark.slow
def test_a_slow_target_is_the_system_s_latency_and_valid(out: Path) -> None:
    with lp.start_target(delay_ms=200) as t:
        s = _run(t.url, out, 100)
    assert s.validity is not None and s.validity.verdict == "valid", s.validity
    assert s.overall.latency_ms.p99 is not None and s.overall.latency_ms.p99 > 200


@pytest.mark.slow
def test_a_saturated_target_is_system_limited_and_valid(out: Path) -> None:
    # Four workers of 10 ms: 400 requests/s, asked for 600.
    with lp.start_target(delay_ms=10, concurrency=4) as t:
        s = _run(t.url, out, 600, seconds=4.0)
    v = s.validity
    assert v is not None and (v.verdict, v.limit) == ("valid", "system"), v
    assert [r.code for r in v.reasons] == ["saturated"]


@pytest.mark.slow
def test_python_bodies_held_up_by_a_blocked_event_loop_are_the_generator_s(
    out: Path, target: lp.TargetServer
) -> None:
    @lp.scenario(profile=lp.constant(rps=100, duration="3s"))
    class Blocking(lp.VUser):
        @lp.task
        async def hold(self) -> None:
            time.sleep(0.03)  # blocks the event loop every Python body shares: ~33 a second
            await self.client.get("/")

    s = lp.run(Blocking, out, target=target.url).summary()
    assert s.tasks[0].path == "python"
    late, service = s.overall.late_ms.p99, s.overall.service_ms.p99
    assert late is not None and service is not None and late > 10 * service, s.overall
    v = s.validity
    assert v is not None and (v.verdict, v.limit) == ("invalid", "generator"), v
    assert "arrivals began late" in v.reasons[0].text


def test_an_old_run_without_a_verdict_is_judged_when_loaded(
    out: Path, target: lp.TargetServer
) -> None:
    _run(target.url, out, 50, seconds=1.0)
    f = out / "summary.json"
    data = json.loads(f.read_text())
    del data["validity"]
    f.write_text(json.dumps(data))
    v = lp.load_run(out).summary().validity
    assert v is not None and v.verdict == "valid" and v.generator is None


_SCENARIO = """
import loadpilot as lp

@lp.scenario(profile=lp.constant(rps={rate}, duration="{seconds}s"), connections={connections})
class Cell(lp.VUser):
    @lp.task
    def get(self):
        self.client.get("/")
"""


def _cli(
    tmp_path: Path,
    url: str,
    rate: int,
    seconds: int,
    connections: int,
    *extra: str,
    cpu: int | None = None,
    out: str = "run",
) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "cell.py"
    f.write_text(
        textwrap.dedent(_SCENARIO.format(rate=rate, seconds=seconds, connections=connections))
    )
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    return subprocess.run(
        [*LOADPILOT, "run", str(f), "--target", url, "--out", str(tmp_path / out), *extra],
        capture_output=True, text=True, timeout=120, preexec_fn=pin,
    )  # fmt: skip


@pytest.mark.slow
def test_the_cli_exits_4_on_an_invalid_run_unless_told_to_judge_it(tmp_path: Path) -> None:
    with lp.start_target(delay_ms=10) as t:
        r = _cli(tmp_path, t.url, 1000, 2, 4)
        assert r.returncode == 4, r.stdout + r.stderr
        assert "validity: invalid (generator-limited)" in r.stdout
        assert "the run is invalid: it measured the load generator" in r.stdout
        assert (
            json.loads((tmp_path / "run" / "summary.json").read_text())["validity"]["verdict"]
            == "invalid"
        )
        # --allow-invalid: judged as before (due arrivals never sent: exit 3).
        again = _cli(tmp_path, t.url, 1000, 2, 4, "--allow-invalid", out="again")
        assert again.returncode == 3, again.stdout + again.stderr
        assert "never sent" in again.stdout


@pytest.mark.slow
def test_a_generator_starved_of_cpu_is_invalid(tmp_path: Path) -> None:
    """The generator and a busy competitor share one core; the target has the other."""
    cores = sorted(os.sched_getaffinity(0))
    # The target on another CPU where there is one (on one, it shares the starved CPU too).
    gen, other = cores[0], cores[-1]
    burn = busy(60, cpu=gen)
    try:
        server = subprocess.Popen(
            [*LOADPILOT, "target", "--port", "0", "--for-s", "60"],
            stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {other}),
        )  # fmt: skip
        try:
            assert server.stdout is not None
            url = next(w for w in server.stdout.readline().split() if w.startswith("http://"))
            r = _cli(tmp_path, url.rstrip("/"), 5000, 3, 256, cpu=gen)
        finally:
            server.terminate()
            server.wait(10)
    finally:
        burn.kill()
        burn.wait(10)
    s = lp.load_run(tmp_path / "run").summary()
    v = s.validity
    assert v is not None and v.verdict != "valid" and v.limit == "generator", r.stdout
    assert "late" in [x.code for x in v.reasons], v
    # Flagged either way; only an invalid run exits 4 (the starved service time can make the
    # generator's share of the tail land just under the invalid line: suspect, exit 0).
    assert r.returncode == (4 if v.verdict == "invalid" else 0), r.stdout + r.stderr
