"""capacity: Hebbian (Eq 26) against delta-rule (Eq 27-29) associative memories.

A memory W (value_dim x d) should return v_i at key k_i for n pairs from `nlviz.make_pairs`
(unit keys whose pairwise cosine is about `correlation`). Both rules write one pair at a
time, in order, for `sweeps` passes, starting from W = 0, with the surprise of an empty
memory u = -v (as in notebook 02): the Hebbian write W + lr v k^T (`rules.hebbian_step`,
lr = 1/sweeps, so W = sum_i v_i k_i^T) and the delta write W - a (W k - v) k^T
(`rules.delta_step`, a = eta / (1 + eta), eta = 10). The least-squares W
(`torch.linalg.lstsq`) is the floor no linear memory can beat.

Three sweeps, each over seeds: (a) the number of pairs n up to twice the width d, keys
uncorrelated; (b) the key correlation from 0 to 0.9 at n = d/2; (c) the delta rule at n = d
read after more and more passes (with d random keys the system is solvable but badly
conditioned, and the delta rule, which is Kaczmarz's method here, converges slowly). The recall error is
mean_i ||W k_i - v_i||^2 / mean_i ||v_i||^2 (1 = as bad as an empty memory).

The decision to know: every (seed, n, correlation) point draws its pairs from a fresh
`torch.Generator().manual_seed(seed)`, so any one point can be recomputed alone, and the
pairs at n are the first n rows of a larger draw only by accident of the generator (they
are not nested on purpose).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .. import rules
from ..config import ConfigError
from ..tasks import make_pairs
from .common import Experiment, Outcome, Progress, check_settings, curve, spread

__all__ = ["CapacitySettings", "EXPERIMENT", "store", "recall_error", "measure", "delta_by_sweeps"]

RULES = ("hebbian", "delta", "least_squares")


@dataclass(frozen=True)
class CapacitySettings:
    width: int = 32  # d: key width, the memory's input size
    value_dim: int = 16  # the memory's output size
    pair_step: int = 4  # n runs over pair_step, 2 pair_step, ..., 2 d
    correlations: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))  # sweep (b), at n = d/2
    sweeps: int = 20  # passes over the pairs, each writing every pair once, in order
    delta_lr: float = 10.0  # eta of the delta rule: a = eta / (1 + eta) for unit keys
    long_sweeps: tuple[int, ...] = (5, 20, 100, 500, 2000)  # sweep (c): delta rule at n = d, read after these passes

    def __post_init__(self) -> None:
        check_settings(self, fractions=frozenset({"correlations"}))
        if self.width % self.pair_step:
            raise ConfigError(f"CapacitySettings.pair_step: must divide width ({self.width}), got {self.pair_step}")
        if list(self.long_sweeps) != sorted(set(self.long_sweeps)):
            raise ConfigError(f"CapacitySettings.long_sweeps: must increase, got {self.long_sweeps!r}")

    @property
    def pairs(self) -> list[int]:
        return list(range(self.pair_step, 2 * self.width + 1, self.pair_step))

    @property
    def pairs_for_correlation(self) -> int:
        return self.width // 2


def store(keys: Tensor, values: Tensor, rule: str, sweeps: int, delta_lr: float) -> Tensor:
    """The memory W after `sweeps` in-order passes of `rule` over the pairs (from W = 0)."""
    if rule == "least_squares":
        return torch.linalg.lstsq(keys.double(), values.double()).solution.T.float()
    W = torch.zeros(values.shape[1], keys.shape[1])  # (value_dim, d)
    if rule == "delta":
        return _continue(W, keys, values, sweeps, delta_lr)
    for _ in range(sweeps):
        for k, v in zip(keys, values):
            W = rules.hebbian_step(W, k, -v, 1.0 / sweeps)  # u = -v: the surprise of an empty memory
    return W


def recall_error(W: Tensor, keys: Tensor, values: Tensor) -> float:
    """mean_i ||W k_i - v_i||^2 / mean_i ||v_i||^2."""
    return float((keys @ W.T - values).pow(2).sum(1).mean() / values.pow(2).sum(1).mean())


def measure(s: CapacitySettings, seed: int, n: int, correlation: float) -> dict[str, float]:
    """Recall error of each rule at one point."""
    keys, values = make_pairs(n, s.width, s.value_dim, correlation, torch.Generator().manual_seed(seed))
    return {rule: recall_error(store(keys, values, rule, s.sweeps, s.delta_lr), keys, values) for rule in RULES}


def delta_by_sweeps(s: CapacitySettings, seed: int) -> list[float]:
    """Sweep (c): the delta memory's recall error at n = d after each of `long_sweeps` passes."""
    keys, values = make_pairs(s.width, s.width, s.value_dim, 0.0, torch.Generator().manual_seed(seed))
    W, done, errors = torch.zeros(s.value_dim, s.width), 0, []
    for target in s.long_sweeps:
        W = _continue(W, keys, values, target - done, s.delta_lr)
        done = target
        errors.append(recall_error(W, keys, values))
    return errors


def _continue(W: Tensor, keys: Tensor, values: Tensor, sweeps: int, lr: float) -> Tensor:
    """`sweeps` more in-order delta-rule passes over the pairs, from W."""
    for _ in range(sweeps):
        for k, v in zip(keys, values):
            W = rules.delta_step(W, k, -v, lr)  # u = -v: the surprise of an empty memory
    return W


