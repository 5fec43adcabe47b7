"""Figures against the data they draw: tiny real runs recorded once per module, then every
builder checked trace by trace (x and y equal the store's columns, clock marks equal the
level clock, shading on multiples of the period, Eq 25's difference panel, the Hebbian and
delta updates against nlviz.rules), plus empty, NaN and long inputs."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from nlviz import LevelClock, RunWriter, Trainer, open_run, rules
from nlviz.figures import (BAND_EVENTS, GL_POINTS, MAX_CHUNKS, NO_DATA, add_chunk_shading, compare_figure,
                           eq25_figure, heatmap_figure, hebbian_vs_delta_figure, histogram_figure, level_clock_figure,
                           level_colour, loss_figure, memory_updates, objectives_figure, periods_from_config,
                           surprise_figure, tensor_stats_figure, update_norm_figure)
from nlviz.store import MemoryRecord

from conftest import tiny_config

PERIODS = (1, 2, 3)
STEPS = 30


def _record(directory, periods, steps):
    Trainer(tiny_config(periods, steps=steps), [RunWriter(directory, scalars_every=1, tensors_every=5, memory_every=5)]).run()
    return open_run(directory)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    reader = _record(tmp_path_factory.mktemp("cms"), PERIODS, STEPS)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    reader = _record(tmp_path_factory.mktemp("one-level"), (1,), 20)
    yield reader
    reader.close()


def _trace(fig: go.Figure, name: str):
    (found,) = [t for t in fig.data if t.name == name]
    return found


def _rows(df: pd.DataFrame, name: str, level: int) -> pd.DataFrame:
    return df[(df.name == name) & (df.level == level)].sort_values("step")


def _marks(fig: go.Figure) -> list[tuple[int, int]]:
    """Every (step, level) clock mark of a figure, with repeats."""
    return sorted((int(x), int(y)) for t in fig.data if getattr(t, "mode", None) == "markers" and t.hovertemplate
                  and "updates at t" in t.hovertemplate for x, y in zip(t.x, t.y))


def _shapes(fig: go.Figure, name: str) -> list:
    return [s for s in fig.layout.shapes if s.name == name]


def _no_data(fig: go.Figure) -> bool:
    return not fig.data and any(a.text == NO_DATA for a in fig.layout.annotations)


def _expected_clock(periods, steps) -> list[tuple[int, int]]:
    return sorted((t, l + 1) for t, l in LevelClock(periods).updates_between(1, steps))


def test_periods_from_the_stored_config(run):
    assert periods_from_config(run.config) == PERIODS


def test_loss_figure_draws_the_recorded_loss_with_update_strip_shading_and_cursor(run):
    scalars, updates = run.scalars(), run.level_updates()
    fig = loss_figure(scalars, updates, PERIODS, cursor=12)
    loss = _rows(scalars, "loss", 0)
    trace = _trace(fig, "loss (whole model)")
    np.testing.assert_array_equal(trace.x, loss.step.to_numpy())
    np.testing.assert_array_equal(trace.y, loss.value.to_numpy())
    assert len(loss) == STEPS and fig.layout.yaxis.type == "log"
    assert _marks(fig) == sorted(map(tuple, updates.values.tolist())) == _expected_clock(PERIODS, STEPS)
    assert [s.x0 for s in _shapes(fig, "cursor")] == [12]
    # the same shading as add_chunk_shading over the data's steps
    ref = add_chunk_shading(go.Figure(), PERIODS, (1, STEPS))
    assert [(s.x0, s.x1) for s in _shapes(fig, "chunk")] == [(s.x0, s.x1) for s in _shapes(ref, "chunk")] != []


def test_surprise_figure_per_level_with_update_ticks(run):
    scalars, updates = run.scalars(), run.level_updates()
    fig = surprise_figure(scalars, updates, PERIODS, cursor=7)
    for level in (1, 2, 3):
        rows = _rows(scalars, "surprise_norm", level)
        trace = _trace(fig, f"level {level} (C={PERIODS[level - 1]})")
        assert len(rows) == STEPS
        np.testing.assert_array_equal(trace.x, rows.step.to_numpy())
        np.testing.assert_array_equal(trace.y, rows.value.to_numpy())
        assert trace.line.color == level_colour(level)
    assert fig.layout.yaxis.type == "log"
    assert _marks(fig) == _expected_clock(PERIODS, STEPS)
    assert [s.x0 for s in _shapes(fig, "cursor")] == [7]


def test_level_clock_draws_exactly_the_recorded_events(run):
    updates = run.level_updates()
    fig = level_clock_figure(updates, PERIODS, steps=STEPS, cursor=5)
    assert _marks(fig) == sorted(map(tuple, updates.values.tolist())) == _expected_clock(PERIODS, STEPS)
    for level in (1, 2, 3):  # each level's marks in its own colour, chunk starts in the hover data
        trace = _trace(fig, f"level {level} (C={PERIODS[level - 1]})")
        assert trace.marker.color == level_colour(level)
        np.testing.assert_array_equal(np.asarray(trace.customdata), np.maximum(np.asarray(trace.x) - PERIODS[level - 1] + 1, 1))
    assert list(fig.layout.yaxis.ticktext) == ["level 1 (C=1)", "level 2 (C=2)", "level 3 (C=3)"]
    assert tuple(fig.layout.xaxis.range) == (0.5, STEPS + 0.5)
    assert [s.x0 for s in _shapes(fig, "cursor")] == [5]
    # a partial (live) record draws just what it has
    part = level_clock_figure(updates[updates.step <= 10], PERIODS)
    assert _marks(part) == _expected_clock(PERIODS, 10)


def test_level_clock_draws_a_busy_level_as_a_band_and_says_so():
    n = BAND_EVENTS + 1000
    updates = pd.DataFrame({"step": np.r_[np.arange(1, n + 1), np.arange(100, n + 1, 100)],
                            "level": np.r_[np.ones(n, int), np.full(n // 100, 2)]})
    fig = level_clock_figure(updates, (1, 100))
    band = _trace(fig, "level 1 (C=1)")
    assert isinstance(band, go.Bar) and band.base == (1,) and band.x == (n - 1,) and band.y == (1,)
    assert f"{n} updates" in band.hovertemplate and "every C=1 steps" in band.hovertemplate
    assert _marks(fig) == [(t, 2) for t in range(100, n + 1, 100)]
    assert isinstance(_trace(fig, "level 2 (C=100)"), go.Scattergl if n // 100 > GL_POINTS else go.Scatter)
    gappy = level_clock_figure(updates.drop(index=10), (1, 100))
    assert "not evenly spaced" in _trace(gappy, "level 1 (C=1)").hovertemplate


def test_a_level_passed_only_by_its_extent_is_a_band_over_its_whole_range():
    few = pd.DataFrame({"step": [64, 128, 192], "level": [3, 3, 3]})
    busy = {1: (200, 1, 200), 2: (25, 8, 200)}  # what a reader reports for levels it did not fetch one by one
    empty = pd.DataFrame(columns=["step", "level", "name", "value"])
    for fig, suffix in ((level_clock_figure(few, (1, 8, 64), busy=busy), ""),
                        (surprise_figure(empty, few, (1, 8, 64), busy=busy), " updates")):
        one, two = _trace(fig, "level 1 (C=1)" + suffix), _trace(fig, "level 2 (C=8)" + suffix)
        assert isinstance(one, go.Bar) and one.base == (1,) and one.x == (199,) and "200 updates" in one.hovertemplate
        assert "every C=1 steps" in one.hovertemplate and "every C=8 steps" in two.hovertemplate
        assert two.base == (8,) and two.x == (192,)
    assert _marks(level_clock_figure(few, (1, 8, 64), busy=busy)) == [(64, 3), (128, 3), (192, 3)]
    gappy = level_clock_figure(few, (1, 8, 64), busy={2: (20, 8, 200)})
    assert "not evenly spaced" in _trace(gappy, "level 2 (C=8)").hovertemplate


@pytest.mark.parametrize("periods, x_range, level", [
    ((1, 2, 3), (1, 30), 3),  # the slowest level, 10 chunks
    ((1, 8, 64), (1, 30), 2),  # level 3 has one chunk in view, no boundary: level 2 is shaded
    ((4, 16), (200, 1000), 2),  # a window that does not start at 0
])
def test_chunk_shading_falls_on_multiples_of_the_chosen_period(periods, x_range, level):
    fig = add_chunk_shading(go.Figure(), periods, x_range)
    shapes, C = _shapes(fig, "chunk"), periods[level - 1]
    lo, hi = x_range
    assert shapes and all(s.fillcolor == level_colour(level) and s.layer == "below" for s in shapes)
    for s in shapes:
        assert lo <= s.x0 < s.x1 <= hi
        assert all(edge % C == 0 or edge in (lo, hi) for edge in (s.x0, s.x1))
        assert s.x1 - s.x0 <= C
    starts = [s.x0 for s in shapes]
    assert all(b - a == 2 * C for a, b in zip(starts[1:], starts[2:]))  # alternate chunks
    chunks = -(-hi // C) - lo // C
    assert len(shapes) == (chunks + 1) // 2 <= MAX_CHUNKS // 2
    assert f"level {level} (C={C})" in fig.layout.annotations[0].text


def test_no_chunk_shading_when_no_level_stays_readable():
    fig = add_chunk_shading(go.Figure(), (1, 8, 64), (1, 100_000))  # level 3: 1563 chunks
    assert not fig.layout.shapes and not fig.layout.annotations
    assert not add_chunk_shading(go.Figure(), (1, 8), (5, 5)).layout.shapes
    assert not add_chunk_shading(go.Figure(), None, (1, 30)).layout.shapes


def test_update_norm_figure_marks_each_measured_update(run):
    scalars = run.scalars()
    fig = update_norm_figure(scalars, PERIODS, cursor=3)
    for level in (1, 2, 3):
        rows = _rows(scalars, "update_norm", level)
        trace = _trace(fig, f"level {level} (C={PERIODS[level - 1]})")
        assert trace.mode == "markers" and trace.marker.color == level_colour(level)
        np.testing.assert_array_equal(trace.x, rows.step.to_numpy())
        np.testing.assert_array_equal(trace.y, rows.value.to_numpy())
        assert rows.step.tolist() == list(range(PERIODS[level - 1], STEPS + 1, PERIODS[level - 1]))
    assert [s.x0 for s in _shapes(fig, "cursor")] == [3]


def test_update_norm_figure_draws_a_busy_level_as_a_line():
    from nlviz.figures import MAX_MARKERS

    n = MAX_MARKERS + 1
    scalars = pd.DataFrame({"step": np.r_[np.arange(1, n + 1), np.arange(8, 8 * 11, 8)], "level": [1] * n + [2] * 10,
                            "name": "update_norm", "value": np.linspace(1, 2, n + 10)})
    fig = update_norm_figure(scalars, (1, 8))
    busy, sparse = _trace(fig, "level 1 (C=1)"), _trace(fig, "level 2 (C=8)")
    assert busy.mode == "lines" and len(busy.x) == n  # every point kept, drawn as a line
    assert sparse.mode == "markers" and len(sparse.x) == 10


def test_steady_fixes_the_margins():
    from nlviz.figures import steady

    fig = steady(heatmap_figure(np.ones((2, 3)), "t"), right=90)
    m = fig.layout.margin
    assert (m.l, m.r, m.t, m.b, m.autoexpand) == (70, 90, 60, 50, False)


def test_heatmap_of_a_recorded_sample_is_symmetric_around_zero(run):
    _, sample = run.tensor(10, 2, "activation")
    fig = heatmap_figure(sample, "y_2 at step 10")
    z = np.asarray(fig.data[0].z)
    np.testing.assert_array_equal(z, sample.astype(np.float32))
    m = float(np.abs(sample.astype(np.float32)).max())
    assert fig.data[0].zmax == pytest.approx(m) and fig.data[0].zmin == pytest.approx(-m) and m > 0


def test_histogram_bins_cover_min_to_max(run):
    hist, _ = run.tensor(15, 1, "surprise")
    row = run.tensor_stats(kind="surprise", level=1).set_index("step").loc[15]
    fig = histogram_figure(hist, row["min"], row["max"], "u_1 at step 15")
    bar = fig.data[0]
    np.testing.assert_array_equal(bar.y, hist)
    width = (row["max"] - row["min"]) / len(hist)
    np.testing.assert_allclose(bar.x, row["min"] + width * (np.arange(len(hist)) + 0.5))
    assert bar.width == pytest.approx(width) and bar.customdata[-1][1] == pytest.approx(row["max"])


def test_objectives_figure_shows_eq26_and_eq27_of_one_level(run):
    scalars = run.scalars()
    fig = objectives_figure(scalars, 2, PERIODS, cursor=4)
    for i, name in enumerate(("dot_objective", "l2_objective")):
        rows = _rows(scalars, name, 2)
        assert len(rows) == STEPS
        np.testing.assert_array_equal(fig.data[i].x, rows.step.to_numpy())
        np.testing.assert_array_equal(fig.data[i].y, rows.value.to_numpy())
    titles = [a.text for a in fig.layout.annotations]
    assert any("Eq 27" in t and "target v = -u (the printed +u is a sign slip)" in t for t in titles)
    assert any("Eq 26" in t and "<W x, u>" in t for t in titles)
    assert [s.x0 for s in _shapes(fig, "cursor")] == [4]


def test_eq25_figure_difference_panel_is_outer_minus_grad_and_tiny(run):
    steps = run.memory_steps()
    assert len(steps) == 6 * len(PERIODS)
    for step, level in steps.values.tolist():
        record = run.memory(step, level)
        fig = eq25_figure(record)
        panels = {t.name: np.asarray(t.z) for t in fig.data}
        np.testing.assert_array_equal(panels["difference"], record.outer - record.grad)
        np.testing.assert_array_equal(panels["outer"], record.outer)
        np.testing.assert_array_equal(panels["grad"], record.grad)
        np.testing.assert_array_equal(panels["x"], record.x)
        np.testing.assert_array_equal(panels["u"], record.u)
        (title,) = [a.text for a in fig.layout.annotations if "max |.|" in a.text]
        shown = float(re.search(r"max \|\.\| = (\S+)", title).group(1))
        exact = float(np.abs(record.outer - record.grad).max())
        assert shown == pytest.approx(exact, rel=0.01, abs=1e-30) and shown < 1e-5
        # outer and grad share one symmetric colour scale holding both
        shared = {t.coloraxis for t in fig.data if t.name in ("outer", "grad")}
        assert shared == {"coloraxis3"}
        axis = fig.layout.coloraxis3
        assert axis.cmin == -axis.cmax and axis.cmax >= max(np.abs(record.outer).max(), np.abs(record.grad).max())


def _full_record(W: torch.Tensor, x: torch.Tensor, u: torch.Tensor) -> MemoryRecord:
    """A MemoryRecord whose block is the whole of a small W."""
    return MemoryRecord(step=1, level=1, batch=len(x), shape=tuple(W.shape), x=x.numpy(), u=u.numpy(),
                        wx=(x @ W.T).numpy(), x_sq=x.pow(2).sum(1).numpy(), weight=W.numpy(),
                        outer=rules.outer_sum(u, x).numpy(), grad=rules.outer_sum(u, x).numpy())


def _check_against_rules(record: MemoryRecord, W: torch.Tensor, lr: float, row: int) -> None:
    x, u = torch.from_numpy(record.x[row].copy()), torch.from_numpy(record.u[row].copy())
    m = memory_updates(record, lr, row)
    heb, delta = rules.hebbian_step(W, x, u, lr), rules.delta_step(W, x, u, lr)
    erase = rules.delta_step(W, x, torch.zeros_like(u), lr)  # the delta rule with nothing to write
    tol = dict(rtol=1e-5, atol=1e-6 * max(1.0, lr))
    np.testing.assert_allclose(m.hebbian, (heb - W).numpy(), **tol)
    np.testing.assert_allclose(m.delta, (delta - W).numpy(), **tol)
    np.testing.assert_allclose(m.erase, (erase - W).numpy(), **tol)
    np.testing.assert_allclose(m.readout_hebbian, (heb @ x).numpy(), **tol)
    np.testing.assert_allclose(m.readout_delta, (delta @ x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(m.target, -record.u[row])
    assert m.a == pytest.approx(lr / (1 + lr * float(x.double().pow(2).sum())), rel=1e-6)


@pytest.mark.parametrize("lr", [0.05, 3.0])
@pytest.mark.parametrize("row", [0, 1])
def test_memory_updates_agree_with_the_rules_on_a_full_matrix(lr, row):
    g = torch.Generator().manual_seed(row)
    W, x, u = (torch.randn(shape, generator=g) for shape in ((3, 5), (2, 5), (2, 3)))
    _check_against_rules(_full_record(W, x, u), W, lr, row)


def test_memory_updates_agree_with_the_rules_on_a_recorded_layer(run):
    record = run.memory(20, 3)
    assert record.weight.shape == record.shape  # the tiny layer is kept whole
    _check_against_rules(record, torch.from_numpy(record.weight.copy()), 0.05, 1)


def test_a_huge_step_makes_the_delta_readout_the_target_and_the_hebbian_one_overshoot():
    g = torch.Generator().manual_seed(3)
    W, x, u = (torch.randn(shape, generator=g) for shape in ((4, 6), (1, 6), (1, 4)))
    m = memory_updates(_full_record(W, x, u), 1e9)
    np.testing.assert_allclose(m.readout_delta, m.target, atol=1e-6)
    assert np.abs(m.readout_hebbian - m.target).max() > 1e6
    small = memory_updates(_full_record(W, x, u), 1e-3)
    assert np.abs(small.readout_delta - small.target).max() > 0.1  # a small step does not reach it


def test_memory_updates_name_a_bad_argument(run):
    with pytest.raises(ValueError, match=r"^row: must be in 0\.\.3, got 4$"):
        memory_updates(run.memory(5, 1), 0.1, row=4)
    with pytest.raises(ValueError, match=r"^lr: must be a finite number >= 0"):
        memory_updates(run.memory(5, 1), -1.0)


def test_hebbian_vs_delta_figure_draws_the_helper_s_numbers(run):
    record = run.memory(15, 2)
    fig = hebbian_vs_delta_figure(record, 0.5, row=2)
    m = memory_updates(record, 0.5, row=2)
    for name in ("hebbian", "delta", "erase"):
        trace = _trace(fig, name)
        np.testing.assert_array_equal(np.asarray(trace.z), getattr(m, name))
        assert trace.coloraxis == "coloraxis"
    np.testing.assert_array_equal(_trace(fig, "W x (before)").y, record.wx[2])
    np.testing.assert_array_equal(_trace(fig, "Hebbian: W x - lr ||x||^2 u").y, m.readout_hebbian)
    np.testing.assert_array_equal(_trace(fig, "delta: W x - a ||x||^2 (W x + u)").y, m.readout_delta)
    np.testing.assert_array_equal(_trace(fig, "target -u").y, -record.u[2])
    assert f"a = lr / (1 + lr ||x||^2) = {m.a:.3g}" in fig.layout.title.text


def test_compare_figure_draws_one_series_of_two_runs(run, single):
    a, b = run.scalars(), single.scalars()
    fig = compare_figure(a, b, "loss", labels=("CMS", "one level"), cursor=9)
    assert [t.name for t in fig.data] == ["CMS: loss (whole model)", "one level: loss (whole model)"]
    for trace, df, dash in zip(fig.data, (a, b), ("solid", "dash")):
        rows = _rows(df, "loss", 0)
        np.testing.assert_array_equal(trace.x, rows.step.to_numpy())
        np.testing.assert_array_equal(trace.y, rows.value.to_numpy())
        assert trace.line.dash == dash
    assert [s.x0 for s in _shapes(fig, "cursor")] == [9]
    every = compare_figure(a, b, "surprise_norm", periods=(PERIODS, (1,)))
    assert [t.name for t in every.data] == ["A: level 1 (C=1)", "A: level 2 (C=2)", "A: level 3 (C=3)", "B: level 1 (C=1)"]
    one = compare_figure(a, b, "surprise_norm", level=2)
    assert [t.name for t in one.data] == ["A: level 2"]  # the one-level run has no level 2


def test_tensor_stats_figure_band_and_extremes(run):
    stats = run.tensor_stats()
    fig = tensor_stats_figure(stats, "surprise", PERIODS, cursor=10)
    for level in (1, 2, 3):
        rows = stats[(stats.kind == "surprise") & (stats.level == level)].sort_values("step")
        label = f"level {level} (C={PERIODS[level - 1]})"
        assert rows.step.tolist() == [5, 10, 15, 20, 25, 30]
        np.testing.assert_array_equal(_trace(fig, label).x, rows.step.to_numpy())
        np.testing.assert_array_equal(_trace(fig, label).y, rows["mean"].to_numpy())
        np.testing.assert_array_equal(_trace(fig, f"{label} mean + std").y, rows["mean"] + rows["std"])
        np.testing.assert_array_equal(_trace(fig, f"{label} mean - std").y, rows["mean"] - rows["std"])
        np.testing.assert_array_equal(_trace(fig, f"{label} min").y, rows["min"].to_numpy())
        np.testing.assert_array_equal(_trace(fig, f"{label} max").y, rows["max"].to_numpy())
        assert _trace(fig, label).line.color == level_colour(level)
    assert [s.x0 for s in _shapes(fig, "cursor")] == [10]


def test_one_colour_per_level_in_every_figure(run):
    scalars, updates, stats = run.scalars(), run.level_updates(), run.tensor_stats()
    colours = {level_colour(l) for l in range(0, 9)}
    assert len(colours) == 9  # the whole model and eight levels are told apart
    for level in (1, 2, 3):
        label = f"level {level} (C={PERIODS[level - 1]})"
        seen = {
            _trace(surprise_figure(scalars, None, PERIODS), label).line.color,
            _trace(update_norm_figure(scalars, PERIODS), label).marker.color,
            _trace(level_clock_figure(updates, PERIODS), label).marker.color,
            _trace(tensor_stats_figure(stats, "activation", PERIODS), label).line.color,
        }
        assert seen == {level_colour(level)}


EMPTY_SCALARS = pd.DataFrame(columns=["step", "level", "name", "value"])
EMPTY_UPDATES = pd.DataFrame(columns=["step", "level"])
EMPTY_STATS = pd.DataFrame(columns=["step", "level", "kind", "mean", "std", "min", "max", "norm"])


@pytest.mark.parametrize("empty", [None, "frames"])
def test_empty_inputs_say_no_data_yet(empty):
    s, u, t = (None, None, None) if empty is None else (EMPTY_SCALARS, EMPTY_UPDATES, EMPTY_STATS)
    figs = [loss_figure(s, u, PERIODS, cursor=3), surprise_figure(s, u, PERIODS, cursor=3),
            level_clock_figure(u, PERIODS, cursor=3), update_norm_figure(s, PERIODS), objectives_figure(s, 1),
            compare_figure(s, s, "loss"), tensor_stats_figure(t, "surprise"), heatmap_figure(None, "x"),
            heatmap_figure(np.zeros((0, 4), np.float16), "x"), histogram_figure(np.array([], np.int32), 0, 1, "h"),
            eq25_figure(None), hebbian_vs_delta_figure(None, 0.1)]
    for fig in figs:
        assert _no_data(fig), fig.layout.title.text
        fig.to_json()


def test_a_live_run_with_updates_but_no_scalars_yet_draws_the_strip(run):
    updates = run.level_updates()
    fig = surprise_figure(EMPTY_SCALARS, updates[updates.step <= 4], PERIODS)
    assert _marks(fig) == _expected_clock(PERIODS, 4) and not _no_data(fig)


def test_nan_and_null_values_are_drawn_as_gaps():
    steps = np.arange(1, 11)
    values = [0.5, None, 0.4, float("nan"), 0.3, 0.2, None, 0.2, 0.1, float("inf")]
    rows = [(t, 0, "loss", v) for t, v in zip(steps, values)]
    rows += [(t, l, n, v) for l in (1, 2) for n in ("surprise_norm", "update_norm", "dot_objective", "l2_objective")
             for t, v in zip(steps, values)]
    scalars = pd.DataFrame(rows, columns=["step", "level", "name", "value"])
    expected = np.array([np.nan if v is None else v for v in values], dtype=float)
    figs = [loss_figure(scalars, None, (1, 2)), surprise_figure(scalars, None, (1, 2)),
            update_norm_figure(scalars, (1, 2)), objectives_figure(scalars, 2), compare_figure(scalars, scalars, "loss")]
    for fig in figs:
        np.testing.assert_array_equal(fig.data[0].y, expected)  # NaN stays NaN: a gap, never a zero
        assert fig.data[0].connectgaps is False
        fig.to_json()
    all_null = pd.DataFrame([(1, 0, "loss", None), (2, 0, "loss", None)], columns=["step", "level", "name", "value"])
    assert np.isnan(loss_figure(all_null).data[0].y).all()  # an object column of None
    stats = pd.DataFrame([(5, 1, "surprise", None, None, None, None, None), (10, 1, "surprise", 0.1, 0.2, -1.0, 1.0, 3.0)],
                         columns=EMPTY_STATS.columns)
    fig = tensor_stats_figure(stats, "surprise")
    assert np.isnan(_trace(fig, "level 1").y[0]) and _trace(fig, "level 1").y[1] == 0.1
    heat = heatmap_figure(np.array([[np.nan, 1.0], [-2.0, 0.5]], np.float16), "nan")
    assert heat.data[0].zmax == 2.0 and heat.data[0].zmin == -2.0
    assert histogram_figure(np.ones(32, np.int32), None, None, "h").layout.annotations[0].text.startswith("no finite range")
    for fig in (heat, *figs):
        fig.to_json()


def test_a_long_series_is_drawn_with_webgl_and_without_dropping_points():
    n = GL_POINTS + 1
    steps = np.arange(1, n + 1)
    scalars = pd.DataFrame({"step": steps, "level": 0, "name": "loss", "value": np.linspace(2.0, 0.1, n)})
    fig = loss_figure(scalars, None, (1, 64, 4096))
    assert isinstance(fig.data[0], go.Scattergl)
    np.testing.assert_array_equal(fig.data[0].x, steps)
    assert {s.fillcolor for s in _shapes(fig, "chunk")} == {level_colour(3)}  # 2 chunks of C=4096 in view
    short = loss_figure(scalars.iloc[:100])
    assert isinstance(short.data[0], go.Scatter) and not isinstance(short.data[0], go.Scattergl)



# ---------------------------------------------------------------------------- what a learner sees
# Layout is checked on the narrowest chart the dashboard draws each figure in (a 1000 px
# browser: 540 px full width), from the figure's own numbers: domains, margins, fonts. Text
# width is estimated at half an em a character, the average of the sans-serif fonts used.
CHART_PX = 540
EM_PER_CHAR = 0.5


def _plain(text: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", line) for line in (text or "").split("<br>")]


def _plot_px(fig: go.Figure, width: int = CHART_PX) -> tuple[float, float]:
    m = fig.layout.margin
    height = fig.layout.height or 450
    left, right = (80 if m.l is None else m.l), (80 if m.r is None else m.r)
    top, bottom = (100 if m.t is None else m.t), (80 if m.b is None else m.b)
    return width - left - right, height - top - bottom


def _panels(fig: go.Figure) -> dict[str, tuple]:
    """{y axis name: (x domain, y domain, x axis)} of every panel that holds a trace."""
    out = {}
    for t in fig.data:
        xa, ya = t.xaxis or "x", t.yaxis or "y"
        out[ya] = (fig.layout["xaxis" + xa[1:]].domain or (0, 1), fig.layout["yaxis" + ya[1:]].domain or (0, 1),
                   fig.layout["xaxis" + xa[1:]])
    return out


def _check_fits(fig: go.Figure) -> None:
    """No subplot title wider than its panel, no y title running into the panel on its left,
    and between two rows room for the upper row's x axis, its colour bars and the lower row's title."""
    plot_w, plot_h = _plot_px(fig)
    panels = _panels(fig)
    titles = [a for a in fig.layout.annotations if a.xref == "paper" and a.yanchor == "bottom" and a.name is None]
    for a in titles:  # make_subplots' panel titles: centred above their panel
        (xd, yd, _), = [p for p in panels.values() if abs((p[0][0] + p[0][1]) / 2 - a.x) < 1e-9 and abs(p[1][1] - a.y) < 1e-9]
        widest = max(len(line) for line in _plain(a.text)) * EM_PER_CHAR * a.font.size
        assert widest <= (xd[1] - xd[0]) * plot_w, (a.text, widest, (xd[1] - xd[0]) * plot_w)
    for name, (xd, yd, _) in panels.items():
        if fig.layout["yaxis" + name[1:]].title.text:
            lefts = [o[0][1] for o in panels.values() if o[0][1] <= xd[0] and min(o[1][1], yd[1]) > max(o[1][0], yd[0])]
            assert not lefts or (xd[0] - max(lefts)) * plot_w >= 60, f"{name}'s title runs into the panel on its left"
    for upper in panels.values():
        for lower in panels.values():
            if lower[1][1] >= upper[1][0] or min(upper[0][1], lower[0][1]) <= max(upper[0][0], lower[0][0]):
                continue  # not below it
            gap_top = upper[1][0] * plot_h  # px from the plot's bottom to the upper panel's bottom
            axis = upper[2]
            used = 45 if (axis.title.text or axis.showticklabels is not False) and not axis.matches else 0
            bars = [c.colorbar for c in (fig.layout[k] for k in fig.layout if k.startswith("coloraxis"))
                    if c.colorbar.orientation == "h" and c.colorbar.y is not None
                    and upper[1][0] > c.colorbar.y > lower[1][1] and upper[0][0] <= c.colorbar.x <= upper[0][1]]
            for bar in bars:  # under the panel: ticks (10 px) and title (11 px) below a bar
                assert (upper[1][0] - bar.y) * plot_h >= used, "a colour bar sits on the x axis title above it"
            used = max([used] + [(upper[1][0] - bar.y) * plot_h + bar.thickness + 35 for bar in bars])
            title = [a for a in titles if abs(a.y - lower[1][1]) < 1e-9 and lower[0][0] <= a.x <= lower[0][1]]
            need = used + sum(len(_plain(a.text)) * 1.3 * a.font.size for a in title[:1])
            assert gap_top - lower[1][1] * plot_h >= need, (gap_top - lower[1][1] * plot_h, need)


@pytest.mark.parametrize("which", ["eq25", "eq28-29", "eq26-27"])
def test_the_equations_figures_fit_a_narrow_chart(run, which):
    record = run.memory(20, 2)
    fig = {"eq25": lambda: eq25_figure(record), "eq28-29": lambda: hebbian_vs_delta_figure(record, 1.0, row=1),
           "eq26-27": lambda: objectives_figure(run.scalars(), 2)}[which]()
    _check_fits(fig)
    assert fig.layout.height, "a fixed height: the rows are laid out in pixels"
    title = _plain(fig.layout.title.text)[0]
    assert len(title) * EM_PER_CHAR * 17 <= CHART_PX, title


def test_numbers_are_powers_of_ten_never_si_suffixes(run):
    record = run.memory(20, 2)
    scalars, updates = run.scalars(), run.level_updates()
    _, sample = run.tensor(10, 2, "surprise")
    figs = [eq25_figure(record), hebbian_vs_delta_figure(record, 1.0), objectives_figure(scalars, 2),
            heatmap_figure(sample, "u"), loss_figure(scalars, updates, PERIODS), surprise_figure(scalars, updates, PERIODS),
            compare_figure(scalars, scalars, "loss")]
    for fig in figs:
        template = fig.layout.template.layout
        assert template.xaxis.exponentformat == template.yaxis.exponentformat == "power"
        assert template.coloraxis.colorbar.exponentformat == "power"
        assert {h.colorbar.exponentformat for h in fig.layout.template.data.heatmap} == {"power"}
        for name in fig.layout:  # nothing in a figure sets plotly's default back ("B": 5e-10 as "500p")
            if name.startswith(("xaxis", "yaxis")):
                assert fig.layout[name].exponentformat in (None, "power", "none"), name
    eq25 = figs[0]
    for axis in ("coloraxis", "coloraxis2", "coloraxis3", "coloraxis4"):  # its own tick labels, written the same way
        bar = eq25.layout[axis]
        assert list(bar.colorbar.tickvals) == [bar.cmin, 0, bar.cmax] and bar.cmin == -bar.cmax
        assert not any(re.search(r"[0-9][pnumkMG\u00b5]$", t) for t in bar.colorbar.ticktext), bar.colorbar.ticktext
    from nlviz.figures import _power
    assert [_power(v) for v in (-0.0052, 9.3e-10, 1.25e5)] == ["\u22120.0052", "9.3\u00d710<sup>\u221210</sup>",
                                                               "1.2\u00d710<sup>5</sup>"]
    for fig in figs:  # step axes are counts: 20,000 rather than 2x10^4
        if any(fig.layout[n].title.text == "step t" for n in fig.layout if n.startswith("xaxis")):
            assert {fig.layout[n].exponentformat for n in fig.layout if n.startswith("xaxis")} == {"none"}


def test_steady_gives_a_half_width_chart_its_plot(run):
    from nlviz import figures
    from nlviz.figures import steady

    scalars, updates = run.scalars(), run.level_updates()
    fig = steady(surprise_figure(scalars, updates, PERIODS))
    m = fig.layout.margin
    assert m.r <= 40 and m.autoexpand is False  # no 160 px legend column beside a 260 px chart
    legend = fig.layout.legend
    assert (legend.orientation, legend.yref, legend.y, legend.yanchor) == ("h", "container", 0, "bottom")
    assert m.b == 50 + 3 * figures.LEGEND_ROW + figures.LEGEND_PAD  # the x axis, then one row for each of three levels
    assert m.t == 60 + figures.TITLE_LINE * fig.layout.title.text.count("<br>")
    clock = steady(level_clock_figure(updates, PERIODS), left=140)
    assert clock.layout.showlegend is False and clock.layout.margin.b == 50  # its tick labels name the levels
    # plotly keeps the x title above the legend it measures: a 10 px gap between groups would lift it onto the ticks
    assert legend.tracegroupgap == 0
    for narrow in (fig, clock, steady(update_norm_figure(scalars, PERIODS))):  # half-width charts: few step ticks
        assert {narrow.layout[n].nticks for n in narrow.layout if n.startswith("xaxis")} <= {figures.NARROW_TICKS,
                                                                                           figures.NARROW_TICKS - 1}


def test_a_long_heatmap_title_puts_its_step_on_a_second_line():
    long = "level 1: surprise u_l = dL/dy_l, step 2180"
    fig = heatmap_figure(np.ones((2, 3)), long)
    assert fig.layout.title.text == "level 1: surprise u_l = dL/dy_l,<br>step 2180"
    assert fig.layout.title.text.replace("<br>", " ") == long and fig.data[0].name == long
    assert heatmap_figure(None, long).layout.title.text == fig.layout.title.text  # no data yet: the same title
    assert heatmap_figure(np.ones((2, 3)), "y_2 at step 10").layout.title.text == "y_2 at step 10"  # fits: one line


def test_compare_figure_tells_the_two_runs_apart_by_colour_and_dash(run, single):
    from nlviz import figures

    a, b = run.scalars(), single.scalars()
    fig = compare_figure(a, b, "surprise_norm", labels=("CMS", "one level"), level=1, periods=(PERIODS, (1,)))
    first, second = fig.data
    assert first.line.color != second.line.color and fig.layout.legend.orientation == "h"
    assert (first.line.color, first.line.dash) == (figures.RUN_COLOURS[0], "solid")
    assert (second.line.color, second.line.dash) == (figures.RUN_COLOURS[1], "dash")
    assert set(figures.RUN_COLOURS) <= set(figures.CATEGORY_COLOURS)  # the palette of things that are not levels
    assert "of level 1" in fig.layout.title.text and "(solid)" in fig.layout.title.text
    every = compare_figure(a, b, "surprise_norm", periods=(PERIODS, (1,)))
    axes = {t.name: t.yaxis for t in every.data}
    assert axes["A: level 1 (C=1)"] == axes["B: level 1 (C=1)"] != axes["A: level 2 (C=2)"]  # a panel per level
    assert {t.line.color for t in every.data if t.name.startswith("A")} == {figures.RUN_COLOURS[0]}


def _float16(values) -> np.ndarray:
    """A sample as the store returns it: float16, where |value| > 65504 has become inf."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.float16)


