"""Per-level optimizers for Eq 31, and the delta-rule optimizer DGD of Eq 28-29.

`build_update_groups` gives every level its own optimizer (sgd, adam or dgd) and its
own learning rate, updated on that level's clock. Levels that share a period and an
optimizer kind share one torch optimizer, and levels that also share a learning rate
share one parameter group in it; this is the same mathematics (these optimizers act per
parameter) and saves Python calls on every step.

DGD, the decision to know: for a linear layer y = W x the exact minimiser of the summed
proximal L2 objective over everything seen since the last update,
    sum_{t in chunk} sum_b 1/2 ||W x + u||^2 + ||W - W_t||^2 / (2 lr)
is (W_t - lr S_ux)(I + lr S_xx)^{-1}, with S_ux = sum u x^T and S_xx = sum x x^T. S_ux
is exactly the accumulated weight gradient (Eq 25), so DGD only adds S_xx, summed by a
forward pre-hook on the layer while gradients are enabled in training mode. At batch 1
and period 1 this is `rules.delta_step`; for a batch it is the exact minimiser of the
summed objective (as `rules.delta_step` on a batch). The erase term grows with the
number of rows seen per update, so DGD wants a smaller lr than SGD at large B or C(l).
Parameters that are not weight matrices of linear layers (biases, LayerNorm, LSTM
gates) take plain SGD steps with the same lr.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import TrainConfig
from .rules import delta_solve

__all__ = ["DGD", "UpdateGroup", "build_update_groups"]


class DGD(torch.optim.Optimizer):
    """Delta-rule gradient descent (Eq 28-29) for tracked linear layers; SGD for the rest."""

    def __init__(self, params, lr: float = 1e-3, linears: tuple[nn.Linear, ...] = ()):
        super().__init__(params, dict(lr=lr))
        self._handles = []
        for linear in linears:
            self.track(linear)

    def track(self, linear: nn.Linear) -> None:
        """Accumulate S_xx = sum x x^T of this layer's inputs until the next step."""
        w = linear.weight
        if not any(w is p for g in self.param_groups for p in g["params"]):
            raise ValueError("linear: its weight is not among this optimizer's parameters")
        d_in = w.shape[1]
        self.state[w]["xx"] = torch.zeros(d_in, d_in, device=w.device, dtype=torch.float32)

        def accumulate(module: nn.Module, args: tuple) -> None:
            # `module is linear`: a deep copy of the model carries this hook along, but its
            # forward passes must not write into this optimizer's sums.
            if module is linear and module.training and torch.is_grad_enabled():
                x = args[0].detach().reshape(-1, d_in).float()  # (rows, d_in)
                self.state[w]["xx"].addmm_(x.transpose(0, 1), x)

        self._handles.append(linear.register_forward_pre_hook(accumulate))

    def close(self) -> None:
        """Remove the forward hooks from the tracked layers."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def scale_(self, factor: float) -> None:
        """Scale what was accumulated (used by the chunk `mean` convention)."""
        for state in self.state.values():
            if "xx" in state:
                state["xx"].mul_(factor)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(p)
                if state is not None and "xx" in state:
                    p.copy_(delta_solve(p, state["xx"], p.grad, lr))
                    state["xx"].zero_()
                else:
                    p.add_(p.grad, alpha=-lr)
        return None


@dataclass
class UpdateGroup:
    """Levels that update together: same period, same optimizer kind."""

    period: int  # C(l) shared by these levels
    kind: str  # sgd | adam | dgd
    levels: tuple[int, ...]  # level indices; -1 stands for the stem/head ("io") parameters
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    level_params: dict[int, list[nn.Parameter]]  # each level's own parameters

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def _make(kind: str, groups: list[dict], linears: tuple[nn.Linear, ...]) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"])
    if kind == "adam":
        return torch.optim.Adam(groups, lr=groups[0]["lr"])
    return DGD(groups, lr=groups[0]["lr"], linears=linears)


def build_update_groups(model: nn.Module, config: TrainConfig) -> list[UpdateGroup]:
    """One UpdateGroup per (period, optimizer kind); one parameter group per learning rate in it.

    The model must expose `levels` (modules with a `linears` tuple) and `io_parameters()`.
    """
    buckets: dict[tuple[int, str], list[tuple[int, list, float, tuple]]] = {}
    for i, (level, spec) in enumerate(zip(model.levels, config.model.levels)):
        entry = (i, list(level.parameters()), spec.lr, tuple(getattr(level, "linears", ())))
        buckets.setdefault((spec.period, spec.optimizer), []).append(entry)
    io = [p for p in model.io_parameters()]
    buckets.setdefault((1, config.head_optimizer), []).append((-1, io, config.head_lr, ()))
    out = []
    for (period, kind), entries in buckets.items():
        by_lr: dict[float, list] = {}
        for _, ps, lr, _ in entries:
            by_lr.setdefault(lr, []).extend(ps)
        groups = [{"params": ps, "lr": lr} for lr, ps in by_lr.items()]
        linears = tuple(lin for *_, lins in entries for lin in lins) if kind == "dgd" else ()
        params = [p for _, ps, _, _ in entries for p in ps]
        level_params = {i: ps for i, ps, _, _ in entries}
        optimizer = _make(kind, groups, linears)
        out.append(UpdateGroup(period, kind, tuple(e[0] for e in entries), optimizer, params, level_params))
    return out