def _units(s: CapacitySettings, seeds: Sequence[int]) -> int:
    return len(seeds) * (len(s.pairs) + len(s.correlations) + 1)


def _curves(per_seed: list[dict], key: str) -> dict[str, dict[str, list]]:
    """Per rule: mean, lo, hi of a sweep over seeds."""
    out = {}
    for rule in RULES:
        table = np.array([rec[key][rule] for rec in per_seed])  # (seeds, points)
        out[rule] = curve(table.T)
    return out


def _sweep_curve(per_seed: list[dict]) -> dict[str, list]:
    table = np.array([rec["delta_by_sweeps"] for rec in per_seed])  # (seeds, checkpoints)
    return curve(table.T)


def _summary(s: CapacitySettings, per_seed: list[dict]) -> list[dict]:
    rows = []
    d = s.width
    picks = [("pairs", n, f"n = {n} pairs, correlation 0") for n in (d // 2, d, 3 * d // 2, 2 * d)]
    picks += [("correlations", c, f"n = {s.pairs_for_correlation}, correlation {c}") for c in (0.0, 0.5, 0.9)]
    for key, value, condition in picks:
        grid = s.pairs if key == "pairs" else list(s.correlations)
        if value not in grid:
            continue
        j = grid.index(value)
        sweep = "by_pairs" if key == "pairs" else "by_correlation"
        for rule in RULES:
            rows.append({"condition": condition, "metric": f"{rule} recall error",
                         **spread([rec[sweep][rule][j] for rec in per_seed])})
    for j, sweeps in enumerate(s.long_sweeps):
        rows.append({"condition": f"n = d = {s.width}, correlation 0, {sweeps} sweeps", "metric": "delta recall error",
                     **spread([rec["delta_by_sweeps"][j] for rec in per_seed])})
    return rows


def _findings(s: CapacitySettings, per_seed: list[dict]) -> list[str]:
    half = [j for j, n in enumerate(s.pairs) if n <= s.width // 2]
    at_width = s.pairs.index(s.width)
    delta_half = max(rec["by_pairs"]["delta"][j] for rec in per_seed for j in half)
    delta_width = [rec["by_pairs"]["delta"][at_width] for rec in per_seed]
    below = all(rec[k]["delta"][j] <= rec[k]["hebbian"][j] for rec in per_seed
                for k in ("by_pairs", "by_correlation") for j in range(len(rec[k]["delta"])))
    hebb = np.mean([rec["by_correlation"]["hebbian"] for rec in per_seed], axis=0)
    rising = bool(np.all(np.diff(hebb) > 0))
    return [
        f"Delta rule, uncorrelated keys, n <= d/2 = {s.width // 2}: largest recall error over seeds {delta_half:.2g}.",
        f"Delta rule at n = d = {s.width} after {s.sweeps} sweeps: recall error {np.mean(delta_width):.3g} on average "
        f"(largest {max(delta_width):.3g}); the least-squares floor there is "
        f"{np.mean([rec['by_pairs']['least_squares'][at_width] for rec in per_seed]):.2g}.",
        f"Delta rule at n = d after {s.long_sweeps[-1]} sweeps: recall error "
        f"{np.mean([rec['delta_by_sweeps'][-1] for rec in per_seed]):.2g} on average "
        f"(largest {max(rec['delta_by_sweeps'][-1] for rec in per_seed):.2g}).",
        f"Delta below Hebbian at every point and seed: {'yes' if below else 'no'}.",
        f"Hebbian error grows with key correlation at every step of the sweep (mean over seeds): "
        f"{'yes' if rising else 'no'} ({hebb[0]:.3g} at correlation {s.correlations[0]}, "
        f"{hebb[-1]:.3g} at {s.correlations[-1]}).",
    ]


def _run(s: CapacitySettings, seeds: Sequence[int], progress: Progress) -> Outcome:
    per_seed = []
    for seed in seeds:
        progress.note(f"seed {seed}")
        rec: dict = {"seed": seed, "by_pairs": {r: [] for r in RULES}, "by_correlation": {r: [] for r in RULES}}
        points = [("by_pairs", n, 0.0) for n in s.pairs]
        points += [("by_correlation", s.pairs_for_correlation, c) for c in s.correlations]
        for sweep, n, c in points:
            for rule, err in measure(s, seed, n, c).items():
                rec[sweep][rule].append(err)
            progress.advance()
        rec["delta_by_sweeps"] = delta_by_sweeps(s, seed)
        progress.advance()
        per_seed.append(rec)
    data = {"pairs": s.pairs, "correlations": list(s.correlations), "pairs_for_correlation": s.pairs_for_correlation,
            "width": s.width, "by_pairs": _curves(per_seed, "by_pairs"),
            "by_correlation": _curves(per_seed, "by_correlation"), "long_sweeps": list(s.long_sweeps),
            "delta_by_sweeps": _sweep_curve(per_seed)}
    return Outcome(per_seed=per_seed, summary=_summary(s, per_seed), data=data, findings=_findings(s, per_seed))


EXPERIMENT = Experiment(
    name="capacity",
    title="Hebbian (Eq 26) against delta-rule (Eq 27-29) associative memory",
    question="How many key-value pairs does each rule store, and how does key correlation hurt each?",
    full=CapacitySettings(),
    quick=CapacitySettings(width=8, value_dim=4, pair_step=4, correlations=(0.0, 0.5, 0.9), sweeps=10,
                           long_sweeps=(10, 50)),
    default_seeds=5,
    quick_seeds=2,
    units=_units,
    run=_run,
)