def _notes(fig: go.Figure, name: str) -> list[str]:
    return [a.text for a in fig.layout.annotations if a.name == name]


def test_a_heatmap_of_an_overflowed_sample_says_why_it_is_empty():
    blown = _float16(np.full((4, 8), 3e18))  # what a run with learning rate 100 recorded
    fig = heatmap_figure(blown, "level 2: activations y_l, step 100")
    assert not fig.data
    (text,) = _notes(fig, "no-data")
    assert "no finite values" in text and "float16" in text and "65504" in text
    part = _float16([[1.0, -2.0, 7e4], [-1e5, 0.5, 3.0]])
    fig = heatmap_figure(part, "u")
    np.testing.assert_array_equal(np.isfinite(np.asarray(fig.data[0].z, dtype=float)), np.isfinite(part))
    assert fig.data[0].zmax == 3.0  # the scale holds the finite values only
    assert _notes(fig, "not-finite") == ["2 of 6 grey: float16 overflow"] and fig.layout.plot_bgcolor == "#BDBDBD"
    nan = heatmap_figure(np.full((2, 2), np.nan, np.float16), "x")
    assert "NaN" in _notes(nan, "no-data")[0] and "float16" not in _notes(nan, "no-data")[0]
    assert not _notes(heatmap_figure(_float16([[1.0, 2.0]]), "ok"), "not-finite")


