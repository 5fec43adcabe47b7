"""ablation: the paper's ablation table in miniature, one change at a time from a full model.

The full model is a 3-level CMS (periods 1, 8, 64; residual blocks with pre-LayerNorm)
whose levels are trained by DGD (the delta rule of Eq 28-29 as an optimizer), with the
sign-consistent surprise objective (weight 0.1) and Eq 31's chunk sums. Each ablation
changes one thing:

- without DGD: the levels' optimizer is Adam, or SGD (each at its own learning rate);
- without CMS: one level of the same parameter count, period 1, still DGD;
- without residual, without norm: the bare chain of Eq 30 (one switch each);
- without the surprise objective;
- mean instead of sum: a chunk's gradients divided by C(l) (the prototype's convention).

Every model is trained on the multi-timescale regression and scored by the mean evaluation
MSE over the second half of the run (see `streams.multiscale_tracking`), over seeds.

The decision to know: learning rates. DGD's write term is SGD's step and its erase term
grows with the rows seen per update (batch times C(l)), so DGD and SGD share one learning
rate; Adam keeps its usual 1e-3. The shared rate, 1e-2, is the SGD levels' best in a probe on
seed 100 (not a reported seed); DGD was flat across 1e-3 to 1e-1 there (docs/results.md lists
the probe), so it takes SGD's. The stem and head are Adam at 1e-3 in every model, so each row changes only what it names.
A model that diverges is recorded as such (its score is null) rather than dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

from ..config import ModelConfig, MultiscaleConfig, SurpriseConfig
from ..trainer import DivergenceError
from .common import Experiment, Outcome, Progress, check_settings, compare, spread
from .streams import matched_levels, multiscale_config, multiscale_tracking

__all__ = ["AblationSettings", "Variant", "EXPERIMENT", "variants"]

FULL = "full model"


@dataclass(frozen=True)
class AblationSettings:
    periods: tuple[int, ...] = (1, 8, 64)  # the full model's levels
    width: int = 64  # every level's width
    total_hidden: int = 384  # one level's hidden size; the CMS levels split its parameters
    dgd_lr: float = 1e-2  # DGD (and SGD) learning rate of the levels
    adam_lr: float = 1e-3  # Adam learning rate (the "without DGD: Adam" levels)
    surprise_weight: float = 0.1  # the full model's surprise objective weight per level
    multiscale: MultiscaleConfig = field(default_factory=lambda: MultiscaleConfig(fast_period=200))  # as in `levels`
    steps: int = 2000  # one slow cycle of the multiscale task
    eval_every: int = 50

    def __post_init__(self) -> None:
        check_settings(self, zero_ok=frozenset({"surprise_weight"}))


@dataclass(frozen=True)
class Variant:
    """One row of the table: the full model with one change."""

    name: str
    periods: tuple[int, ...]
    optimizer: str = "dgd"
    residual: bool = True
    norm: bool = True
    surprise: bool = True
    accumulate: str = "sum"


def variants(s: AblationSettings) -> list[Variant]:
    full = Variant(FULL, s.periods)
    return [
        full,
        dataclasses.replace(full, name="without DGD: Adam levels", optimizer="adam"),
        dataclasses.replace(full, name="without DGD: SGD levels", optimizer="sgd"),
        dataclasses.replace(full, name="without CMS: one level", periods=(1,)),
        dataclasses.replace(full, name="without residual", residual=False),
        dataclasses.replace(full, name="without norm", norm=False),
        dataclasses.replace(full, name="without surprise objective", surprise=False),
        dataclasses.replace(full, name="mean instead of sum (Eq 31)", accumulate="mean"),
    ]


def _model(s: AblationSettings, v: Variant) -> ModelConfig:
    lr = s.adam_lr if v.optimizer == "adam" else s.dgd_lr
    levels = matched_levels(v.periods, s.total_hidden, s.width, optimizer=v.optimizer, lr=lr)
    return ModelConfig(levels=levels, residual=v.residual, norm=v.norm)


def _units(s: AblationSettings, seeds: Sequence[int]) -> int:
    return len(seeds) * len(variants(s)) * s.steps


def _one(s: AblationSettings, v: Variant, seed: int, progress: Progress) -> dict:
    surprise = SurpriseConfig(enabled=v.surprise, weights=(s.surprise_weight,))
    config = multiscale_config(_model(s, v), s.multiscale, s.steps, seed, surprise=surprise, accumulate=v.accumulate)
    try:
        return {**multiscale_tracking(config, progress, s.eval_every), "diverged": None}
    except DivergenceError as e:
        progress.advance(s.steps - e.step)  # the steps it will not take
        return {"mse": None, "mse_vs_slow_only": None, "mse_vs_fast_only": None, "final_loss": None,
                "diverged": str(e)}


def _run(s: AblationSettings, seeds: Sequence[int], progress: Progress) -> Outcome:
    rows = variants(s)
    per_seed = []
    for seed in seeds:
        rec = {"seed": seed, "variants": {}}
        for v in rows:
            progress.note(f"{v.name}, seed {seed}")
            rec["variants"][v.name] = _one(s, v, seed, progress)
        per_seed.append(rec)
    summary = []
    for v in rows:
        runs = [rec["variants"][v.name] for rec in per_seed]
        finite = [r["mse"] for r in runs if r["mse"] is not None]
        diverged = len(runs) - len(finite)
        for key, label in (("mse", "multiscale MSE (2nd half)"), ("mse_vs_slow_only", "MSE against the slow map only"),
                           ("mse_vs_fast_only", "MSE against the fast map only")):
            summary.append({"condition": v.name, "metric": label, "diverged_seeds": diverged,
                            **spread([r[key] for r in runs if r[key] is not None])})
    data = {"variants": [dataclasses.asdict(v) for v in rows]}
    return Outcome(per_seed=per_seed, summary=summary, data=data, findings=_findings(summary))


# Where a row's interval lies against the full model's (common.compare), in words.
VERDICTS = {None: "no interval (one seed)", "above": "worse than the full model (intervals do not overlap)",
            "below": "better than the full model (intervals do not overlap)",
            "overlap": "not distinguishable from the full model (intervals overlap)"}


def _findings(summary: list[dict]) -> list[str]:
    rows = {r["condition"]: r for r in summary if r["metric"] == "multiscale MSE (2nd half)"}
    full = rows[FULL]
    if full["mean"] is None:  # nothing to compare against; every other row is still in the table
        return ["Full model: diverged on every seed, so no row is compared with it."]
    lines = [f"Full model: multiscale MSE {full['mean']:.4g}"
             + (f" +- {full['ci95']:.2g}" if full["ci95"] is not None else "") + "."]
    for name, r in rows.items():
        if name == FULL:
            continue
        if r["mean"] is None:
            lines.append(f"{name}: diverged on every seed.")
            continue
        verdict = VERDICTS[compare(r, full)]
        diverged = f"; diverged on {r['diverged_seeds']} seed(s)" if r["diverged_seeds"] else ""
        ratio = r["mean"] / full["mean"]
        lines.append(f"{name}: {r['mean']:.4g} ({ratio:.2f}x the full model's), {verdict}{diverged}.")
    return lines


EXPERIMENT = Experiment(
    name="ablation",
    title="Ablation grid: without DGD, without CMS, without residual or norm, surprise objective, sum or mean",
    question="Which of the full model's parts matter for tracking a multi-timescale target?",
    full=AblationSettings(),
    quick=AblationSettings(periods=(1, 4), width=16, total_hidden=32,
                           multiscale=MultiscaleConfig(dim=4, slow_period=60, fast_period=10), steps=30, eval_every=10),
    default_seeds=3,
    quick_seeds=2,
    units=_units,
    run=_run,
)
