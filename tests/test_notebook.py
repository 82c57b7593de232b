"""The notebook experience: the live dashboard in a real kernel (executed by nbclient, as nbval
does), the profile tuner's widgets, and how runs render in a cell."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import loadpilot as lp
from tests.conftest import constant, get, wait_for_rows

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow


def execute(cells: list[str], cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells]
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


def outputs(nb: nbformat.NotebookNode, i: int) -> list[dict[str, object]]:
    return list(nb.cells[i].outputs)


def test_the_live_dashboard_updates_without_blocking_and_freezes_on_the_end(
    tmp_path: Path,
) -> None:
    nb = execute(
        [
            """
            import time, loadpilot as lp
            target = lp.start_target(delay_ms=1, delay_max_ms=4, error_rate=0.05, seed=1)
            plan = lp.Plan(name="live", target=target.url,
                           load=lp.OpenLoad(stages=[lp.Constant(rate=200, duration_s=4)]),
                           tasks=[lp.Task(name="home", requests=[lp.Request(path="/")])])
            run = lp.start(plan, "run")
            dash = run.live()
            """,
            # Runs while the run goes: the dashboard's thread leaves the kernel free.
            "print('other cell ran while running:', not run.done)",
            "run.wait()\nprint('frames', dash.frames)",
            "run",
        ],
        tmp_path,
    )
    (live,) = outputs(nb, 0)
    page = live["data"]["text/html"]  # type: ignore[index]
    # The display now holds the final frame: the end state, the charts, the summary table.
    assert "■ completed" in page and "800 requests" in page
    assert page.count("<svg") == 1 and len(re.findall(r"<path", page)) > 20
    assert "<td>home</td>" in page
    # And the run's slowest requests, with the trace ids they carried.
    slowest = page[page.index("<h4>Slowest requests</h4>") :]
    assert slowest.count("<tr>") == 1 + 5 and re.search(r">[0-9a-f]{32}<", slowest)
    assert outputs(nb, 1)[0]["text"] == "other cell ran while running: True\n"
    frames = int(outputs(nb, 2)[0]["text"].split()[1])  # type: ignore[index, union-attr]
    assert frames >= 3, "it redrew about once a second"
    shown = outputs(nb, 3)[0]["data"]  # type: ignore[index]
    assert "finished (completed)" in shown["text/html"] and "<table>" in shown["text/html"]


def test_runs_and_summaries_render_as_compact_tables(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    plan = lp.Plan(name="<r>", target=target.url, load=constant(100, 4), tasks=[get("a")])
    run = lp.start(plan, tmp_path / "r")
    wait_for_rows(tmp_path / "r", 1)
    running = run._repr_html_()  # three seconds before the end of the run
    assert "running" in running and "&lt;r&gt;" in running
    run.wait()
    done = run._repr_html_()
    assert "finished (completed)" in done and "<td>a</td>" in done and "<td>400</td>" in done
    # The tasks' table (a head, the task, all) and the request names' (a head, the name).
    assert lp.load_run(run.path)._repr_html_().count("<tr>") == (1 + 2) + (1 + 1)
    assert run.summary()._repr_html_().startswith("<table>")


def test_the_tuner_edits_a_profile_and_counts_its_requests() -> None:
    tuner = lp.tune(lp.ramp(0, 200, "10s") + lp.hold(200, "30s"))
    assert tuner.profile == lp.ramp(0, 200, "10s") + lp.hold(200, "30s")
    assert tuner.summary() == "40 s · 7,000 requests · peak 200 requests/s"
    assert "<svg" in tuner.chart.value
    # Edit the hold's rate, turn the ramp into steps, add a stage: the totals follow.
    tuner.editors[1].a.value = 300
    tuner.editors[0].kind.value = "step"
    tuner.editors[0].steps.value = 3
    assert tuner.profile.stages[0] == lp.Step(from_=0, to=200, steps=3, duration_s=10)
    assert tuner.profile.total == pytest.approx(10 / 3 * (0 + 100 + 200) + 300 * 30)
    tuner.add.click()
    assert len(tuner.profile.stages) == 3 and tuner.profile.stages[2].rate == 300  # type: ignore[union-attr]
    assert "19,000 requests" in tuner.info.value
    tuner.editors[2].remove.click()
    assert len(tuner.profile.stages) == 2
    # A closed model counts user-seconds and keeps its think time.
    tuner.model.value = "closed"
    tuner.think.value = 0.5
    assert tuner.profile.model == "closed" and tuner.profile.think_s == 0.5
    assert "user-seconds" in tuner.info.value
    # An impossible stage is reported in the widget, and the profile refuses it.
    tuner.editors[0].kind.value = "spike"
    tuner.editors[0].peak_s.value = 20
    assert "must be shorter" in tuner.info.value
    with pytest.raises(lp.PlanError):
        _ = tuner.profile


def _area_points(chart: object) -> list[tuple[float, float, float]]:
    """The drawn area's points, as Vega renders them: (x, top y, baseline y) in pixels."""
    import vl_convert as vlc

    found: list[tuple[float, float, float]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("marktype") == "area":
                found.extend((i["x"], i["y"], i["y2"]) for i in node["items"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(vlc.vegalite_to_scenegraph(chart.to_dict()))  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize(
    "profile",
    [
        lp.ramp(0, 300, "10s") + lp.hold(300, "1m"),
        lp.constant(100, "10s") + lp.constant(300, "10s") + lp.constant(50, "5s"),
        lp.step(0, 400, 4, "20s") + lp.hold(400, "10s"),
        lp.spike(50, 500, "2s", "10s"),
        lp.ramp(300, 0, "10s") + lp.hold(0, "5s") + lp.ramp(0, 200, "5s"),
    ],
    ids=["ramp+hold", "constants", "steps", "spike", "down-pause-up"],
)
def test_the_tuner_draws_the_profile_it_runs(profile: lp.Profile) -> None:
    """The rendered curve, point by point, is the profile's (the engine's corners): never
    stacked where two stages meet, its highest point the peak, a hold flat."""
    tuner = lp.tune(profile)
    drawn = _area_points(tuner.rate_chart())
    corners = profile.points()
    assert len(drawn) == len(corners)
    baseline = drawn[0][2]
    assert all(y2 == baseline for _, _, y2 in drawn), "nothing stacked on anything"
    # Heights in pixels are the values on one scale: the same ratio everywhere.
    scale = {
        round((baseline - y) / v, 6)
        for (_, y, _), (_, v) in zip(drawn, corners, strict=True)
        if v > 0
    }
    assert len(scale) == 1, scale
    peak = max(v for _, v in corners)
    assert peak == pytest.approx(profile.peak)
    assert min(y for _, y, _ in drawn) == pytest.approx(baseline - peak * scale.pop())
    assert [x for x, _, _ in drawn] == sorted(x for x, _, _ in drawn)


def test_a_tuned_profile_starts_a_scenario(target: lp.TargetServer, tmp_path: Path) -> None:
    @lp.scenario(profile=lp.constant(rps=10, duration="10s"))
    class S(lp.VUser):
        @lp.task
        def home(self) -> None:
            self.client.get("/")

    tuner = lp.tune(lp.constant(rps=10, duration="10s"))
    tuner.editors[0].a.value = 150
    tuner.editors[0].duration.value = 2
    run = lp.run(S, tmp_path / "r", target=target.url, profile=tuner.profile)
    assert run.summary().overall.requests == 300


def test_a_running_frame_shows_the_last_second_of_each_request_name(
    target: lp.TargetServer, tmp_path: Path
) -> None:
    from loadpilot.notebook.live import Dashboard

    shop = lp.Task(
        name="shop",
        requests=[lp.Request(path="/", name="home"), lp.Request(path="/json", name="cart <json>")],
    )
    plan = lp.Plan(name="names", target=target.url, load=constant(100, 3), tasks=[shop])
    run = lp.start(plan, tmp_path / "r")
    wait_for_rows(tmp_path / "r", 1)
    frame = Dashboard(run)._repr_html_()  # while the run goes
    run.wait()
    assert "● running" in frame
    rows = re.findall(r"<tr><td>shop</td><td>([^<]*)</td><td[^>]*>([\d.,]+)</td>", frame)
    assert sorted(name for name, _ in rows) == ["cart &lt;json&gt;", "home"], frame
    assert all(float(rps.replace(",", "")) > 0 for _, rps in rows)