def test_a_panel_with_no_finite_value_says_so(run):
    null = pd.DataFrame([(1, 0, "loss", None), (2, 0, "loss", float("nan"))], columns=["step", "level", "name", "value"])
    fig = loss_figure(null, run.level_updates(), PERIODS)
    (text,) = _notes(fig, "not-finite")
    assert "no finite values" in text and "NaN or infinite" in text
    (note,) = [a for a in fig.layout.annotations if a.name == "not-finite"]
    assert fig.layout.yaxis.domain[0] < note.y < fig.layout.yaxis.domain[1]  # on the loss panel, not the update strip
    assert not _notes(loss_figure(run.scalars(), None, PERIODS), "not-finite")
    record = run.memory(20, 2)
    broken = MemoryRecord(**{**record.__dict__, "grad": np.full_like(record.grad, np.inf)})
    fig = eq25_figure(broken)
    axes = {t.name: t.yaxis for t in fig.data}
    notes = [a for a in fig.layout.annotations if a.name == "not-finite"]
    assert len(notes) == 2  # dL/dW and the difference; x, u and the outer sum are drawn
    for a in notes:
        assert any(fig.layout["yaxis" + axes[n][1:]].domain[0] < a.y < fig.layout["yaxis" + axes[n][1:]].domain[1]
                   for n in ("grad", "difference"))


