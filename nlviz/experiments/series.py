"""A univariate time series as an nlviz task: windows of the past predict a value ahead.

`WindowTask` follows the `nlviz.tasks.Task` protocol, so `nlviz.Trainer(config, task=...)`
trains on it. Step t (from 1) is week t of the series: its batch is the `batch_size` most
recent windows ending at that week (each window: `window` values; target: the value
`horizon` steps after the window's end), so the optimizer's clock *is* the series' clock
and a level with period C(l) = 52 updates once a year of data (Eq 31). After the last
window the stream starts again from the first (another pass).

The decision to know: the task holds no random state (the stream is the series, in order),
so its state_dict is empty and a run is repeatable from the model's seed alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["WindowTask"]


class WindowTask:
    name = "series"

    def __init__(self, values: Tensor, window: int, horizon: int = 1):
        if values.dim() != 1 or values.numel() < window + horizon + 1:
            raise ValueError(f"values: need a 1-d series longer than window + horizon, got shape {tuple(values.shape)}")
        self.values = values.float()  # (T,)
        self.window, self.horizon = window, horizon
        self.input_dim, self.output_dim = window, 1
        self.n_windows = values.numel() - window - horizon + 1
        starts = torch.arange(self.n_windows)
        self.X = self.values[starts[:, None] + torch.arange(window)]  # (n, window)
        self.y = self.values[starts + window + horizon - 1][:, None]  # (n, 1)

    def position(self, t: int) -> int:
        """Index of the newest window at step t (t from 1), wrapping after the last."""
        return (t - 1) % self.n_windows

    def target_index(self, position: int) -> int:
        """Index in the series of the value that window `position` predicts."""
        return position + self.window + self.horizon - 1

    def batch(self, t: int, batch_size: int) -> tuple[Tensor, Tensor]:
        newest = self.position(t)
        rows = torch.arange(newest - batch_size + 1, newest + 1).clamp(min=0)  # (B,) the most recent windows
        return self.X[rows], self.y[rows]

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred, target)

    def evaluate(self, model: nn.Module, t: int) -> dict[str, float]:
        """MSE of the current model over every window of the series."""
        was = model.training
        model.eval()
        with torch.no_grad():
            mse = float(F.mse_loss(model(self.X), self.y))
        model.train(was)
        return {"mse_all_windows": mse}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
