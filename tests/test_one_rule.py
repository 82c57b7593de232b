"""Each rule lives once: the engine owns limits, defaults, file names, error kinds and end
reasons, and Python reads them. These tests hold the Python mirrors (the pydantic plan models,
the summary's end reasons, the package's layers) to the engine, so neither side can drift."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import grimp
import pytest

import loadpilot as lp
from loadpilot import _engine
from loadpilot.plan import DEFAULTS, Feeder, Hooks, Shard, check_field
from loadpilot.profiles import shape
from loadpilot.scenarios.scenario import scenario_of
from loadpilot.summary import EndReason

STAGES = [
    lp.Constant(rate=5, duration_s=2),
    lp.Ramp(from_=0, to=40, duration_s=3),
    lp.Step(from_=10, to=30, steps=3, duration_s=6),
    lp.Spike(base=500, peak=1, peak_s=1, duration_s=3),
]


def plans() -> list[lp.Plan]:
    """Plans that leave every defaulted field out, and ones that set each of them."""
    req = lp.Request(path="/")
    minimal = lp.Plan(
        target="http://127.0.0.1:9",
        load=lp.OpenLoad(stages=[lp.Constant(rate=1, duration_s=1)]),
        tasks=[lp.Task(name="a", requests=[req])],
    )
    closed = minimal.model_copy(update={"load": lp.ClosedLoad(stages=STAGES)})
    full = lp.Plan(
        name="full",
        target="https://127.0.0.1:9/base",
        load=lp.OpenLoad(stages=STAGES, arrivals="poisson", seed=7, connections=3),
        tasks=[
            lp.Task(
                name="a",
                weight=3,
                requests=[
                    lp.Request(
                        method="POST",
                        path="/x/{{user}}",
                        headers={"h": "v"},
                        json={"k": [1, "{{user}}"]},
                        timeout_s=2.5,
                        expect=lp.Expect(status=[200, 201], json_path="$.a", json_equals=1),
                    )
                ],
            ),
            lp.Task(name="b", path="python"),
        ],
        feeder=Feeder(columns=["user"], rows=[["u1"]], mode="unique", seed=3),
        user_vars=[{"v": "1"}],
        vars={"w": "2"},
        timeout_s=4,
        insecure=True,
        shard=Shard(index=1, count=2, start_at=1e9, from_s=1.5),
        max_drain_s=2,
        max_users=7,
        hooks=Hooks(on_start=True, on_stop=True, values=["token"], timeout_s=5),
        http="2",
        max_streams=9,
    )
    return [minimal, closed, full]


def without_nulls(v: Any) -> Any:
    """A JSON document without its null fields (one side writes them, the other leaves
    them out; both mean "not given")."""
    if isinstance(v, dict):
        return {k: without_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [without_nulls(x) for x in v]
    return v


@pytest.mark.parametrize("plan", plans(), ids=["minimal", "closed", "full"])
def test_the_plan_models_read_every_field_as_the_engine_does(plan: lp.Plan) -> None:
    # Python writes the plan with its own defaults filled in; the engine reads it back and
    # writes it with its defaults: the same document, field for field, or one side has a
    # field, a name or a default the other lacks.
    ours = json.loads(plan.model_dump_json(by_alias=True))
    engines = json.loads(_engine.normalize_plan(plan.model_dump_json(by_alias=True)))

    assert without_nulls(ours) == without_nulls(engines)


def test_a_plan_that_leaves_everything_out_gets_the_engines_defaults() -> None:
    minimal = {
        "target": "http://127.0.0.1:9",
        "load": {"model": "open", "stages": [{"kind": "constant", "rate": 1, "duration_s": 1}]},
        "tasks": [{"name": "a", "requests": [{"path": "/"}]}],
        "hooks": {},
    }
    engines = json.loads(_engine.normalize_plan(json.dumps(minimal)))
    ours = json.loads(lp.Plan.model_validate(minimal).model_dump_json(by_alias=True))
    assert without_nulls(ours) == without_nulls(engines)
    closed = {**minimal, "load": {"model": "closed", "stages": minimal["load"]["stages"]}}
    assert without_nulls(
        json.loads(lp.Plan.model_validate(closed).model_dump_json(by_alias=True))
    ) == without_nulls(json.loads(_engine.normalize_plan(json.dumps(closed))))
    assert engines["timeout_s"] == ours["timeout_s"] == DEFAULTS["timeout_s"] == 30.0
    assert engines["load"]["connections"] == ours["load"]["connections"] == 256
    assert engines["hooks"]["timeout_s"] == ours["hooks"]["timeout_s"] == DEFAULTS["hook_timeout_s"]
    assert engines["max_streams"] == ours["max_streams"] == DEFAULTS["max_streams"]

    # A scenario that gives no timeout, drain or HTTP setting runs with the same ones.
    @lp.scenario(profile=lp.constant(1, "1s"))
    class Quiet(lp.VUser):
        @lp.task
        def a(self) -> None:
            self.client.get("/")

    found = scenario_of(Quiet)
    assert found is not None
    plan = json.loads(found.plan("http://127.0.0.1:9").model_dump_json(by_alias=True))
    for field in ("timeout_s", "connect_timeout_s", "max_drain_s", "http", "max_streams"):
        assert plan[field] == engines[field] == DEFAULTS[field], field


def test_one_rule_checks_a_field_wherever_its_value_comes_from() -> None:
    # The model's bounds are the engine's limit: its last allowed value passes, the next fails.
    assert check_field("max_streams", _engine.MAX_STREAMS) == _engine.MAX_STREAMS
    for bad in (0, _engine.MAX_STREAMS + 1):
        with pytest.raises(lp.PlanError, match="invalid max_streams"):
            check_field("max_streams", bad)
    with pytest.raises(lp.PlanError, match="invalid http"):
        check_field("http", "3")
    from loadpilot.plan import MAX_KEPT

    for field in ("keep_slowest", "keep_sample"):
        assert check_field(field, MAX_KEPT) == MAX_KEPT
        with pytest.raises(lp.PlanError, match=f"invalid {field}"):
            check_field(field, MAX_KEPT + 1)
    assert check_field("trace", True) == 1.0 and check_field("trace", 0.25) == 0.25
    with pytest.raises(lp.PlanError, match="invalid trace"):
        check_field("trace", 1.5)


def test_end_reasons_are_the_engines() -> None:
    assert list(typing.get_args(EndReason)) == list(_engine.END_REASONS)


def test_every_file_a_run_writes_is_one_the_engine_names(tmp_path: Path) -> None:
    # A real run (and Python's Parquet at its end): nothing in its directory is unnamed, and
    # what a local run writes is all there.
    with lp.start_target() as target:
        plan = lp.Plan(
            target=target.url,
            load=lp.OpenLoad(stages=[lp.Constant(rate=20, duration_s=1)]),
            tasks=[lp.Task(name="a", requests=[lp.Request(path="/")])],
        )
        lp.run(plan, tmp_path / "r")
    written = {p.name for p in (tmp_path / "r").iterdir()}
    files = _engine.RUN_FILES
    assert written <= set(files.values()), written - set(files.values())
    local = (
        "plan",
        "latency_log",
        "service_log",
        "requests_latency_log",
        "requests_service_log",
        "metrics_jsonl",
        "metrics_parquet",
        "slow_jsonl",
        "slow_parquet",
        "summary",
    )
    assert written == {files[k] for k in local}


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.kind)
def test_every_stage_kinds_peak_and_segments_come_from_the_engine(stage: Any) -> None:
    s = shape([stage])
    values = [v for _, v in s.points]
    assert s.peak == max(values)
    segments = s.segments()
    # The pieces tile the stage, end to end.
    assert segments[0][0] == 0 and segments[-1][1] == pytest.approx(stage.duration_s)
    assert all(a[1] == pytest.approx(b[0]) for a, b in zip(segments, segments[1:], strict=False))
    # A dip (a spike whose base is above its peak) peaks at its base.
    if stage.kind == "spike":
        assert s.peak == stage.base == 500
    assert lp.Profile("open", (stage,)).peak == s.peak


def test_the_package_imports_its_root_only_for_the_engine_or_from_the_faces() -> None:
    # The layer contracts in pyproject.toml ignore `loadpilot.* -> loadpilot` (the compiled
    # engine is imported from the package's root); every such import must be of the engine,
    # unless it comes from the faces at the top (the command line and the terminal).
    graph = grimp.build_graph("loadpilot")
    faces = {"loadpilot.cli", "loadpilot.terminal"}
    for module in graph.find_modules_that_directly_import("loadpilot"):
        if module in faces or module == "loadpilot":
            continue
        for d in graph.get_import_details(importer=module, imported="loadpilot"):
            assert "_engine" in d["line_contents"], (module, d)