# ---------------------------------------------------------------------------- notebook experiment figures
from nlviz.figures import (CATEGORY_COLOURS, forgetting_curves_figure, image_strip_figure,  # noqa: E402
                           level_drift_figure, seed_curves_figure, seed_summary_figure, surprise_check_figure)

from conftest import reference_step  # noqa: E402


def test_surprise_check_figure_puts_captured_against_autograd_entry_by_entry():
    trainer = Trainer(tiny_config(PERIODS))
    trainer.step()
    _, loss, _, traces = reference_step(trainer)
    reference = torch.autograd.grad(loss, [tr.y for tr in traces])
    captured = trainer.step().surprise
    fig = surprise_check_figure(reference, captured, PERIODS)
    for l in range(len(PERIODS)):
        trace = _trace(fig, f"level {l + 1} (C={PERIODS[l]})")
        np.testing.assert_array_equal(trace.x, reference[l].numpy().ravel())
        np.testing.assert_array_equal(trace.y, captured[l].numpy().ravel())
        assert trace.marker.color == level_colour(l + 1)
    worst = max(float((r - c).abs().max()) for r, c in zip(reference, captured))
    assert fig.layout.title.text.endswith(f"max |difference| = {worst:.1e}") and worst < 1e-6
    shifted = surprise_check_figure([np.zeros(3)], [np.array([0.0, 0.5, 0.0])])
    assert shifted.layout.title.text.endswith("max |difference| = 5.0e-01")
    with pytest.raises(ValueError, match="captured"):
        surprise_check_figure(reference, captured[:2])
    with pytest.raises(ValueError, match="shape"):
        surprise_check_figure([np.zeros(3)], [np.zeros(4)])


