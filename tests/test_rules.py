"""nlviz.rules (Eq 25-29) against trusted references, at tiny sizes and in float64.

The reference each group of tests uses:
- Eq 25 identity: autograd through a real nn.Linear (with bias) inside a small nonlinear
  network; grad_W L must equal outer_sum(grad_y L, x).
- Objectives: explicit Python loops over batch and entries; a batch is the sum of singles.
- hebbian_step: the closed form W - lr sum_b u_b x_b^T, one torch.optim.SGD step on the
  dot objective, and a zero autograd gradient of the proximal Eq 26 objective.
- delta_step: the Sherman-Morrison closed form; a vec/kron linear solve (single x);
  torch.linalg.solve on (X^T X + I/lr) (batches on both sides of B = d_in); a zero
  autograd gradient of the proximal Eq 27 objective.
- PAPER.md's special cases of Eq 28-29 and the printed-sign demonstration on a task loss.
- Purity (inputs compared with clones), result dtype, shape errors, and delta_solve from
  chunk sums == delta_step on the concatenated batch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nlviz import rules

DT = torch.float64
D_OUT, D_IN = 3, 4
LRS = [1e-2, 0.3, 2.0]
SEEDS = [0, 1]


def _pair(batch=None, seed=0, dtype=DT, d_out=D_OUT, d_in=D_IN):
    """Random W (d_out, d_in), x (d_in,) or (B, d_in), u (d_out,) or (B, d_out)."""
    g = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    W = torch.randn(d_out, d_in, generator=g, dtype=DT)
    x = torch.randn(*lead, d_in, generator=g, dtype=DT)
    u = torch.randn(*lead, d_out, generator=g, dtype=DT)
    return W.to(dtype), x.to(dtype), u.to(dtype)


def _rows(t):
    return t.reshape(-1, t.shape[-1])


def _prox_grad(objective, W_new, W, x, u, lr):
    """Autograd gradient of objective(W) + ||W - W_t||^2 / (2 lr), evaluated at W_new."""
    Wv = W_new.detach().clone().requires_grad_()
    f = objective(Wv, x, u) + (Wv - W).pow(2).sum() / (2 * lr)
    (grad,) = torch.autograd.grad(f, Wv)
    return grad


def _close(a, b, **kw):
    torch.testing.assert_close(a, b, rtol=kw.pop("rtol", 1e-10), atol=kw.pop("atol", 1e-10), **kw)


# Eq 25: backprop on a linear layer is an outer product of surprise and input


@pytest.mark.parametrize("batch", [None, 1, 5])
@pytest.mark.parametrize("seed", SEEDS)
def test_eq25_autograd_grad_of_a_linear_weight_is_outer_sum_of_surprise_and_input(batch, seed):
    torch.manual_seed(seed)
    first, layer, head = nn.Linear(2, D_IN, dtype=DT), nn.Linear(D_IN, D_OUT, dtype=DT), nn.Linear(D_OUT, 2, dtype=DT)
    lead = () if batch is None else (batch,)
    inp, target = torch.randn(*lead, 2, dtype=DT), torch.randn(*lead, 2, dtype=DT)
    x = torch.tanh(first(inp))  # the layer's input
    y = layer(x)  # its output
    loss = (head(torch.sin(y)) - target).pow(2).sum() + torch.logsumexp(y, dim=-1).sum()
    u, grad_W, grad_b = torch.autograd.grad(loss, (y, layer.weight, layer.bias))
    assert grad_W.abs().max() > 1e-3
    _close(rules.outer_sum(u, x.detach()), grad_W)
    _close(_rows(u).sum(0), grad_b)  # the bias sees the surprise itself


# Objectives of Eq 26 and Eq 27 (consistent target v = -u)


def _loop_dot(W, x, u):
    X, U = _rows(x), _rows(u)
    return sum(U[b, i] * W[i, j] * X[b, j] for b in range(len(X)) for i in range(W.shape[0]) for j in range(W.shape[1]))


def _loop_l2(W, x, u):
    X, U = _rows(x), _rows(u)
    total = 0.0
    for b in range(len(X)):
        for i in range(W.shape[0]):
            r = sum(W[i, j] * X[b, j] for j in range(W.shape[1])) + U[b, i]  # (W x - v)_i with v = -u
            total = total + 0.5 * r**2
    return total


@pytest.mark.parametrize("batch", [None, 1, 3, 6])
@pytest.mark.parametrize("seed", SEEDS)
def test_objectives_equal_explicit_loops_and_sum_over_the_batch(batch, seed):
    W, x, u = _pair(batch, seed)
    dot, l2 = rules.dot_objective(W, x, u), rules.l2_objective(W, x, u)
    assert dot.shape == l2.shape == ()
    _close(dot, torch.as_tensor(_loop_dot(W, x, u)))
    _close(l2, torch.as_tensor(_loop_l2(W, x, u)))
    _close(dot, torch.einsum("oi,bi,bo->", W, _rows(x), _rows(u)))
    both = rules.objectives(W, x, u)  # the telemetry's shared-product form
    _close(both[0], torch.as_tensor(_loop_dot(W, x, u)))
    _close(both[1], torch.as_tensor(_loop_l2(W, x, u)))
    if batch is not None:  # a sum, not a mean
        _close(dot, sum(rules.dot_objective(W, xb, ub) for xb, ub in zip(x, u)))
        _close(l2, sum(rules.l2_objective(W, xb, ub) for xb, ub in zip(x, u)))


def test_l2_objective_uses_the_consistent_target_minus_u():
    W, x, _ = _pair(None)
    assert rules.l2_objective(W, x, -(W @ x)).item() == pytest.approx(0.0, abs=1e-12)  # W x = -u: zero loss
    _close(rules.l2_objective(W, x, W @ x), 2.0 * (W @ x).pow(2).sum())  # printed target +u would be zero here


# Eq 25-26: the Hebbian write


@pytest.mark.parametrize("batch", [None, 1, 3, 6])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("lr", LRS)
def test_hebbian_step_is_closed_form_proximal_minimiser_and_sgd_step(batch, seed, lr):
    W, x, u = _pair(batch, seed)
    new = rules.hebbian_step(W, x, u, lr)
    _close(new, W - lr * sum(torch.outer(ub, xb) for ub, xb in zip(_rows(u), _rows(x))))
    _close(_prox_grad(rules.dot_objective, new, W, x, u, lr), torch.zeros_like(W), atol=1e-9)
    param = nn.Parameter(W.clone())
    opt = torch.optim.SGD([param], lr=lr)
    rules.dot_objective(param, x, u).backward()
    opt.step()
    _close(new, param.detach())


# Eq 27-29: the delta rule, one pair


def _kron_minimiser(W, x, u, lr):
    """Minimiser of 1/2 ||W x + u||^2 + ||W - W_t||^2 / (2 lr) as one linear system in row-major vec(W)."""
    d_out, d_in = W.shape
    A = torch.kron(torch.eye(d_out, dtype=DT), torch.outer(x, x)) + torch.eye(d_out * d_in, dtype=DT) / lr
    rhs = W.reshape(-1) / lr - torch.outer(u, x).reshape(-1)
    return torch.linalg.solve(A, rhs).reshape(d_out, d_in)


@pytest.mark.parametrize("shape", [(3, 4), (1, 5), (4, 2)])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("lr", LRS)
def test_delta_step_single_is_sherman_morrison_and_the_proximal_minimiser(shape, seed, lr):
    W, x, u = _pair(None, seed, d_out=shape[0], d_in=shape[1])
    new = rules.delta_step(W, x, u, lr)
    a = lr / (1 + lr * x @ x)
    _close(new, W - a * torch.outer(W @ x + u, x))
    _close(new, _kron_minimiser(W, x, u, lr))
    _close(_prox_grad(rules.l2_objective, new, W, x, u, lr), torch.zeros_like(W), atol=1e-9)


# Eq 27-29: the delta rule, a batch (Woodbury for B < d_in, direct solve for B >= d_in)


def _solve_minimiser(W, X, U, lr):
    """W (X^T X + I/lr) = W_t / lr - U^T X, solved for W^T with torch.linalg.solve."""
    A = X.T @ X + torch.eye(W.shape[1], dtype=DT) / lr  # (d_in, d_in)
    return torch.linalg.solve(A, (W / lr - U.T @ X).T).T


@pytest.mark.parametrize("batch", [1, 2, D_IN, D_IN + 3])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("lr", LRS)
def test_delta_step_batched_is_the_exact_minimiser_of_the_summed_objective(batch, seed, lr):
    W, X, U = _pair(batch, seed)
    new = rules.delta_step(W, X, U, lr)
    _close(new, _solve_minimiser(W, X, U, lr))
    _close(_prox_grad(rules.l2_objective, new, W, X, U, lr), torch.zeros_like(W), atol=1e-9)
    if batch == 1:
        _close(new, rules.delta_step(W, X[0], U[0], lr))
    else:  # the summed minimiser is not a sequence of single-pair steps
        seq = W
        for xb, ub in zip(X, U):
            seq = rules.delta_step(seq, xb, ub, lr)
        assert not torch.allclose(new, seq, atol=1e-6)


# PAPER.md special cases of Eq 28-29


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("lr", LRS)
def test_unit_norm_key_uses_eta_prime(seed, lr):
    W, x, u = _pair(None, seed)
    x = x / x.norm()
    eta = lr / (1 + lr)
    expected = W @ (torch.eye(D_IN, dtype=DT) - eta * torch.outer(x, x)) - eta * torch.outer(u, x)
    _close(rules.delta_step(W, x, u, lr), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_huge_step_writes_w_x_equal_to_minus_u(seed):
    W, x, u = _pair(None, seed)
    new = rules.delta_step(W, x, u, 1e8)
    _close(new @ x, -u, atol=1e-6, rtol=0)
    x = x / x.norm()  # the printed Eq 29 with unit step: W (I - x x^T) - u x^T
    limit = W @ (torch.eye(D_IN, dtype=DT) - torch.outer(x, x)) - torch.outer(u, x)
    _close(rules.delta_step(W, x, u, 1e8), limit, atol=1e-6, rtol=0)
    X, U = _pair(D_IN - 1, seed)[1:]  # a batch of independent keys is stored exactly too
    _close(rules.delta_step(W, X, U, 1e8) @ X.T, -U.T, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("lr", LRS)
def test_dropping_the_erase_term_gives_back_eq25(seed, lr):
    W, x, u = _pair(None, seed)
    a = lr / (1 + lr * x @ x)
    erase = a * W @ torch.outer(x, x)
    _close(rules.delta_step(W, x, u, lr) + erase, rules.hebbian_step(W, x, u, a.item()))


@pytest.mark.parametrize("seed", SEEDS)
def test_small_delta_step_is_sgd_to_first_order_when_there_is_nothing_to_erase(seed):
    W, x, u = _pair(None, seed)
    gaps = []
    for lr in (1e-3, 1e-5, 1e-7):
        # in general (delta - W)/lr -> -(W x + u) x^T: the erase term is first order ...
        _close((rules.delta_step(W, x, u, lr) - W) / lr, -torch.outer(W @ x + u, x), rtol=0, atol=lr * 1e3)
        # ... so Eq 25 is recovered to first order only when W x = 0
        W0 = W - torch.outer(W @ x, x) / (x @ x)
        gaps.append(((rules.delta_step(W0, x, u, lr) - rules.hebbian_step(W0, x, u, lr)) / lr).abs().max().item())
    assert gaps[0] > 10 * gaps[1] > 100 * gaps[2] and gaps[2] < 1e-5


# The printed-sign demonstration: target +u ascends the task loss


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("w_scale", [0.0, 0.1])
@pytest.mark.parametrize("lr", [1e-3, 1e-2])
def test_printed_target_ascends_the_task_loss_and_consistent_target_descends(seed, w_scale, lr):
    g = torch.Generator().manual_seed(seed)
    W = w_scale * torch.randn(D_OUT, D_IN, generator=g, dtype=DT)
    x, y_star = torch.randn(D_IN, generator=g, dtype=DT), torch.randn(D_OUT, generator=g, dtype=DT)

    def task_loss(M):
        return 0.5 * (M @ x - y_star).pow(2).sum()

    y = (W @ x).requires_grad_()
    (u,) = torch.autograd.grad(0.5 * (y - y_star).pow(2).sum(), y)  # u = grad_y L = y - y*
    a = lr / (1 + lr * x @ x)
    printed = W - a * torch.outer(W @ x - u, x)  # regresses W x onto +u
    _close(printed, rules.delta_step(W, x, -u, lr))  # i.e. delta_step fed the wrong sign
    consistent = rules.delta_step(W, x, u, lr)
    assert task_loss(consistent) < task_loss(W) < task_loss(printed)


# Purity, dtype, shape errors


def _xx(x):
    return _rows(x).T @ _rows(x)


CALLS = {
    "outer_sum": lambda W, x, u: (rules.outer_sum, (u, x)),
    "dot_objective": lambda W, x, u: (rules.dot_objective, (W, x, u)),
    "l2_objective": lambda W, x, u: (rules.l2_objective, (W, x, u)),
    "hebbian_step": lambda W, x, u: (rules.hebbian_step, (W, x, u, 0.3)),
    "delta_step": lambda W, x, u: (rules.delta_step, (W, x, u, 0.3)),
    "delta_solve": lambda W, x, u: (rules.delta_solve, (W, _xx(x), rules.outer_sum(u, x), 0.3)),
}
LOW = {torch.float16: 1e-2, torch.bfloat16: 5e-2}  # tolerances against the float64 result
DTYPE_CASES = [(n, dt) for n in CALLS for dt in (torch.float32, torch.float64)] + [
    (n, dt) for n in ("hebbian_step", "delta_step", "delta_solve") for dt in LOW
]


@pytest.mark.parametrize("name,dtype", DTYPE_CASES)
@pytest.mark.parametrize("batch", [None, 2, 6])
def test_inputs_are_unchanged_and_result_has_w_dtype(name, dtype, batch):
    W, x, u = _pair(batch, dtype=dtype)
    fn, args = CALLS[name](W, x, u)
    before = [a.clone() if torch.is_tensor(a) else a for a in args]
    out = fn(*args)
    for a, b in zip(args, before):
        assert not torch.is_tensor(a) or torch.equal(a, b)
    assert out.dtype == dtype
    assert all(not torch.is_tensor(a) or out.data_ptr() != a.data_ptr() for a in args)  # a new tensor
    if dtype in LOW:  # the same numbers as the float64 computation, to the dtype's precision
        ref_fn, ref_args = CALLS[name](W.double(), x.double(), u.double())
        torch.testing.assert_close(out.double(), ref_fn(*ref_args), rtol=LOW[dtype], atol=LOW[dtype] * 10)


CHECKED = [rules.dot_objective, rules.l2_objective, rules.hebbian_step, rules.delta_step]
W_, X_, U_ = _pair(2)
BAD = {
    "W a vector": (W_[0], X_[0], U_[0], r"^W: "),
    "W a 3-tensor": (W_[None], X_[0], U_[0], r"^W: "),
    "x wrong width": (W_, X_[0, :-1], U_[0], r"\bx\b"),
    "grad_y wrong width": (W_, X_[0], U_[0, :-1], r"\bgrad_y\b"),
    "batch sizes differ": (W_, X_, U_[:1], r"\bgrad_y\b"),
    "x batched, grad_y not": (W_, X_, U_[0], r"\bgrad_y\b"),
    "x a 3-tensor": (W_, X_[None], U_[None], r"\bx\b"),
}


@pytest.mark.parametrize("fn", CHECKED, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", BAD)
def test_mismatched_shapes_raise_value_error_naming_the_argument(fn, case):
    W, x, u, pattern = BAD[case]
    args = (W, x, u) if fn in (rules.dot_objective, rules.l2_objective) else (W, x, u, 0.1)
    with pytest.raises(ValueError, match=pattern):
        fn(*args)


# delta_solve: the sums a DGD optimizer accumulates over a chunk (Eq 31)


@pytest.mark.parametrize("chunks", [(1,), (1, 1, 1), (2, 3), (4, 1, 2)])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("lr", LRS)
def test_delta_solve_from_chunk_sums_equals_delta_step_on_the_concatenated_batch(chunks, seed, lr):
    W, X, U = _pair(sum(chunks), seed)
    xx, ux = torch.zeros(D_IN, D_IN, dtype=DT), torch.zeros(D_OUT, D_IN, dtype=DT)
    for Xc, Uc in zip(X.split(list(chunks)), U.split(list(chunks))):
        xx, ux = xx + Xc.T @ Xc, ux + rules.outer_sum(Uc, Xc)
    _close(rules.delta_solve(W, xx, ux, lr), rules.delta_step(W, X, U, lr))
    _close(rules.delta_solve(W, torch.zeros_like(xx), ux, lr), rules.hebbian_step(W, X, U, lr))  # no erase


@pytest.mark.parametrize("batch", [2, 3])
def test_huge_step_on_a_float32_batch_still_writes_w_x_equal_to_minus_u(batch):
    """The batched (Woodbury-side) form stays accurate in the trainer's dtype as lr -> inf."""
    W, X, U = _pair(batch=batch, seed=0, dtype=torch.float32, d_in=6)
    W_new = rules.delta_step(W, X, U, 1e8)
    torch.testing.assert_close(X @ W_new.T, -U, rtol=1e-4, atol=1e-4)


def test_delta_solve_and_outer_sum_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="^xx, ux:"):
        rules.delta_solve(torch.zeros(3, 4), torch.ones(1, 1), torch.ones(4), 0.1)
    with pytest.raises(ValueError, match="^grad_y, x:"):
        rules.outer_sum(torch.randn(2, 3), torch.randn(5, 4))
