"""Eq 31 and the level clock, checked against plain autograd and a hand-written loop."""

from __future__ import annotations

import pytest
import torch

from nlviz import CMS, LevelClock, seed_everything
from nlviz.tasks import MultiscaleTask

from conftest import peek_batch, reference_step, tiny_config


@pytest.mark.parametrize("periods", [(1,), (2,), (1, 3), (1, 2, 4), (3, 1, 5)])
def test_clock_updates_at_multiples_of_each_period(periods):
    clock = LevelClock(periods)
    seen = []
    for _ in range(24):
        t, due = clock.tick()
        seen.extend((t, level) for level in due)
    expected = sorted((t, l) for l, p in enumerate(periods) for t in range(p, 25, p))
    assert sorted(seen) == expected
    assert clock.updates_between(1, 24) == expected
    assert clock.updates_between(5, 9) == [e for e in expected if 5 <= e[0] <= 9]


def test_clock_chunk_position_and_token_unit():
    clock = LevelClock((4,), unit="token")
    positions = []
    for _ in range(8):
        clock.tick()
        positions.append(clock.chunk_position(0))
    assert positions == [1, 2, 3, 4, 1, 2, 3, 4]
    assert clock.state_dict()["unit"] == "token"


@pytest.mark.parametrize("accumulate", ["sum", "mean"])
@pytest.mark.parametrize("periods", [(1, 2, 3), (2, 5), (4,)])
def test_sgd_levels_move_only_at_their_period_by_the_chunk_sum(periods, accumulate):
    """Eq 31 with SGD: theta changes only at t = C, 2C, ... by -lr * sum of the chunk's gradients
    (each taken by plain autograd at the frozen parameters); `mean` divides by C."""
    from nlviz import Trainer

    lr = 0.05
    trainer = Trainer(tiny_config(periods, lr=lr, steps=12, accumulate=accumulate, capture=False))
    names = [[n for n, _ in level.named_parameters()] for level in trainer.model.levels]
    acc = [{n: 0.0 for n in ns} for ns in names]
    for t in range(1, 13):
        ref, loss, _, _ = reference_step(trainer)
        ref_levels = [dict(level.named_parameters()) for level in ref.levels]
        for l, level in enumerate(ref_levels):
            grads = torch.autograd.grad(loss, list(level.values()), retain_graph=True)
            for n, g in zip(level, grads):
                acc[l][n] = acc[l][n] + g
        before = [{n: p.detach().clone() for n, p in lv.named_parameters()} for lv in trainer.model.levels]
        event = trainer.step()
        for l, (level, period) in enumerate(zip(trainer.model.levels, periods)):
            for n, p in level.named_parameters():
                if t % period == 0:
                    scale = lr / (period if accumulate == "mean" else 1)
                    torch.testing.assert_close(p.detach(), before[l][n] - scale * acc[l][n], rtol=1e-5, atol=1e-6)
                    assert not torch.equal(p.detach(), before[l][n])
                else:
                    assert torch.equal(p.detach(), before[l][n]), f"level {l + 1} moved at t={t}"
            if t % period == 0:
                acc[l] = {n: 0.0 for n in acc[l]}
        assert event.updated == tuple(l for l, period in enumerate(periods) if t % period == 0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("variant", ["sequential", "independent"])
def test_one_level_period_one_equals_a_plain_pytorch_loop(optimizer, variant):
    from nlviz import Trainer

    cfg = tiny_config((1,), optimizer=optimizer, lr=0.01, steps=25, head_optimizer=optimizer,
                      head_lr=0.01, variant=variant)
    trainer = Trainer(cfg)
    trainer.run()

    seed_everything(cfg.seed)
    task = MultiscaleTask(cfg.task_options, "cpu", cfg.seed)
    model = CMS(cfg.model, task.input_dim, task.output_dim)
    opt_cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=0.01)
    for t in range(1, 26):
        x, y = task.batch(t, cfg.batch_size)
        loss = task.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (n, p), (_, q) in zip(trainer.model.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=f"{n} differs")


def test_peek_batch_matches_the_trainers_draw():
    from nlviz import Trainer

    trainer = Trainer(tiny_config())
    x, _ = peek_batch(trainer, 1)
    with torch.no_grad():
        stem_out = trainer.model.stem(x)
    event = trainer.step()
    assert torch.equal(event.traces[0].x.detach(), stem_out)
    x2, _ = peek_batch(trainer, 2)
    assert not torch.equal(x, x2)
