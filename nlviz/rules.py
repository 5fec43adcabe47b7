"""Learning rules of Equations 25-29 as pure functions.

A linear map y = W x with W of shape (d_out, d_in), task loss L and local surprise
u = grad_y L (the gradient of the loss with respect to the layer's *output*).

- Eq 25/26: one gradient step is W - lr u x^T, the minimiser of the dot-product
  objective <W x, u> + ||W - W_t||^2 / (2 lr): a Hebbian write (`hebbian_step`).
- Eq 27-29: the L2 objective 1/2 ||W x - v||^2 with target v = -u gives the delta rule
  W - a (W x + u) x^T, a = lr / (1 + lr ||x||^2) (`delta_step`).

The one decision to know: the camera-ready paper prints the Eq 27 target as v = +u, a
sign slip (that update ascends the task loss and contradicts Eq 28). Everything here
uses the consistent target v = -u (arXiv Eq 56/113), so `l2_objective` is
1/2 ||W x + u||^2.

Shapes: x is (d_in,) or a batch (B, d_in); grad_y is (d_out,) or (B, d_out). For a
batch the objectives and the Hebbian step sum over the batch, and `delta_step` returns
the exact minimiser of the summed proximal objective. Every function is pure: inputs are
never modified and the result has W's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "dot_objective",
    "l2_objective",
    "objectives",
    "hebbian_step",
    "delta_step",
    "delta_solve",
    "outer_sum",
]


def _batched(W: Tensor, x: Tensor, grad_y: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes and return x as (B, d_in) and grad_y as (B, d_out)."""
    if W.dim() != 2:
        raise ValueError(f"W: expected a matrix (d_out, d_in), got shape {tuple(W.shape)}")
    d_out, d_in = W.shape
    if x.dim() != grad_y.dim() or x.dim() not in (1, 2):
        raise ValueError(
            f"x, grad_y: expected both (d,) or both (B, d), got {tuple(x.shape)} and {tuple(grad_y.shape)}"
        )
    x2 = x.reshape(-1, x.shape[-1])
    u2 = grad_y.reshape(-1, grad_y.shape[-1])
    if x2.shape[1] != d_in or u2.shape[1] != d_out or x2.shape[0] != u2.shape[0]:
        raise ValueError(
            f"x, grad_y: shapes {tuple(x.shape)} and {tuple(grad_y.shape)} do not fit W {tuple(W.shape)}"
        )
    return x2, u2


