"""Surprise capture (Eq 25) and the surprise objective, against plain autograd."""

from __future__ import annotations

import pytest
import torch

from nlviz import SurpriseConfig, Trainer, rules, surprise_target

from conftest import reference_step, tiny_config


@pytest.mark.parametrize("variant,residual,norm", [("sequential", True, True), ("sequential", False, False),
                                                    ("independent", True, True), ("sequential", True, False)])
def test_captured_surprise_equals_autograd_grad_of_loss_wrt_level_output(variant, residual, norm):
    trainer = Trainer(tiny_config((1, 2, 3), variant=variant, residual=residual, norm=norm))
    for _ in range(3):  # a few steps so levels differ from their initial state
        _, loss, _, traces = reference_step(trainer)
        expected = torch.autograd.grad(loss, [tr.y for tr in traces])
        event = trainer.step()
        assert len(event.surprise) == 3
        for l, (u, ref) in enumerate(zip(event.surprise, expected)):
            torch.testing.assert_close(u, ref, rtol=1e-5, atol=1e-7, msg=f"level {l + 1}")


def test_recorded_linear_data_reproduce_the_weight_gradient_eq25():
    """grad_W L == sum_b u_b x_b^T for every linear layer, from what the trainer recorded."""
    trainer = Trainer(tiny_config((1, 1)))
    trainer.step()
    ref, loss, _, _ = reference_step(trainer)
    weights = [lin.weight for level in ref.levels for lin in level.linears]
    expected = torch.autograd.grad(loss, weights)
    event = trainer.step()
    recorded = [
        rules.outer_sum(g, x)
        for tr, grads in zip(event.traces, event.linear_grads)
        for x, g in zip(tr.linear_inputs, grads)
    ]
    assert len(recorded) == len(expected) == 4
    for r, e in zip(recorded, expected):
        torch.testing.assert_close(r, e, rtol=1e-5, atol=1e-7)
    # The output layer's surprise is the level's surprise (the block ends in the residual sum).
    for l, level in enumerate(trainer.model.levels):
        j = level.linears.index(level.output_layer)
        torch.testing.assert_close(event.linear_grads[l][j], event.surprise[l])


def test_no_capture_records_nothing_and_trains_identically():
    a = Trainer(tiny_config(capture=True))
    b = Trainer(tiny_config(capture=False))
    a.run(steps=10)
    b.run(steps=10)
    assert b.step().surprise == []
    a.step()
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_surprise_target_sign_and_clip():
    u = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    assert torch.equal(surprise_target(u), -u)
    assert torch.equal(surprise_target(u, sign="printed"), u)
    clipped = surprise_target(u, clip=1.0)
    torch.testing.assert_close(clipped[0], torch.tensor([-0.6, -0.8]))
    torch.testing.assert_close(clipped[1], -u[1])  # already within the clip


@pytest.mark.parametrize("sign", ["consistent", "printed"])
@pytest.mark.parametrize("clip", [0.0, 0.01])
def test_surprise_objective_gradients_equal_autograd_reference(sign, clip):
    """The objective injected inside the backward pass equals L + sum_l A_l differentiated by
    autograd, with A_l = w_l/2 mean_b ||y_l - v_l||^2 and v_l built from the surprise that
    reaches y_l from everything downstream (computed level by level from the top)."""
    weights = (0.3, 0.0, 0.7)
    surprise = SurpriseConfig(enabled=True, weights=weights, clip=clip, sign=sign)
    trainer = Trainer(tiny_config((100, 100, 100), surprise=surprise))  # levels keep their grads
    ref, loss, _, traces = reference_step(trainer)
    total = loss
    aux_values = [None] * 3
    for l in reversed(range(3)):
        (u,) = torch.autograd.grad(total, [traces[l].y], retain_graph=True)
        y = traces[l].y
        a = 0.5 * weights[l] * (y - surprise_target(u, sign, clip)).pow(2).sum() / y.shape[0]
        aux_values[l] = a.detach()
        total = total + a
    params = [p for level in ref.levels for p in level.parameters()]
    expected = torch.autograd.grad(total, params)
    event = trainer.step()
    got = [p.grad for level in trainer.model.levels for p in level.parameters()]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    assert event.aux_losses[1] is None  # weight 0: nothing added
    torch.testing.assert_close(event.aux_losses[0], aux_values[0])
    torch.testing.assert_close(event.aux_losses[2], aux_values[2])


