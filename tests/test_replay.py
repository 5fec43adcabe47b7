"""nlviz.replay: the slider callback (which nbval never triggers) and the figures it draws."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
from conftest import tiny_config

from nlviz import RunWriter, Trainer
from nlviz.replay import Replay

PERIODS = (1, 2, 3)
STEPS = 30
TENSORS_EVERY = 7  # records at 7, 14, 21, 28: most steps fall between two


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    directory = tmp_path_factory.mktemp("replay")
    Trainer(tiny_config(PERIODS, steps=STEPS),
            [RunWriter(directory, scalars_every=1, tensors_every=TENSORS_EVERY, memory_every=5)]).run()
    r = Replay(directory, level=2)
    yield r
    r.close()


def _cursor(fig: go.Figure) -> list:
    return [s.x0 for s in fig.layout.shapes if s.name == "cursor"]


def _trace(fig: go.Figure, name: str) -> go.BaseTraceType:
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


@pytest.mark.parametrize("k", [1, 13, 14, 30])
def test_on_step_draws_every_panel_at_the_new_step(replay, k):
    figs = replay.on_step({"new": k})
    assert set(figs) == {"loss", "surprise", "clock", "update_norm", "activation", "surprise_heatmap"}
    for name in ("loss", "surprise", "clock", "update_norm"):
        assert _cursor(figs[name]) == [k], name
    nearest = max((s for s in range(TENSORS_EVERY, STEPS + 1, TENSORS_EVERY) if s <= k), default=TENSORS_EVERY)
    assert replay.heatmap_step(k) == nearest
    for key, kind in (("activation", "activation"), ("surprise_heatmap", "surprise")):
        assert f"step {nearest}" in figs[key].layout.title.text
        np.testing.assert_array_equal(np.asarray(figs[key].data[0].z, dtype=np.float32),
                                      replay.run.tensor(nearest, 2, kind)[1].astype(np.float32))


def test_on_step_redraws_into_the_slider_output(replay):
    slider, output = replay.slider(step=5)
    assert (slider.min, slider.max, slider.value, slider.continuous_update) == (1, STEPS, 5, False)
    slider.value = 22  # what moving the slider does: the observer runs on_step
    shown = [o for o in output.outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(shown) == len(output.outputs) == 6  # replaced: the six panels at the new step
    layouts = [o["data"]["application/vnd.plotly.v1+json"]["layout"] for o in shown]
    cursors = [s["x0"] for lay in layouts for s in lay.get("shapes", []) if s.get("name") == "cursor"]
    assert cursors == [22] * 4
    assert "step 21" in layouts[4]["title"]["text"]


def test_figures_draw_the_recorded_data(replay):
    figs = replay.figures(10)
    run = replay.run
    loss = run.scalars("loss", level=0)
    trace = _trace(figs["loss"], "loss (whole model)")
    np.testing.assert_array_equal(trace.x, loss.step.to_numpy())
    np.testing.assert_allclose(trace.y, loss.value.to_numpy())
    for l in (1, 2, 3):
        norms = run.scalars("surprise_norm", level=l)
        shown = [t for t in figs["surprise"].data if t.x is not None and len(t.x) == len(norms)
                 and np.allclose(np.asarray(t.y, dtype=float), norms.value.to_numpy())]
        assert len(shown) == 1, l
    clock = figs["clock"]
    marked = sorted((int(x), int(y)) for t in clock.data for x, y in zip(t.x, t.y))
    recorded = sorted(map(tuple, run.level_updates()[["step", "level"]].to_numpy().tolist()))
    assert marked == recorded
