"""Training streams shared by the continual, levels and ablation experiments.

- `matched_levels`: level specs whose total size equals a one-level model's, so that
  "more levels" never means "more parameters". Every level has the same width d; a one-level
  model with hidden size H has 129 H + 192 parameters in its level at d = 64 (LayerNorm 2d,
  W1 and its bias d H + H, W2 and its bias H d + d), so k levels get the hidden size h that
  brings k (2d + (2d + 1) h + d) closest to 2d + (2d + 1) H + d.
- `geometric_periods`: k periods from 1 to a lowest frequency 1/P, evenly spaced in log.
- `digits_stream`: a model trained on class-incremental digits one task at a time with
  `nlviz.Trainer`; after each task it records the test accuracy on every task seen
  (acc[k, i]: task i after training task k) and how far each level moved during the task.
- `average_accuracy` and `forgetting` follow Chaudhry et al. (2018): after task k, the mean
  accuracy over tasks 1..k, and for each earlier task its best accuracy before k minus its
  accuracy after k, averaged (undefined after the first task: null).
- `multiscale_tracking`: the multi-timescale regression, evaluated every `eval_every` steps;
  its score is the mean evaluation error over the second half of the run (the model has to
  keep tracking a drifting target, so the last value alone would be noise).

The decision to know: every stream is seeded by its TrainConfig (`Trainer` seeds torch,
numpy and python, and the task draws from its own generator), runs on the CPU with
capture off unless the surprise objective needs it, and is therefore repeatable bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from ..cms import CMS
from ..config import DigitsConfig, LevelSpec, ModelConfig, MultiscaleConfig, SurpriseConfig, TrainConfig
from ..trainer import Subscriber, Trainer
from .common import Progress

__all__ = [
    "level_parameters", "matched_levels", "geometric_periods", "parameter_count", "DigitsRun", "digits_stream",
    "average_accuracy", "forgetting", "multiscale_tracking", "digits_config", "multiscale_config",
]


def level_parameters(width: int, hidden: int, norm: bool = True) -> int:
    """Parameters of one MLP level of width d = width, input width d (LayerNorm, W1, b1, W2, b2)."""
    return (2 * width if norm else 0) + width * hidden + hidden + hidden * width + width


def matched_levels(periods: tuple[int, ...], total_hidden: int, width: int = 64,
                   **spec: object) -> tuple[LevelSpec, ...]:
    """One LevelSpec per period, with the hidden size that matches a one-level model of `total_hidden`."""
    k = len(periods)
    target = level_parameters(width, total_hidden)
    hidden = max(1, round((target / k - level_parameters(width, 0)) / (2 * width + 1)))
    return tuple(LevelSpec(period=p, width=width, hidden=hidden, **spec) for p in periods)


def geometric_periods(k: int, lowest: int) -> tuple[int, ...]:
    """k periods 1, ..., lowest, evenly spaced in log (rounded); (1,) for one level."""
    if k == 1:
        return (1,)
    return tuple(int(round(lowest ** (i / (k - 1)))) for i in range(k))


def parameter_count(model: ModelConfig, d_in: int, d_out: int) -> int:
    return sum(p.numel() for p in CMS(model, d_in, d_out).parameters())


@dataclass
class DigitsRun:
    acc: np.ndarray  # (T, T): acc[k, i] = test accuracy on task i after training task k; NaN for i > k
    drift: np.ndarray  # (T, levels): ||theta_l after task k - theta_l before it||
    trainer: Trainer  # the trained model and its task stream


def _level_vectors(model: torch.nn.Module) -> list[torch.Tensor]:
    return [torch.cat([p.detach().flatten() for p in level.parameters()]) for level in model.levels]


def digits_stream(config: TrainConfig, progress: Progress, subscribers: Iterable[Subscriber] = (),
                  after_task: Callable[[Trainer, int], None] | None = None) -> DigitsRun:
    """Train task by task; `after_task(trainer, k)` runs after task k's steps (EWC's Fisher, for one)."""
    options: DigitsConfig = config.task_options
    trainer = Trainer(config, [progress.subscriber(), *subscribers])
    n_tasks = len(trainer.task.tasks)
    acc = np.full((n_tasks, n_tasks), np.nan)
    drift = np.zeros((n_tasks, trainer.n_levels))
    for k in range(n_tasks):
        before = _level_vectors(trainer.model)
        trainer.run(steps=options.steps_per_task)
        drift[k] = [float((a - b).norm()) for a, b in zip(_level_vectors(trainer.model), before)]
        seen = trainer.task.evaluate(trainer.model, trainer.clock.t)
        acc[k, : k + 1] = [seen[f"acc_task{i + 1}"] for i in range(k + 1)]
        if after_task is not None:
            after_task(trainer, k)
    trainer.close()
    return DigitsRun(acc=acc, drift=drift, trainer=trainer)


def average_accuracy(acc: np.ndarray) -> list[float]:
    """After each task k: mean accuracy over tasks 1..k."""
    return [float(np.mean(acc[k, : k + 1])) for k in range(acc.shape[0])]


def forgetting(acc: np.ndarray) -> list[float | None]:
    """After each task k: mean over earlier tasks i of max_{j<k} acc[j, i] - acc[k, i]; None after task 1."""
    out: list[float | None] = [None]
    for k in range(1, acc.shape[0]):
        out.append(float(np.mean([np.max(acc[i:k, i]) - acc[k, i] for i in range(k)])))
    return out


def multiscale_tracking(config: TrainConfig, progress: Progress, eval_every: int) -> dict[str, float]:
    """Train on the multiscale stream; mean evaluation errors over the second half, and the final loss."""
    trainer = Trainer(config, [progress.subscriber()])
    steps = config.steps
    records = []
    while trainer.clock.t < steps:
        trainer.run(steps=min(eval_every, steps - trainer.clock.t))
        if trainer.clock.t > steps // 2:
            records.append(trainer.task.evaluate(trainer.model, trainer.clock.t))
    trainer.close()
    mean = {key: float(np.mean([r[key] for r in records])) for key in records[0]}
    final = float(trainer.last_loss)
    return {**mean, "final_loss": final if math.isfinite(final) else None}


def digits_config(levels: tuple[LevelSpec, ...], options: DigitsConfig, seed: int, **model: object) -> TrainConfig:
    """The continual-digits run of a model: Adam stem and head, CPU, no capture."""
    n_tasks = math.ceil(10 / options.classes_per_task)
    return TrainConfig(task="digits", task_options=options, model=ModelConfig(levels=levels, **model),
                       steps=n_tasks * options.steps_per_task, seed=seed, device="cpu", capture=False)


def multiscale_config(model: ModelConfig, options: MultiscaleConfig, steps: int, seed: int,
                      surprise: SurpriseConfig | None = None, accumulate: str = "sum") -> TrainConfig:
    """A multiscale run on the CPU; capture is on only when the surprise objective needs u_l."""
    surprise = surprise or SurpriseConfig()
    return TrainConfig(task="multiscale", task_options=options, model=model, steps=steps, seed=seed, device="cpu",
                       surprise=surprise, accumulate=accumulate, capture=surprise.enabled, linears_every=0)