def test_seed_curves_figure_draws_the_mean_and_the_range_of_the_trailing_means():
    rng = np.random.default_rng(0)
    curves = {"off": rng.normal(size=(3, 20)), "on": rng.normal(size=(3, 20)) + 5}
    steps = np.arange(10, 210, 10)
    fig = seed_curves_figure(curves, x=steps, window=5, colours={"on": "#009E73"})
    for name, values in curves.items():
        smooth = np.stack([np.convolve(v, np.ones(5) / 5, mode="valid") for v in values])  # (3, 16)
        mean = _trace(fig, f"{name} (3 seeds)")
        np.testing.assert_array_equal(mean.x, steps[4:])
        np.testing.assert_allclose(mean.y, smooth.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_trace(fig, f"{name} highest seed").y, smooth.max(0), atol=1e-12)
        np.testing.assert_allclose(_trace(fig, f"{name} lowest seed").y, smooth.min(0), atol=1e-12)
    assert _trace(fig, "on (3 seeds)").line.color == "#009E73"
    assert _trace(fig, "off (3 seeds)").line.color == CATEGORY_COLOURS[0]
    raw = seed_curves_figure({"off": curves["off"]})
    np.testing.assert_array_equal(_trace(raw, "off (3 seeds)").x, np.arange(1, 21))
    np.testing.assert_array_equal(_trace(raw, "off (3 seeds)").y, curves["off"].mean(0))
    for bad in (dict(window=0), dict(window=21), dict(x=steps[:5])):
        with pytest.raises(ValueError):
            seed_curves_figure(curves, **bad)
    assert _no_data(seed_curves_figure({}))


def test_seed_summary_figure_bars_are_means_error_bars_stds_and_dots_the_runs():
    table = pd.DataFrame(dict(model=["b", "b", "b", "a", "a", "c"], seed=[0, 1, 2, 0, 1, 0],
                              acc=[0.1, 0.2, 0.6, 0.5, 0.7, 0.3], loss=[1.0, 2.0, 3.0, 4.0, 6.0, 5.0]))
    fig = seed_summary_figure(table, by="model", metrics={"acc": "accuracy", "loss": "the loss"}, y_title="value")
    assert [a.text for a in fig.layout.annotations] == ["accuracy", "the loss"]
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert [b.name for b in bars] == ["b", "a", "c", "b", "a", "c"]  # the table's order, per panel
    for bar in bars:
        metric = "acc" if bar.xaxis == "x" else "loss"
        rows = table[table.model == bar.name]
        assert bar.y[0] == pytest.approx(rows[metric].mean())
        assert bar.error_y.array[0] == pytest.approx(rows[metric].std() if len(rows) > 1 else 0.0)  # pandas: n - 1
        dots = [t for t in fig.data if t.name == f"{bar.name} seeds" and t.xaxis == bar.xaxis]
        assert len(dots) == 1
        np.testing.assert_array_equal(dots[0].y, rows[metric].to_numpy())
        np.testing.assert_array_equal(dots[0].customdata, rows.seed.to_numpy())
    assert [b.showlegend for b in bars] == [True] * 3 + [False] * 3
    assert fig.layout.yaxis.title.text == "value"
    logged = seed_summary_figure(table, by="model", metrics=["loss"], log_y=True, colours={"a": "#123456"})
    assert logged.layout.yaxis.type == "log" and _trace(logged, "a seeds").marker.color == "#123456"
    with pytest.raises(ValueError, match="no column 'nope'"):
        seed_summary_figure(table, by="model", metrics=["nope"])


