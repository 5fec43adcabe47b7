"""Replay a recorded run in a notebook: the dashboard's panels at a time cursor, with a slider.

`Replay(run_dir)` opens a run with `open_run`; `figures(step)` builds the panels the
dashboard's Runs page shows (loss, surprise with update ticks, the level clock, update sizes,
and one level's activation and surprise heatmaps) with the cursor at `step`; `slider()` gives
an ipywidgets slider over the run's steps whose callback `on_step` redraws them. Only wiring:
every figure comes from `nlviz.figures`, every number from the run store.

The decision to know: the store is read once, when the Replay is made (scalars decimated to
PLOT_POINTS per series, clock events capped per level as on the dashboard), so moving the
cursor only redraws; a run still recording is seen as it was then (make a new Replay to
see more).
"""

from __future__ import annotations

import json
import os
from typing import Any

import plotly.graph_objects as go

from . import figures
from .store import RunReader, open_run

__all__ = ["PLOT_POINTS", "Replay"]

PLOT_POINTS = 1000  # points per series, as on the dashboard: the store decimates, keeping extremes


class Replay:
    """A recorded run's dashboard panels at any step, for notebooks."""

    def __init__(self, run_dir: str | os.PathLike, level: int = 1):
        """run_dir: a run directory (or its run.sqlite); level: whose heatmaps to show (from 1)."""
        self.run: RunReader = open_run(run_dir)
        self.periods = figures.periods_from_config(self.run.config)
        self.level = level
        self.last_step = self.run.last_step()
        self.scalars = self.run.scalars(max_points=PLOT_POINTS)
        self.events, self.busy = self.run.clock_events(len(self.periods), figures.BAND_EVENTS)
        self.tensor_steps = self.run.tensor_steps("activation", level=level)
        self.output: Any = None  # the ipywidgets Output that on_step draws into (set by slider)

    def heatmap_step(self, step: int) -> int | None:
        """The nearest tensor record at or before `step` (the first one if none is); None without records."""
        if not self.tensor_steps:
            return None
        return max((s for s in self.tensor_steps if s <= step), default=self.tensor_steps[0])

    def figures(self, step: int) -> dict[str, go.Figure]:
        """The dashboard's panels with the cursor at `step`: loss, surprise, clock, update_norm,
        activation, surprise_heatmap (the heatmaps at `heatmap_step(step)`)."""
        s, e, p, b = self.scalars, self.events, self.periods, self.busy
        out = {
            "loss": figures.loss_figure(s, None, p, cursor=step),
            "surprise": figures.surprise_figure(s, e, p, cursor=step, busy=b),
            "clock": figures.level_clock_figure(e, p, steps=self.last_step, cursor=step, busy=b),
            "update_norm": figures.update_norm_figure(s, p, cursor=step),
        }
        at = self.heatmap_step(step)
        for kind, key, title in (("activation", "activation", "activations y_l"),
                                 ("surprise", "surprise_heatmap", "surprise u_l = dL/dy_l")):
            sample = self.run.tensor(at, self.level, kind)[1] if at is not None else None
            out[key] = figures.heatmap_figure(sample, f"level {self.level}: {title}, step {at}")
        return out

    def on_step(self, change: dict[str, Any]) -> dict[str, go.Figure]:
        """The slider's observer: redraw every panel at step change["new"] into the Output."""
        figs = self.figures(int(change["new"]))
        if self.output is not None:  # replaced, not appended to: the Output holds one set of panels
            # Plotly's JSON mimetype, set directly: the same in a kernel, in tests and under any renderer.
            self.output.outputs = tuple({"output_type": "display_data", "metadata": {},
                                         "data": {"application/vnd.plotly.v1+json": json.loads(fig.to_json())}}
                                        for fig in figs.values())
        return figs

    def slider(self, step: int | None = None):
        """(IntSlider over steps 1..last step, Output holding the panels at its value); moving
        the slider calls on_step. Display both, e.g. `display(*replay.slider())`."""
        import ipywidgets as widgets

        last = max(self.last_step, 1)
        value = last if step is None else min(max(step, 1), last)
        slider = widgets.IntSlider(value=value, min=1, max=last, description="step", continuous_update=False)
        self.output = widgets.Output()
        slider.observe(self.on_step, names="value")
        self.on_step({"new": value})
        return slider, self.output

    def close(self) -> None:
        self.run.close()
