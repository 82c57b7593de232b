"""The profile tuner: edit a load profile's stages with sliders, see the rate curve and the total
request count before anything is sent, and take the profile back to start a run with.

    tuner = lp.tune(lp.ramp(0, 200, "10s") + lp.hold(200, "30s"))
    tuner                                   # the widget
    lp.start(Shop, target=url, profile=tuner.profile)
"""

from __future__ import annotations

import html
from typing import Any

import altair as alt
import ipywidgets as w
import polars as pl

from loadpilot.errors import PlanError
from loadpilot.plan import Constant, Ramp, Spike, Stage, Step
from loadpilot.profiles import Profile

KINDS = ("constant", "ramp", "step", "spike")


class StageEditor(w.HBox):  # type: ignore[misc]
    """One stage: its kind, its values and its duration."""

    def __init__(self, stage: Stage, max_value: float, max_duration_s: float) -> None:
        slider = {"continuous_update": False, "style": {"description_width": "initial"}}
        self.kind = w.Dropdown(options=KINDS, value=stage.kind, layout=w.Layout(width="7rem"))
        self.a = w.FloatSlider(min=0, max=max_value, step=1, description="rate", **slider)
        self.b = w.FloatSlider(min=0, max=max_value, step=1, description="to", **slider)
        self.steps = w.IntSlider(min=1, max=20, value=3, description="steps", **slider)
        self.duration = w.FloatSlider(
            min=1, max=max_duration_s, step=1, description="seconds", **slider
        )
        self.peak_s = w.FloatSlider(min=1, max=max_duration_s, step=1, description="peak s",
                                    **slider)  # fmt: skip
        self.remove = w.Button(description="✕", layout=w.Layout(width="2.5rem"),
                               tooltip="remove this stage")  # fmt: skip
        self._load(stage)
        self.kind.observe(lambda _: self._layout(), "value")
        super().__init__(layout=w.Layout(align_items="center"))
        self._layout()

    def _load(self, s: Stage) -> None:
        if isinstance(s, Constant):
            self.a.value = s.rate
        elif isinstance(s, Ramp | Step):
            self.a.value, self.b.value = s.from_, s.to
            if isinstance(s, Step):
                self.steps.value = s.steps
        else:
            self.a.value, self.b.value, self.peak_s.value = s.base, s.peak, s.peak_s
        self.duration.value = s.duration_s

    def _layout(self) -> None:
        kind = self.kind.value
        self.a.description = {"constant": "rate", "spike": "base"}.get(kind, "from")
        self.b.description = "peak" if kind == "spike" else "to"
        parts: list[w.Widget] = [self.kind, self.a]
        if kind != "constant":
            parts.append(self.b)
        if kind == "step":
            parts.append(self.steps)
        if kind == "spike":
            parts.append(self.peak_s)
        self.children = [*parts, self.duration, self.remove]

    @property
    def stage(self) -> Stage:
        kind, d = self.kind.value, self.duration.value
        if kind == "constant":
            return Constant(rate=self.a.value, duration_s=d)
        if kind == "ramp":
            return Ramp(from_=self.a.value, to=self.b.value, duration_s=d)
        if kind == "step":
            return Step(from_=self.a.value, to=self.b.value, steps=self.steps.value, duration_s=d)
        if self.peak_s.value >= d:
            raise PlanError(f"a spike's peak ({self.peak_s.value:g} s) must be shorter than "
                            f"its duration ({d:g} s)")  # fmt: skip
        return Spike(base=self.a.value, peak=self.b.value, peak_s=self.peak_s.value, duration_s=d)

    def widgets(self) -> list[w.Widget]:
        return [self.kind, self.a, self.b, self.steps, self.duration, self.peak_s]


