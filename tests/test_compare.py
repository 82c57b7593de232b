"""Comparing runs: the statistics are tested by simulation with fixed seeds (runs drawn from
known distributions, interval by interval), the plumbing with real runs of the built-in target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import loadpilot as lp
from loadpilot.analysis.comparing import _percentile, compare_samples
from tests.conftest import constant, get

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow

METRICS = ("p50", "p90", "p99", "p999", "max", "mean")


def simulated_run(
    rng: np.random.Generator,
    *,
    shift: float = 1.0,
    seconds: int = 60,
    rate: int = 1000,
    phi: float = 0.5,
    drift: float = 0.03,
) -> list[lp.Histogram]:
    """A run of ``seconds`` one-second intervals at ``rate`` requests per second: lognormal
    latency (median 5 ms) times a per-second level that drifts as an AR(1) process, so that
    the requests of one second are not independent, as in a real run; ``shift`` scales every
    latency (a 10% shift moves every percentile by 10%)."""
    sd = drift / np.sqrt(1 - phi * phi)
    e = rng.normal(0, sd)
    out = []
    for _ in range(seconds):
        e = phi * e + rng.normal(0, drift)
        h = lp.Histogram()
        h.record_many((rng.lognormal(np.log(5.0), 0.5, rate) * np.exp(e) * shift).tolist())
        out.append(h)
    return out


def test_percentiles_read_from_buckets_are_the_histograms_own() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        h = lp.Histogram()
        h.record_many(rng.lognormal(1.0, 1.2, int(rng.integers(1, 5000))).tolist())
        values, counts = h.buckets()
        cum = np.cumsum(np.array([counts], dtype=np.float64), axis=1)
        for p in (0.1, 1.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0):
            got = _percentile(cum, np.array(values), p)[0]
            assert got == pytest.approx(h.percentile(p), rel=1e-12), p


def test_runs_from_one_distribution_are_called_unchanged_at_least_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(2024)
    pairs = 200
    unchanged = 0
    for seed in range(pairs):
        c = compare_samples(simulated_run(rng), simulated_run(rng), metrics=METRICS, seed=seed)
        unchanged += not (c.regressions or c.improvements)
    assert unchanged / pairs >= 0.95, f"{unchanged}/{pairs} called unchanged"


def test_confidence_intervals_are_calibrated_for_independent_intervals() -> None:
    # With no noise threshold a 95% interval excludes zero in about 5% of null comparisons; an
    # interval that ignored how requests cluster would do so far more often.
    rng = np.random.default_rng(99)
    pairs = 100
    flagged = dict.fromkeys(("p50", "p99", "mean"), 0)
    for seed in range(pairs):
        c = compare_samples(
            simulated_run(rng, phi=0.0),
            simulated_run(rng, phi=0.0),
            metrics=tuple(flagged),
            noise=0.0,
            seed=seed,
        )
        for ch in c.changes:
            flagged[ch.metric] += ch.verdict != "no significant change"
    assert all(n <= 0.10 * pairs for n in flagged.values()), flagged


def test_a_ten_percent_shift_of_p99_is_detected() -> None:
    rng = np.random.default_rng(5)
    pairs = 100
    detected = improved = 0
    for seed in range(pairs):
        base = simulated_run(rng)
        c = compare_samples(base, simulated_run(rng, shift=1.10), metrics=("p99",), seed=seed)
        detected += c.change("p99").verdict == "regressed"
        if seed < 20:
            back = compare_samples(
                base, simulated_run(rng, shift=0.90), metrics=("p99",), seed=seed
            )
            improved += back.change("p99").verdict == "improved"
    assert detected / pairs >= 0.95, f"detected {detected}/{pairs}"
    assert improved == 20


def test_a_comparison_is_reproducible_from_its_seed() -> None:
    rng = np.random.default_rng(1)
    a, b = simulated_run(rng, seconds=20), simulated_run(rng, seconds=20, shift=1.03)
    one, two = compare_samples(a, b, seed=3), compare_samples(a, b, seed=3)
    assert one.changes == two.changes
    assert compare_samples(a, b, seed=4).changes != one.changes


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A baseline against a target answering in 2 ms, a candidate against one answering in
    6 ms with 5% errors on one task. 16 connections: enough for 200 requests/s of a few ms,
    and few enough that opening them is not a tail of its own in a 4-interval run (with 256,
    the first second's connects put a 12 ms p99.9 into a 2 ms baseline)."""
    base_dir = tmp_path_factory.mktemp("cmp") / "base"
    cand_dir = base_dir.with_name("cand")
    for d, delay, error_rate in ((base_dir, 2.0, 0.0), (cand_dir, 6.0, 0.05)):
        with lp.start_target(delay_ms=delay, error_rate=error_rate, seed=1) as t:
            lp.run(
                lp.Plan(
                    name="shop",
                    target=t.url,
                    load=constant(200, 4, connections=16),
                    tasks=[get("browse", "/json", weight=3), get("home", "/")],
                ),
                d,
            )
    return base_dir, cand_dir


def test_compare_finds_a_slower_candidate_with_more_errors(two_runs: tuple[Path, Path]) -> None:
    base, cand = two_runs
    c = lp.compare(base, cand)
    assert {ch.task for ch in c.changes} == {"all", "browse", "home"}
    p50 = c.change("p50")
    assert p50.verdict == "regressed" and p50.change is not None and p50.change > 0.5
    assert p50.low is not None and p50.low > 0.4
    err = c.change("error_rate")
    assert err.verdict == "regressed" and err.baseline == 0.0
    assert err.candidate == pytest.approx(0.05, abs=0.03)
    assert c.regressed and "p50 regressed" in c.verdict()
    # The reverse direction is an improvement, and a run against itself changes nothing. (The
    # median: a 4 s run's p99 moves with a busy machine's hiccups, the 3x service time does
    # not.)
    assert lp.compare(cand, base).change("p50", "browse").verdict == "improved"
    same = lp.compare(base, base)
    assert not same.regressed and not same.improvements
    assert same.verdict().startswith("no significant change")
    # Per request name too, with the same intervals: each task sends one.
    by_name = c.change("p50", request="GET /json")
    assert (by_name.task, by_name.verdict) == ("browse", "regressed")
    assert by_name.baseline == c.change("p50", "browse").baseline
    # The frame and the notebook table carry every change: the whole run, two tasks, two
    # request names.
    assert len(c.frame) == 5 * 7 and set(c.frame["verdict"]) >= {"regressed"}
    assert set(c.frame["request"].drop_nulls()) == {"GET /json", "GET /"}
    assert '<tr class="regressed">' in c._repr_html_()


def test_compare_on_the_command_line_gates_on_regressions(two_runs: tuple[Path, Path]) -> None:
    base, cand = two_runs

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loadpilot.cli", "compare", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    bad = cli(base, cand)
    assert bad.returncode == 1, bad.stderr
    assert "regressed" in bad.stdout and "p50" in bad.stdout
    ok = cli(base, base)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "no significant change" in ok.stdout
    machine = cli(base, cand, "--json", "--noise", "5%")
    assert machine.returncode == 1
    data = json.loads(machine.stdout)
    assert data["regressed"] is True and data["noise"] == 0.05
    assert {c["metric"] for c in data["changes"]} >= {"p99", "error_rate"}
    missing = cli(base, base.with_name("nowhere"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr
