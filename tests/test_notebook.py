"""nlviz.notebook.LiveCMS: the live figure of notebook 03, its numbers and its widget callbacks
(nbval runs the notebook but never clicks, so every callback is called here)."""

import math

import numpy as np
import pytest
import torch

import nlviz
from nlviz import ConfigError, LevelSpec, ModelConfig, MultiscaleConfig, TrainConfig
from nlviz.notebook import LiveCMS, level_contributions, trace_data, tracking_coefficients


def config(variant="independent", residual=False, optimizer="adam", lrs=(1e-2, 1e-2), periods=(1, 8), **kw):
    levels = tuple(LevelSpec(period=p, width=16, hidden=32, optimizer=optimizer, lr=lr) for p, lr in zip(periods, lrs))
    return TrainConfig(task="multiscale", task_options=MultiscaleConfig(dim=8, fast_period=300),
                       model=ModelConfig(levels=levels, variant=variant, residual=residual), seed=3, device="cpu", **kw)


def test_level_contributions_add_up_to_the_prediction():
    model = nlviz.CMS(config().model, 8, 8)
    x = torch.randn(64, 8)
    parts = level_contributions(model, x)
    assert len(parts) == 2
    torch.testing.assert_close(sum(parts) + model.head.bias, model(x))


def test_level_contributions_refuse_models_that_do_not_split():
    with pytest.raises(ConfigError, match="^model: .*independent"):
        level_contributions(nlviz.CMS(config(variant="sequential", residual=True).model, 8, 8), torch.randn(4, 8))


def test_tracking_coefficient_is_the_least_squares_slope():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(200, 8, generator=g)
    other = torch.randn(200, 8, generator=g)
    other = other - (other * target).sum() / (target * target).sum() * target  # orthogonal to target
    assert tracking_coefficients(0.7 * target + other, target) == pytest.approx(0.7, abs=1e-5)
    assert tracking_coefficients(other, target) == pytest.approx(0.0, abs=1e-5)


def test_recorded_loss_and_surprise_match_plain_autograd():
    cfg = config()
    live = LiveCMS(cfg, probe_every=5)
    live.advance(1)
    nlviz.seed_everything(cfg.seed)  # what the Trainer does before building task and model
    task = nlviz.make_task(cfg.task, cfg.task_options, "cpu", cfg.seed)
    model = nlviz.CMS(cfg.model, task.input_dim, task.output_dim)
    x, y = task.batch(1, cfg.batch_size)
    out, traces = model(x, return_internals=True)
    loss = task.loss(out, y)
    grads = torch.autograd.grad(loss, [tr.y for tr in traces])
    assert live.history.steps == [1]
    assert live.history.loss[0] == pytest.approx(loss.item(), rel=1e-6)
    for l, g in enumerate(grads):
        assert live.history.surprise[l][0] == pytest.approx(float(g.norm()), rel=1e-5)


def test_probes_follow_the_cadence_and_the_figure_follows_the_history():
    live = LiveCMS(config(), probe_every=10, max_points=40)
    live.advance(95)
    h = live.history
    assert h.steps == list(range(1, 96))
    assert h.probe_steps == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert len(h.slow) == len(h.fast) == 2 and all(len(s) == 10 for s in h.slow + h.fast)
    data = trace_data(h, max_points=40)
    assert len(data) == 1 + 2 + 2 * 2
    x, y = data[0]
    assert list(x) == list(range(1, 96, 3)) and np.allclose(y, h.loss[::3])  # every 3rd step past 40 points
    fig = live.figure
    assert len(fig.data) == len(data)
    assert list(fig.data[1].x) == list(range(1, 96, 3)) and np.allclose(fig.data[1].y, h.surprise[0][::3], atol=1e-6)
    assert np.allclose(fig.data[3].y, h.slow[0], atol=1e-6) and np.allclose(fig.data[4].y, h.fast[0], atol=1e-6)
    assert "step 95" in fig.layout.title.text
    snap = live.snapshot()
    assert [t.name for t in snap.data] == [t.name for t in fig.data] and np.allclose(snap.data[0].y, fig.data[0].y, atol=1e-6)


def test_whole_model_coefficients_when_levels_do_not_split():
    live = LiveCMS(config(variant="sequential", residual=True), probe_every=10)
    live.advance(20)
    assert not live.by_level and len(live.history.slow) == 1
    assert [t.name for t in live.figure.data][-2:] == ["whole model: slow", "whole model: fast"]


def test_step_and_play_train_the_number_of_steps_in_the_box():
    live = LiveCMS(config(), probe_every=10)
    c = live.controls
    c["steps"].value = 7
    c["step"].click()
    assert live.step == 7
    c["play"].value += 1  # one tick of the Play widget
    assert live.step == 14
    assert "step <b>14</b>" in c["status"].value


def test_learning_rate_change_moves_only_that_level():
    live = LiveCMS(config(lrs=(1e-3, 1e-2)))  # level 1 shares an Adam group with the head at lr 1e-3
    live.advance(8)
    state_before = {id(p) for g in live.trainer.groups for p in g.optimizer.state}
    live.controls["lrs"][0].value = 0.05
    lrs = {}
    for g in live.trainer.groups:
        for pg in g.optimizer.param_groups:
            for p in pg["params"]:
                lrs[id(p)] = pg["lr"]
    model = live.trainer.model
    assert all(lrs[id(p)] == 0.05 for p in model.levels[0].parameters())
    assert all(lrs[id(p)] == 1e-3 for p in model.io_parameters())  # the head keeps its rate
    assert all(lrs[id(p)] == 1e-2 for p in model.levels[1].parameters())
    assert state_before <= {id(p) for g in live.trainer.groups for p in g.optimizer.state}  # Adam state kept
    assert live.config.model.levels[0].lr == 0.05
    w = model.levels[0].fc2.weight.detach().clone()
    live.advance(1)
    assert not torch.equal(w, model.levels[0].fc2.weight)  # and training goes on


def test_period_change_restarts_with_the_new_clock():
    live = LiveCMS(config())
    live.figure  # noqa: B018 - build the widget so the rename is exercised
    live.advance(16)
    live.controls["periods"][1].value = 4
    assert live.step == 0 and live.periods == (1, 4)
    assert live.trainer.clock.periods == (1, 4)
    assert live.figure.data[2].name == "level 2 (C=4)"
    live.advance(8)
    assert live.history.steps == list(range(1, 9))


def test_reset_starts_the_same_run_again():
    live = LiveCMS(config(), probe_every=5)
    live.advance(10)
    first = list(live.history.loss)
    live.controls["reset"].click()
    assert live.step == 0 and live.history.loss == []
    live.advance(10)
    assert live.history.loss == first  # same seed, same run


def test_divergence_is_reported_and_stops_play():
    live = LiveCMS(config(optimizer="sgd", lrs=(1e4, 1e4)), probe_every=5)
    c = live.controls
    c["play"].playing = True
    c["steps"].value = 50
    c["play"].value += 1
    assert live.diverged is not None
    assert c["play"].playing is False
    assert "diverged" in live.message and "Reset" in live.message and "diverged" in c["status"].value
    reached = live.step
    assert live.diverged.step == reached and not math.isfinite(live.history.loss[-1])
    c["step"].click()
    assert live.step == reached and len(live.history.steps) == reached  # nothing trains past a divergence


@pytest.mark.parametrize("kwargs, match", [
    (dict(config=TrainConfig(task="digits")), "^task: "),
    (dict(config=config(capture=False)), "^capture: "),
    (dict(config=config(), probe_every=0), "^probe_every: "),
    (dict(config=config(), max_points=1.5), "^max_points: "),
])
def test_bad_input_names_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LiveCMS(**kwargs)


def test_bad_level_or_rate_names_the_field():
    live = LiveCMS(config())
    with pytest.raises(ConfigError, match="^level: must be between 1 and 2"):
        live.set_lr(3, 0.1)
    with pytest.raises(ConfigError, match="^lr: must be a positive number"):
        live.set_lr(1, -1.0)
    with pytest.raises(ConfigError, match="^periods: need 2 values"):
        live.restart((1, 2, 3))