def test_image_strip_figure_draws_each_image_row_zero_on_top():
    images = [np.arange(6.0).reshape(2, 3) * k for k in range(1, 4)]
    fig = image_strip_figure(images, ["one", "two", "three"], title="strip")
    assert [t.name for t in fig.data] == ["one", "two", "three"]
    for trace, img in zip(fig.data, images):
        np.testing.assert_array_equal(trace.z, img)
    assert all(fig.layout[f"yaxis{i if i > 1 else ''}"].autorange == "reversed" for i in (1, 2, 3))
    with pytest.raises(ValueError, match="labels"):
        image_strip_figure(images, ["one"])


def test_forgetting_curves_follow_each_task_from_when_it_was_learned():
    acc = np.array([[1.0, np.nan, np.nan], [0.4, 0.9, np.nan], [0.1, 0.3, 0.8]])
    labels = ["task 1", "task 2", "task 3"]
    fig = forgetting_curves_figure({"one": acc, "two": 1 - np.nan_to_num(acc)}, labels)
    assert len(fig.data) == 6 and [a.text for a in fig.layout.annotations] == ["one", "two"]
    for i, label in enumerate(labels):
        one, two = [t for t in fig.data if t.name == label]
        np.testing.assert_array_equal(one.x, np.arange(i + 1, 4))
        np.testing.assert_array_equal(one.y, acc[i:, i])  # never the undefined entries above the diagonal
        np.testing.assert_array_equal(two.y, 1 - acc[i:, i])
        assert one.line.color == two.line.color == CATEGORY_COLOURS[i] and one.showlegend and not two.showlegend
    with pytest.raises(ValueError, match="acc_by_model"):
        forgetting_curves_figure({"one": acc[:2, :2]}, labels)