def outer_sum(grad_y: Tensor, x: Tensor) -> Tensor:
    """Sum over the batch of u (x) x = u x^T, shape (d_out, d_in) (Eq 25: equals grad_W L)."""
    u2 = grad_y.reshape(-1, grad_y.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    if u2.shape[0] != x2.shape[0]:
        raise ValueError(f"grad_y, x: need the same number of rows, got {tuple(grad_y.shape)} and {tuple(x.shape)}")
    return u2.transpose(0, 1) @ x2


def dot_objective(W: Tensor, x: Tensor, grad_y: Tensor) -> Tensor:
    """Eq 26's inner objective <W x, u>, summed over a batch; a scalar tensor."""
    x2, u2 = _batched(W, x, grad_y)
    return ((x2 @ W.transpose(0, 1)) * u2).sum()


def l2_objective(W: Tensor, x: Tensor, grad_y: Tensor) -> Tensor:
    """Eq 27's inner objective 1/2 ||W x - v||^2 with the consistent target v = -u.

    That is 1/2 ||W x + u||^2, summed over a batch. The printed paper has v = +u, a
    sign slip; see the module docstring.
    """
    x2, u2 = _batched(W, x, grad_y)
    return 0.5 * (x2 @ W.transpose(0, 1) + u2).pow(2).sum()


def objectives(W: Tensor, x: Tensor, grad_y: Tensor) -> tuple[Tensor, Tensor]:
    """(dot_objective, l2_objective) of one (W, x, u), sharing the product W x (telemetry)."""
    x2, u2 = _batched(W, x, grad_y)
    wx = x2 @ W.transpose(0, 1)  # (B, d_out)
    return (wx * u2).sum(), 0.5 * (wx + u2).pow(2).sum()


def hebbian_step(W: Tensor, x: Tensor, grad_y: Tensor, lr: float) -> Tensor:
    """Eq 25 = the minimiser of Eq 26: W - lr sum_b u_b x_b^T (a Hebbian write)."""
    _batched(W, x, grad_y)
    return W - lr * outer_sum(grad_y, x).to(W.dtype)


def delta_solve(W: Tensor, xx: Tensor, ux: Tensor, lr: float) -> Tensor:
    """Exact minimiser of sum_b 1/2 ||W x_b + u_b||^2 + ||W - W_t||^2 / (2 lr), from sums.

    xx = sum_b x_b x_b^T (d_in, d_in) and ux = sum_b u_b x_b^T (d_out, d_in). Setting the
    gradient to zero gives W (I + lr xx) = W_t - lr ux, solved here as one symmetric
    positive-definite system (no host synchronisation: `solve_ex` skips error checks).
    This is what a DGD optimizer needs: both sums accumulate over a chunk (Eq 31).
    """
    d_out, d_in = W.shape
    if xx.shape != (d_in, d_in) or ux.shape != (d_out, d_in):
        raise ValueError(
            f"xx, ux: expected ({d_in}, {d_in}) and ({d_out}, {d_in}) for W {tuple(W.shape)}, "
            f"got {tuple(xx.shape)} and {tuple(ux.shape)}"
        )
    work = torch.promote_types(W.dtype, torch.float32)
    A = torch.eye(d_in, dtype=work, device=W.device) + lr * xx.to(work)  # (d_in, d_in)
    rhs = (W.to(work) - lr * ux.to(work)).transpose(0, 1)  # (d_in, d_out)
    sol, _ = torch.linalg.solve_ex(A, rhs)  # A symmetric, so W_new^T = A^{-1} rhs
    return sol.transpose(0, 1).to(W.dtype)


def delta_step(W: Tensor, x: Tensor, grad_y: Tensor, lr: float) -> Tensor:
    """Eq 28-29: the delta rule, exact minimiser of l2_objective + ||W - W_t||^2 / (2 lr).

    For one pair (x of shape (d_in,)): W - a (W x + u) x^T with a = lr / (1 + lr ||x||^2),
    i.e. erase what W predicts along x, then write -u there. With ||x|| = 1 this is
    W (I - a x x^T) - a u x^T, a = lr / (1 + lr); as lr -> inf it writes W x = -u exactly.

    For a batch (B, d_in) the exact minimiser of the summed objective is
    (W - lr U^T X)(I + lr X^T X)^{-1}. When B < d_in it is computed in the equal form
    W - (W X^T + U^T)(I/lr + X X^T)^{-1} X, a B x B solve that stays accurate in float32
    even for a huge lr (the batched form of "erase, then write").
    """
    x2, u2 = _batched(W, x, grad_y)
    work = torch.promote_types(W.dtype, torch.float32)
    if x.dim() == 1:
        a = lr / (1.0 + lr * float(x.double().pow(2).sum()))
        xw, uw = x.to(work), grad_y.to(work)
        return (W.to(work) - a * torch.outer(W.to(work) @ xw + uw, xw)).to(W.dtype)
    B, d_in = x2.shape
    if B >= d_in:
        return delta_solve(W, x2.transpose(0, 1) @ x2, outer_sum(u2, x2), lr)
    Wt, X, U = W.to(work), x2.to(work), u2.to(work)
    E = Wt @ X.transpose(0, 1) + U.transpose(0, 1)  # (d_out, B): prediction error W x + u per row
    K = torch.eye(B, dtype=work, device=W.device) / lr + X @ X.transpose(0, 1)  # (B, B)
    sol, _ = torch.linalg.solve_ex(K, E.transpose(0, 1))  # K symmetric: (B, d_out)
    return (Wt - sol.transpose(0, 1) @ X).to(W.dtype)
