"""Tasks: data streams for training, all generated here or bundled with a pip package.

- `multiscale`: regression y = (A_slow(t) + A_fast(t)) x + noise, where each map rotates
  between two fixed random matrices with its own period, so the target drifts on two
  timescales (what Eq 31's levels of different periods are for).
- `recall`: associative recall of a fixed set of key -> value pairs whose keys share a
  controllable cosine similarity (the Hebbian vs delta contrast of Eq 26-29).
- `digits`: class-incremental classification on scikit-learn's bundled 8x8 digits, tasks
  of a few classes presented one after another (continual learning).

The decision to know: a task is a pure function of (step, its own generator), and the
generator lives on the training device, so batches never cross from host to device and
a checkpoint of the generator state resumes the stream exactly.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DigitsConfig, MultiscaleConfig, RecallConfig

__all__ = ["Task", "MultiscaleTask", "RecallTask", "DigitsTask", "make_task", "make_pairs"]


class Task(Protocol):
    name: str
    input_dim: int
    output_dim: int

    def batch(self, t: int, batch_size: int) -> tuple[Tensor, Tensor]: ...
    def loss(self, pred: Tensor, target: Tensor) -> Tensor: ...
    def evaluate(self, model: nn.Module, t: int) -> dict[str, float]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode without gradients, restoring the model's mode afterwards."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


class _Stream:
    """Shared plumbing: a device generator whose state is the task's whole state."""

    def __init__(self, device: torch.device, seed: int):
        self.device = torch.device(device)
        self.gen = _generator(self.device, seed + 1)

    def state_dict(self) -> dict:
        return {"generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["generator"])


class MultiscaleTask(_Stream):
    name = "multiscale"

    def __init__(self, config: MultiscaleConfig, device: torch.device | str = "cpu", seed: int = 0):
        super().__init__(device, seed)
        self.config = config
        self.input_dim = self.output_dim = d = config.dim
        cpu = _generator(torch.device("cpu"), seed + 2)  # fixed maps, same on every device
        maps = torch.randn(4, d, d, generator=cpu) / math.sqrt(d)  # slow pair, fast pair
        self.maps = maps.to(self.device)

    def components(self, t: int) -> tuple[Tensor, Tensor]:
        """(A_slow(t), A_fast(t)), each (d, d)."""
        c = self.config
        ps, pf = 2 * math.pi * t / c.slow_period, 2 * math.pi * t / c.fast_period
        slow = c.slow_scale * (math.cos(ps) * self.maps[0] + math.sin(ps) * self.maps[1])
        fast = c.fast_scale * (math.cos(pf) * self.maps[2] + math.sin(pf) * self.maps[3])
        return slow, fast

    def batch(self, t: int, batch_size: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(batch_size, self.input_dim, generator=self.gen, device=self.device)  # (B, d)
        slow, fast = self.components(t)
        y = x @ (slow + fast).transpose(0, 1)  # (B, d)
        if self.config.noise > 0:
            y = y + self.config.noise * torch.randn(y.shape, generator=self.gen, device=self.device)
        return x, y

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred, target)

    def evaluate(self, model: nn.Module, t: int) -> dict[str, float]:
        """Loss at time t on a fixed probe batch, against the full, slow-only and fast-only maps."""
        probe = torch.randn(256, self.input_dim, generator=_generator(self.device, 12345), device=self.device)
        with _evaluating(model):
            pred = model(probe)
        slow, fast = self.components(t)
        return {
            "mse": float(F.mse_loss(pred, probe @ (slow + fast).T)),
            "mse_vs_slow_only": float(F.mse_loss(pred, probe @ slow.T)),
            "mse_vs_fast_only": float(F.mse_loss(pred, probe @ fast.T)),
        }


def make_pairs(
    n: int, key_dim: int, value_dim: int, correlation: float = 0.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """n unit keys (n, key_dim) whose pairwise cosine is about `correlation`, values (n, value_dim).

    k_i = normalise(sqrt(c) s + sqrt(1 - c) z_i) with a shared unit direction s and
    independent unit directions z_i; values are standard normal / sqrt(value_dim).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    s = F.normalize(torch.randn(key_dim, generator=generator, device=device), dim=0)
    z = F.normalize(torch.randn(n, key_dim, generator=generator, device=device), dim=1)
    keys = F.normalize(math.sqrt(correlation) * s + math.sqrt(1 - correlation) * z, dim=1)
    values = torch.randn(n, value_dim, generator=generator, device=device) / math.sqrt(value_dim)
    return keys, values


class RecallTask(_Stream):
    name = "recall"

    def __init__(self, config: RecallConfig, device: torch.device | str = "cpu", seed: int = 0):
        super().__init__(device, seed)
        self.config = config
        self.input_dim, self.output_dim = config.key_dim, config.value_dim
        cpu = _generator(torch.device("cpu"), seed + 2)
        keys, values = make_pairs(config.pairs, config.key_dim, config.value_dim, config.correlation, cpu)
        self.keys, self.values = keys.to(self.device), values.to(self.device)

    def batch(self, t: int, batch_size: int) -> tuple[Tensor, Tensor]:
        idx = torch.randint(self.config.pairs, (batch_size,), generator=self.gen, device=self.device)
        return self.keys[idx], self.values[idx]

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred, target)

    def evaluate(self, model: nn.Module, t: int) -> dict[str, float]:
        """Recall error over all stored pairs."""
        with _evaluating(model):
            return {"recall_mse": float(F.mse_loss(model(self.keys), self.values))}


class DigitsTask(_Stream):
    name = "digits"

    def __init__(self, config: DigitsConfig, device: torch.device | str = "cpu", seed: int = 0):
        super().__init__(device, seed)
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        self.config = config
        data = load_digits()
        X = torch.tensor(data.data, dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
        y = torch.tensor(data.target, dtype=torch.long)
        self.input_dim, self.output_dim = X.shape[1], 10
        cpu = _generator(torch.device("cpu"), seed + 2)
        train_idx, test_idx = [], []
        for c in range(10):
            rows = torch.nonzero(y == c).flatten()
            rows = rows[torch.randperm(len(rows), generator=cpu)]
            n_test = max(1, round(config.test_fraction * len(rows)))
            test_idx.append(rows[:n_test])
            train_idx.append(rows[n_test:])
        k = config.classes_per_task
        self.tasks = [tuple(range(i, min(i + k, 10))) for i in range(0, 10, k)]
        self.X, self.y = X.to(self.device), y.to(self.device)
        self.train_rows = [torch.cat([train_idx[c] for c in cl]).to(self.device) for cl in self.tasks]
        self.test_rows = [torch.cat([test_idx[c] for c in cl]).to(self.device) for cl in self.tasks]

    def task_index(self, t: int) -> int:
        """Which task step t (from 1) trains on."""
        return min((t - 1) // self.config.steps_per_task, len(self.tasks) - 1)

    def batch(self, t: int, batch_size: int) -> tuple[Tensor, Tensor]:
        rows = self.train_rows[self.task_index(t)]
        pick = torch.randint(len(rows), (batch_size,), generator=self.gen, device=self.device)
        idx = rows[pick]
        return self.X[idx], self.y[idx]

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(pred, target)

    def evaluate(self, model: nn.Module, t: int) -> dict[str, float]:
        """Test accuracy on each task so far, and their mean (class-incremental: all 10 outputs)."""
        out = {}
        seen = self.task_index(max(t, 1)) + 1
        with _evaluating(model):
            for i in range(seen):
                rows = self.test_rows[i]
                acc = (model(self.X[rows]).argmax(-1) == self.y[rows]).float().mean()
                out[f"acc_task{i + 1}"] = float(acc)
        out["acc_mean_seen"] = sum(out.values()) / seen
        return out


def make_task(name: str, options, device: torch.device | str = "cpu", seed: int = 0) -> Task:
    """Build a task by name from its config dataclass."""
    cls = {"multiscale": MultiscaleTask, "recall": RecallTask, "digits": DigitsTask}[name]
    return cls(options, device=device, seed=seed)