def test_level_drift_figure_has_one_bar_per_level_and_task():
    drift = np.array([[2.5, 0.9, 0.3], [4.0, 0.6, 0.1]])
    fig = level_drift_figure(drift, (1, 8, 64))
    assert [t.name for t in fig.data] == ["level 1 (C=1)", "level 2 (C=8)", "level 3 (C=64)"]
    for l, trace in enumerate(fig.data):
        np.testing.assert_array_equal(trace.y, drift[:, l])
        assert list(trace.x) == ["task 1", "task 2"] and trace.marker.color == level_colour(l + 1)
    assert fig.layout.yaxis.type == "log" and fig.layout.barmode == "group"
    assert level_drift_figure(drift, (1, 8, 64), log_y=False).layout.yaxis.type == "linear"
    with pytest.raises(ValueError, match="drift"):
        level_drift_figure(drift, (1, 8))
    with pytest.raises(ValueError, match="task_labels"):
        level_drift_figure(drift, (1, 8, 64), task_labels=["only one"])


def test_multiscale_drift_figure_draws_the_tasks_maps():
    from nlviz import MultiscaleConfig, MultiscaleTask
    from nlviz.figures import multiscale_drift_figure

    task = MultiscaleTask(MultiscaleConfig(dim=4, slow_period=400, fast_period=40))
    fig = multiscale_drift_figure(task, [0, 10, 20, 30], entry=(1, 2))
    slow, fast = fig.data
    assert list(slow.x) == [0, 10, 20, 30] and "period 400" in slow.name and "period 40" in fast.name
    for n, t in enumerate([0, 10, 20, 30]):
        s, f = task.components(t)
        assert slow.y[n] == pytest.approx(float(s[1, 2]), abs=1e-6) and fast.y[n] == pytest.approx(float(f[1, 2]), abs=1e-6)
    assert fast.y[2] == pytest.approx(-fast.y[0], abs=1e-6)  # half a fast cycle later: the sign flips
