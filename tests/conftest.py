"""Shared helpers for the tests: tiny configs and a reference re-computation of one step."""

from __future__ import annotations

import copy

import pytest
import torch

from nlviz import LevelSpec, ModelConfig, MultiscaleConfig, TrainConfig, Trainer


def tiny_config(periods=(1, 2, 3), optimizer="sgd", lr=0.05, **overrides) -> TrainConfig:
    """A small CMS on a small multiscale task, on the CPU."""
    levels = tuple(LevelSpec(period=p, width=8, hidden=16, optimizer=optimizer, lr=lr) for p in periods)
    model_kw = {k: overrides.pop(k) for k in ("variant", "residual", "norm") if k in overrides}
    base = dict(
        task="multiscale",
        task_options=MultiscaleConfig(dim=5, fast_period=7, slow_period=50),
        model=ModelConfig(levels=levels, **model_kw),
        steps=30,
        batch_size=4,
        device="cpu",
        head_optimizer="sgd",
        head_lr=lr,
        linears_every=1,  # the tests read every step's linear-layer records
    )
    base.update(overrides)
    return TrainConfig(**base)


def peek_batch(trainer: Trainer, t: int):
    """The batch the trainer will draw at step t, without advancing its stream."""
    state = trainer.task.gen.get_state()
    batch = trainer.task.batch(t, trainer.config.batch_size)
    trainer.task.gen.set_state(state)
    return batch


def reference_step(trainer: Trainer):
    """Recompute the next step's forward pass on a copy of the model, with plain autograd.

    Returns (model copy, loss, output, traces) with the graph kept, before the trainer moves.
    """
    ref = copy.deepcopy(trainer.model)
    for m in ref.modules():  # drop DGD's accumulation hooks from the copy
        m._forward_pre_hooks.clear()
    t = trainer.clock.t + 1
    x, y = peek_batch(trainer, t)
    out, traces = ref(x, return_internals=True)
    return ref, trainer.task.loss(out, y), out, traces


@pytest.fixture(autouse=True)
def _deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