def test_surprise_objective_every_n_steps():
    """On steps 1 and 2 the run equals one without the objective; step 3 differs."""
    surprise = SurpriseConfig(enabled=True, weights=(0.5,), every=3)
    with_obj = Trainer(tiny_config((100,), surprise=surprise))  # level grads accumulate: compare them
    without = Trainer(tiny_config((100,)))
    active = []
    for t in range(1, 4):
        active.append(with_obj.step().aux_losses[0] is not None)
        without.step()
        g1 = with_obj.model.levels[0].fc1.weight.grad
        g2 = without.model.levels[0].fc1.weight.grad
        assert torch.equal(g1, g2) == (t < 3)
    assert active == [False, False, True]


def test_printed_sign_target_moves_level_output_up_the_loss():
    """A step on the objective alone: the consistent target -u lowers the task loss to first
    order (y moves along -u), the printed +u raises it; checked on a fixed level output."""
    torch.manual_seed(0)
    y = torch.randn(4, 6, requires_grad=True)
    target = torch.randn(4, 6)
    loss = 0.5 * (y - target).pow(2).sum()
    (u,) = torch.autograd.grad(loss, y)
    for sign, direction in (("consistent", -1), ("printed", +1)):
        v = surprise_target(u, sign)
        y_new = y.detach() + 0.1 * v  # a small move toward the target
        new_loss = 0.5 * (y_new - target).pow(2).sum()
        assert (new_loss - loss.detach()).sign().item() == direction


def test_recorded_output_layer_gradient_includes_the_objective_and_rebuilds_grad_w():
    """With the objective on, the output layer's recorded gradient is what autograd used."""
    surprise = SurpriseConfig(enabled=True, weights=(0.5,))
    trainer = Trainer(tiny_config((100,), surprise=surprise))  # the level keeps its gradient
    event = trainer.step()
    level = trainer.model.levels[0]
    j = level.linears.index(level.output_layer)
    rebuilt = rules.outer_sum(event.linear_grads[0][j], event.traces[0].linear_inputs[j])
    torch.testing.assert_close(rebuilt, level.output_layer.weight.grad)
    assert not torch.allclose(event.linear_grads[0][j], event.surprise[0])  # u_l is the incoming part


@pytest.mark.parametrize("enabled", [False, True])
def test_a_finished_step_leaves_nothing_alive(enabled):
    """Neither capture nor the objective's hook may keep a step's tensors alive (no cycles)."""
    import gc
    import weakref

    trainer = Trainer(tiny_config((1, 2), surprise=SurpriseConfig(enabled=enabled)))
    event = trainer.step()
    refs = [weakref.ref(tr.y) for tr in event.traces] + [weakref.ref(u) for u in event.surprise]
    del event
    trainer.step()  # the next step replaces what the capture held
    gc.collect()
    assert all(r() is None for r in refs)


def test_linear_records_follow_their_cadence_and_do_not_change_training():
    a = Trainer(tiny_config((1, 2), linears_every=3))
    b = Trainer(tiny_config((1, 2), linears_every=1))
    recorded = []
    for _ in range(6):
        ea, eb = a.step(), b.step()
        recorded.append(len(ea.traces[0].linear_inputs) > 0)
        torch.testing.assert_close(ea.surprise[1], eb.surprise[1], rtol=0, atol=0)
    assert recorded == [False, False, True, False, False, True]
    assert ea.linear_grads[0] and Trainer(tiny_config(linears_every=0)).step().linear_grads[0] == []
