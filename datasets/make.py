"""Records the datasets: run directories made against the built-in target on this machine.

    python datasets/make.py            # all of them (about 3 minutes)
    python datasets/make.py baseline   # one

Each dataset is a whole run directory (plan.json, latency.hlog, service.hlog, metrics.parquet,
summary.json) that `lp.load_run("datasets/<name>")` opens. What each is, and how it was made, is
in datasets/README.md; the settings are below.
"""

from __future__ import annotations

import gzip
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import loadpilot as lp

HERE = Path(__file__).resolve().parent


def _shop(target: str, name: str, load: lp.OpenLoad | lp.ClosedLoad) -> lp.Plan:
    return lp.Plan(
        name=name,
        target=target,
        load=load,
        tasks=[
            lp.Task(name="browse", weight=3, requests=[lp.Request(path="/json")]),
            lp.Task(name="home", weight=1, requests=[lp.Request(path="/")]),
        ],
    )


def _store(target: str, name: str, item_extra_ms: float) -> lp.Plan:
    """A shop whose ``browse`` lists (``list``) and then opens an item (``item``, answered
    ``item_extra_ms`` later than the rest); ``home`` is one request."""
    item = "/items/{{__iter}}" + (f"?delay_ms={item_extra_ms:g}" if item_extra_ms else "")
    return lp.Plan(
        name=name,
        target=target,
        load=_constant(300, 30),
        tasks=[
            lp.Task(
                name="browse",
                weight=3,
                requests=[
                    lp.Request(path="/json", name="list"),
                    lp.Request(path=item, name="item"),
                ],
            ),
            lp.Task(name="home", weight=1, requests=[lp.Request(path="/")]),
        ],
    )


def baseline(out: Path) -> None:
    """300 iterations/s for 30 s; the target answers in 2-6 ms."""
    with lp.start_target(delay_ms=2, delay_max_ms=6, seed=1) as t:
        lp.run(_store(t.url, "baseline", 0), out)


def regressed(out: Path) -> None:
    """The baseline's load against the same target, with one request 1 ms slower: ``item``."""
    with lp.start_target(delay_ms=2, delay_max_ms=6, seed=2) as t:
        lp.run(_store(t.url, "regressed", 1), out)


def step(out: Path) -> None:
    """100 to 800 rps in 8 steps of 5 s against a target with 4 workers taking 10 ms each: it
    saturates a little under 400 rps."""
    with lp.start_target(delay_ms=10, concurrency=4) as t:
        load = lp.OpenLoad(stages=[lp.Step(from_=100, to=800, steps=8, duration_s=40)])
        lp.run(_shop(t.url, "step", load), out)


def users(out: Path) -> None:
    """A closed model: 2 to 16 users in 8 steps of 4 s, no think time, against a target with 8
    workers taking 5-7 ms each."""
    with lp.start_target(delay_ms=5, delay_max_ms=7, concurrency=8, seed=3) as t:
        load = lp.ClosedLoad(stages=[lp.Step(from_=2, to=16, steps=8, duration_s=32)])
        lp.run(_shop(t.url, "users", load), out)


def stall(out: Path) -> None:
    """500 rps for 20 s; the target (1-3 ms) stops answering for 500 ms every 5 s."""
    with lp.start_target(delay_ms=1, delay_max_ms=3, stall_ms=500, stall_every_s=5) as t:
        lp.run(_shop(t.url, "stall", _constant(500, 20)), out)


def traced(out: Path) -> None:
    """400 iterations/s for 10 s against a small server instrumented with the OpenTelemetry
    SDK (``traced_shop.py``), one request in 200 held 50 ms in a ``db.query`` span; its spans
    are written beside the run, as OTLP JSON lines, gzipped (``traced-spans.jsonl.gz``)."""
    from traced_shop import shop

    spans = out.parent / "traced-spans.jsonl"
    with shop(spans) as server:
        plan = lp.Plan(
            name="traced",
            target=server.url,
            load=_constant(400, 10),
            tasks=[lp.Task(name="item", requests=[lp.Request(path="/item?id={{__iter}}")])],
        )
        lp.run(plan, out)
    gz = spans.with_name(spans.name + ".gz")
    gz.write_bytes(gzip.compress(spans.read_bytes(), mtime=0))
    spans.unlink()


def _constant(rate: float, seconds: float) -> lp.OpenLoad:
    return lp.OpenLoad(stages=[lp.Constant(rate=rate, duration_s=seconds)])


DATASETS: dict[str, Callable[[Path], None]] = {
    "baseline": baseline,
    "regressed": regressed,
    "step": step,
    "users": users,
    "stall": stall,
    "traced": traced,
}


def main(names: list[str]) -> None:
    for name in names or list(DATASETS):
        if name not in DATASETS:
            raise SystemExit(f"unknown dataset {name!r}; datasets: {', '.join(DATASETS)}")
        out = HERE / name
        if out.exists():
            shutil.rmtree(out)
        DATASETS[name](out)
        # metrics.parquet and slow.parquet hold the same rows
        (out / "metrics.jsonl").unlink(missing_ok=True)
        (out / "slow.jsonl").unlink(missing_ok=True)
        print(f"{name}: {lp.load_run(out).summary().table()}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
