"""Elastic weight consolidation (Kirkpatrick et al., PNAS 2017), the continual-learning baseline.

After task k the parameters theta*_k and the diagonal of the Fisher information F_k at
them are stored. Training on later tasks adds, for every stored task,

    penalty = strength / 2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2

to the loss (one quadratic per task, as in the paper, not the "online" running average).
The Fisher is the true one, an expectation over the model's own predictive distribution,
computed exactly over the 10 classes rather than sampled:

    F_i = mean_x sum_c p(c | x) (d log p(c | x) / d theta_i)^2,

on the task's training images, with per-example gradients from `torch.func` (vmap of grad).

The decision to know: `EWC` is a `Trainer` subscriber. `on_step` runs after the backward
pass and before any parameter moves, so it adds the penalty's gradient
strength * sum_k F_k (theta - theta*_k) straight into `.grad`; the optimizer then steps on
loss + penalty exactly as if the penalty had been part of the loss (for a level with
period C(l) the chunk's sum then holds C(l) penalty gradients at the frozen parameters,
as Eq 31 sums every other per-step loss).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..trainer import StepEvent, Subscriber, Trainer

__all__ = ["fisher_diagonal", "EWC"]


def fisher_diagonal(model: nn.Module, inputs: Tensor, chunk: int = 128) -> dict[str, Tensor]:
    """Diagonal of the true Fisher of a classifier over `inputs` (N, d_in), per parameter name."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}

    def log_prob(ps: dict[str, Tensor], x: Tensor, c: Tensor) -> Tensor:
        logits = functional_call(model, ps, (x.unsqueeze(0),))  # (1, classes)
        return torch.log_softmax(logits, dim=-1)[0, c]

    per_example = vmap(grad(log_prob), in_dims=(None, 0, None))
    was = model.training
    model.eval()
    try:
        for start in range(0, inputs.shape[0], chunk):
            x = inputs[start : start + chunk]  # (b, d_in)
            with torch.no_grad():
                probs = torch.softmax(model(x), dim=-1)  # (b, classes)
            for c in range(probs.shape[1]):
                grads = per_example(params, x, torch.tensor(c))  # name -> (b, *shape)
                for n, g in grads.items():
                    weight = probs[:, c].reshape(-1, *([1] * (g.dim() - 1)))  # (b, 1, ...)
                    fisher[n] += (weight * g.pow(2)).sum(0)
    finally:
        model.train(was)
    return {n: f / inputs.shape[0] for n, f in fisher.items()}


class EWC(Subscriber):
    """Adds the EWC penalty's gradient to every step after the first `consolidate`."""

    def __init__(self, strength: float):
        self.strength = float(strength)  # lambda: how strongly old tasks pull
        self.anchors: list[dict[str, Tensor]] = []  # theta*_k per consolidated task
        self.fishers: list[dict[str, Tensor]] = []  # F_k per consolidated task
        self.params: dict[str, nn.Parameter] = {}

    def on_start(self, trainer: Trainer) -> None:
        self.params = dict(trainer.model.named_parameters())

    def consolidate(self, model: nn.Module, inputs: Tensor) -> None:
        """Store theta* and F for the task just trained (inputs: its training examples)."""
        self.params = dict(model.named_parameters())
        self.anchors.append({n: p.detach().clone() for n, p in self.params.items()})
        self.fishers.append(fisher_diagonal(model, inputs))

    def penalty(self) -> Tensor:
        """strength / 2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2, differentiable in theta."""
        total = torch.zeros(())
        for anchor, fisher in zip(self.anchors, self.fishers):
            for n, p in self.params.items():
                total = total + (fisher[n] * (p - anchor[n]).pow(2)).sum()
        return 0.5 * self.strength * total

    @torch.no_grad()
    def penalty_grad(self) -> dict[str, Tensor]:
        """strength * sum_k F_k (theta - theta*_k), per parameter name."""
        return {n: self.strength * sum(f[n] * (p - a[n]) for a, f in zip(self.anchors, self.fishers))
                for n, p in self.params.items()}

    @torch.no_grad()
    def on_step(self, event: StepEvent) -> None:
        if not self.anchors:
            return
        for n, g in self.penalty_grad().items():
            p = self.params[n]
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.add_(g)
