"""The DGD optimizer (Eq 28-29 as a per-level optimizer) against nlviz.rules."""

from __future__ import annotations

import pytest
import torch

from nlviz import DGD, Trainer, rules

from conftest import tiny_config


def _snapshot(level):
    return {n: p.detach().clone() for n, p in level.named_parameters()}


def test_dgd_at_batch_one_period_one_equals_delta_step():
    lr = 0.1
    trainer = Trainer(tiny_config((1,), optimizer="dgd", lr=lr, batch_size=1))
    level = trainer.model.levels[0]
    for _ in range(3):
        before = _snapshot(level)
        event = trainer.step()
        tr, grads = event.traces[0], event.linear_grads[0]
        for j, name in enumerate(["fc1", "fc2"]):
            x, u = tr.linear_inputs[j].detach()[0], grads[j][0]  # (d_in,), (d_out,)
            expected = rules.delta_step(before[f"{name}.weight"], x, u, lr)
            torch.testing.assert_close(getattr(level, name).weight.detach(), expected, rtol=1e-5, atol=1e-6)
            # biases are not weight matrices: plain SGD on the recorded output gradient
            torch.testing.assert_close(getattr(level, name).bias.detach(), before[f"{name}.bias"] - lr * u,
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("accumulate", ["sum", "mean"])
@pytest.mark.parametrize("period,batch", [(3, 4), (2, 16)])
def test_dgd_over_a_chunk_is_the_exact_minimiser_of_the_summed_objective(period, batch, accumulate):
    lr = 0.01
    trainer = Trainer(tiny_config((period,), optimizer="dgd", lr=lr, batch_size=batch, accumulate=accumulate))
    fc2 = trainer.model.levels[0].fc2
    W0 = fc2.weight.detach().clone()
    xx, ux = 0.0, 0.0
    for t in range(1, period + 1):
        event = trainer.step()
        x, u = event.traces[0].linear_inputs[1].detach(), event.linear_grads[0][1]
        xx = xx + x.T @ x
        ux = ux + rules.outer_sum(u, x)
        if t < period:
            assert torch.equal(fc2.weight.detach(), W0)
    scale = 1.0 / period if accumulate == "mean" else 1.0
    expected = rules.delta_solve(W0, scale * xx, scale * ux, lr)
    torch.testing.assert_close(fc2.weight.detach(), expected, rtol=1e-5, atol=1e-6)
    # and it differs from the Hebbian (plain SGD) step on the same sums: the erase term acts
    assert not torch.allclose(fc2.weight.detach(), W0 - lr * scale * ux, atol=1e-6)


def test_dgd_ignores_forward_passes_without_gradients_or_in_eval_mode():
    lin = torch.nn.Linear(3, 2)
    opt = DGD(lin.parameters(), lr=0.1, linears=(lin,))
    x = torch.randn(5, 3)
    with torch.no_grad():
        lin(x)
    lin.eval()
    lin(x)
    lin.train()
    assert torch.count_nonzero(opt.state[lin.weight]["xx"]) == 0
    lin(x).sum().backward()
    torch.testing.assert_close(opt.state[lin.weight]["xx"], x.T @ x)
    W = lin.weight.detach().clone()
    opt.step()
    torch.testing.assert_close(lin.weight.detach(), rules.delta_solve(W, x.T @ x, lin.weight.grad, 0.1))
    assert torch.count_nonzero(opt.state[lin.weight]["xx"]) == 0  # cleared for the next chunk


def test_dgd_rejects_a_layer_it_does_not_own():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="linear"):
        DGD(a.parameters(), lr=0.1, linears=(b,))


def test_a_copy_of_the_model_does_not_write_into_the_trainers_sums_and_close_detaches():
    import copy

    trainer = Trainer(tiny_config((4,), optimizer="dgd", lr=0.01))
    fc1 = trainer.model.levels[0].fc1
    opt = trainer.groups[0].optimizer if isinstance(trainer.groups[0].optimizer, DGD) else trainer.groups[1].optimizer
    before = opt.state[fc1.weight]["xx"].clone()
    clone = copy.deepcopy(trainer.model)
    clone(torch.randn(3, 5)).sum().backward()
    assert torch.equal(opt.state[fc1.weight]["xx"], before)
    trainer.close()
    assert len(fc1._forward_pre_hooks) == 0


def test_dgd_chunk_update_of_the_first_layer_uses_its_normalised_input():
    lr, period = 0.01, 3
    trainer = Trainer(tiny_config((period,), optimizer="dgd", lr=lr, batch_size=4))
    fc1 = trainer.model.levels[0].fc1
    W0 = fc1.weight.detach().clone()
    xx, ux = 0.0, 0.0
    for _ in range(period):
        event = trainer.step()
        x, u = event.traces[0].linear_inputs[0].detach(), event.linear_grads[0][0]  # LN output, fc1 grad
        xx, ux = xx + x.T @ x, ux + rules.outer_sum(u, x)
    torch.testing.assert_close(fc1.weight.detach(), rules.delta_solve(W0, xx, ux, lr), rtol=1e-5, atol=1e-6)
