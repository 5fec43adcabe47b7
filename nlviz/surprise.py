"""Capture of each level's local surprise u_l = dL/dy_l (Eq 25) and the surprise objective.

Capture asks autograd to retain the gradients of the traced tensors of one forward pass
(`retain_grad`, a hook that runs in C++), so u_l comes out of the *same* backward pass
that computes the weight gradients: no second `autograd.grad(..., create_graph=True)`
pass, and no Python call inside the backward pass. For every linear layer of a level it
also keeps the layer's input x and output gradient, so grad_W L = sum_b u_b x_b^T (Eq 25)
can be checked from recorded data.

The surprise auxiliary objective (the prototype's "Tier 2") adds, for level l,
    A_l = w_l / 2 * mean_b ||y_l - v_l||^2,    v_l = -clip(u_l)  (sign-consistent, Eq 27)
                                               v_l = +clip(u_l)  (the printed sign, labelled)
with v_l held constant. The decision to know: its gradient w_l (y_l - v_l) / B is added
inside a hook on y_l, so the objective costs no second backward pass; u_l is then the
gradient of everything downstream of y_l (the task loss and the objectives of later
levels), which is what backprop hands the level anyway. `SurpriseCapture.surprise[l]` is
that incoming u_l, before level l's own objective is added.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cms import LevelTrace
from .config import SurpriseConfig

__all__ = ["SurpriseCapture", "surprise_target"]


def surprise_target(u: Tensor, sign: str = "consistent", clip: float = 0.0) -> Tensor:
    """The regression target v for a level's output: -u (consistent) or +u (printed Eq 27).

    With clip > 0 each row of u is first rescaled to L2 norm at most `clip`.
    """
    if clip > 0:
        norms = u.norm(dim=-1, keepdim=True)  # (B, 1)
        u = u * torch.clamp(clip / (norms + 1e-12), max=1.0)
    return -u if sign == "consistent" else u


class SurpriseCapture:
    """Collects u_l, and each linear layer's output gradient, from one backward pass.

    Call `attach(traces, step)` before `loss.backward()` and `collect(traces)` after it.
    """

    def __init__(self, n_levels: int, objective: SurpriseConfig | None = None):
        self.n_levels = n_levels
        self.objective = objective if objective is not None and objective.enabled else None
        self.surprise: list[Tensor | None] = [None] * n_levels
        self.linear_grads: list[list[Tensor | None]] = [[] for _ in range(n_levels)]
        self.aux_losses: list[Tensor | None] = [None] * n_levels
        self._incoming: list[Tensor | None] = [None] * n_levels

    def objective_due(self, step: int) -> bool:
        return self.objective is not None and step % self.objective.every == 0

    def attach(self, traces: list[LevelTrace], step: int) -> None:
        active = self.objective_due(step)
        self.aux_losses = [None] * self.n_levels
        self._incoming = [None] * self.n_levels
        for l, tr in enumerate(traces):
            tr.y.retain_grad()
            weight = self.objective.weight_for(l, self.n_levels) if active else 0.0
            if weight > 0:
                # The hook gets y detached: a reference to y itself would form a cycle
                # through autograd's graph that Python's collector cannot free.
                tr.y.register_hook(self._objective_hook(l, tr.y.detach(), weight))
            for out in tr.linear_outputs:
                if out is not None:
                    out.retain_grad()

    def collect(self, traces: list[LevelTrace]) -> None:
        """Read the gradients the backward pass left on the traced tensors."""
        self.surprise = [self._incoming[l] if self._incoming[l] is not None else tr.y.grad
                         for l, tr in enumerate(traces)]
        # tr.y.grad is what flowed on into the level (retained gradients are taken after hooks)
        self.linear_grads = [[tr.y.grad if out is None else out.grad for out in tr.linear_outputs] for tr in traces]

    def release(self) -> None:
        """Drop the references to this step's gradients."""
        self.surprise = [None] * self.n_levels
        self.linear_grads = [[] for _ in range(self.n_levels)]
        self._incoming = [None] * self.n_levels

    def _objective_hook(self, l: int, y: Tensor, weight: float):
        def hook(g: Tensor) -> Tensor:
            self._incoming[l] = g
            obj = self.objective
            rows = g.numel() // g.shape[-1]
            diff = y - surprise_target(g, obj.sign, obj.clip)  # (B, d)
            self.aux_losses[l] = 0.5 * weight / rows * diff.pow(2).sum()
            return g + (weight / rows) * diff

        return hook
