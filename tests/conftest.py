"""Shared helpers for the tests: tiny configs, a reference re-computation of one step, and
waiting for a condition (never a fixed sleep: the machine may be small and shared)."""

from __future__ import annotations

import copy
import subprocess
import time
from typing import Callable

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


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120.0,
             proc: subprocess.Popen | None = None, detail: Callable[[], str] = lambda: "") -> None:
    """Call condition() every 50 ms until it is true. Fails naming `what` after `timeout`
    seconds, or as soon as `proc` (a process the condition depends on) has exited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first, with exit status {proc.returncode}. {detail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s. {detail()}")
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