class Tuner(w.VBox):  # type: ignore[misc]
    """Edits a :class:`Profile`; ``tuner.profile`` is the profile as it stands."""

    def __init__(
        self,
        profile: Profile | None = None,
        *,
        max_value: float | None = None,
        max_duration_s: float = 600.0,
    ) -> None:
        start = profile or Profile("open", (Constant(rate=100, duration_s=30),))
        peak = max(start.peak, 1.0)
        self.max_value = max_value or max(1000.0, 10 ** len(str(int(peak * 2))))
        self.max_duration_s = max(max_duration_s, max(s.duration_s for s in start.stages))
        self.model = w.ToggleButtons(options=[("open (requests/s)", "open"),
                                              ("closed (users)", "closed")],
                                     value=start.model, description="model")  # fmt: skip
        self.think = w.FloatText(value=start.think_s, description="think s",
                                 layout=w.Layout(width="12rem"))  # fmt: skip
        self.add = w.Button(description="add stage", icon="plus")
        self.add.on_click(lambda _: self._add(Constant(rate=self._last(), duration_s=30)))
        self.stages_box = w.VBox()
        self.info = w.HTML()
        self.chart = w.HTML()
        self.editors: list[StageEditor] = []
        for s in start.stages:
            self._add(s, refresh=False)
        self.model.observe(lambda _: self.refresh(), "value")
        self.think.observe(lambda _: self.refresh(), "value")
        super().__init__([w.HBox([self.model, self.think]), self.stages_box, self.add,
                          self.info, self.chart])  # fmt: skip
        self.refresh()

    def _last(self) -> float:
        pts = self._profile_or_none()
        return pts.points()[-1][1] if pts is not None else 0.0

    def _add(self, stage: Stage, refresh: bool = True) -> None:
        ed = StageEditor(stage, self.max_value, self.max_duration_s)
        for x in ed.widgets():
            x.observe(lambda _: self.refresh(), "value")
        ed.remove.on_click(lambda _, e=ed: self._remove(e))
        self.editors.append(ed)
        self.stages_box.children = self.editors
        if refresh:
            self.refresh()

    def _remove(self, ed: StageEditor) -> None:
        if len(self.editors) > 1:
            self.editors.remove(ed)
            self.stages_box.children = self.editors
            self.refresh()

    def _profile_or_none(self) -> Profile | None:
        try:
            return self.profile
        except (PlanError, ValueError):
            return None

    @property
    def profile(self) -> Profile:
        """The profile the widgets describe (raises :class:`PlanError` if it is invalid)."""
        think = float(self.think.value) if self.model.value == "closed" else 0.0
        if think < 0:
            raise PlanError(f"think time must be >= 0, got {think}")
        return Profile(self.model.value, tuple(e.stage for e in self.editors), think)

    def summary(self) -> str:
        p = self.profile
        unit = "requests" if p.model == "open" else "user-seconds"
        peak_unit = "requests/s" if p.model == "open" else "users"
        return (f"{p.duration_s:,.0f} s · {p.total:,.0f} {unit} · peak {p.peak:,.0f} "
                f"{peak_unit}")  # fmt: skip

    def rate_chart(self) -> alt.Chart:
        p = self.profile
        pts = p.points()
        frame = pl.DataFrame({"seconds": [t for t, _ in pts], "value": [v for _, v in pts]})
        title = "requests per second" if p.model == "open" else "virtual users"
        # The corners repeat at each stage's boundary (a step is two points at one instant):
        # never stacked (an area stacks the values at one x by default, which drew a ramp to
        # 300 then a hold of 300 as a jump to 600 sloping down).
        chart: alt.Chart = (
            alt.Chart(frame)
            .mark_area(line=True, opacity=0.3)
            .encode(
                x=alt.X("seconds:Q"),
                y=alt.Y("value:Q", title=title, stack=None),
            )
            .properties(width=560, height=180, title="Load profile")
        )
        return chart

    def refresh(self) -> None:
        """Redraws the curve and the totals from the widgets."""
        self.think.layout.display = "" if self.model.value == "closed" else "none"
        try:
            text = self.summary()
            chart = self.rate_chart()
        except (PlanError, ValueError) as e:
            self.info.value = f"<b style='color:#b00'>{html.escape(str(e))}</b>"
            return
        self.info.value = f"<b>{html.escape(text)}</b>"
        self.chart.value = _svg(chart)

    def __repr__(self) -> str:
        try:
            return f"<Tuner {self.summary()}>"
        except (PlanError, ValueError) as e:
            return f"<Tuner (invalid: {e})>"


def _svg(chart: alt.Chart) -> str:
    import vl_convert as vlc

    spec: dict[str, Any] = chart.to_dict()
    out: str = vlc.vegalite_to_svg(spec)
    return out


def tune(
    profile: Profile | None = None,
    *,
    max_value: float | None = None,
    max_duration_s: float = 600.0,
) -> Tuner:
    """A widget to edit ``profile`` (default: 100 requests/s for 30 s): stages with sliders,
    the rate curve and the total request count, redrawn as you edit. ``tuner.profile`` is the
    result; pass it to ``lp.start(Scenario, target=..., profile=tuner.profile)`` or use
    ``tuner.profile.to_load()`` in a :class:`Plan`."""
    return Tuner(profile, max_value=max_value, max_duration_s=max_duration_s)
