"""levels: the paper's levels sweep in miniature: how many levels, and how slow the slowest.

A grid of CMS models, all with the parameter count of one level of hidden size H
(`streams.matched_levels`): one level (C = 1), and k = 2, 3, 4 levels whose periods run
from 1 to a lowest frequency 1/P, evenly spaced in log (`streams.geometric_periods`; P = 8,
64, 512 gives e.g. 1, 4, 16, 64 for k = 4, P = 64). Each model is trained on two streams:

- the multi-timescale regression (`nlviz.MultiscaleTask`: a map that drifts with a slow
  and a fast period), scored by the mean evaluation MSE over the second half of the run,
  and by the MSE against the slow-only and fast-only maps (which part the model tracks);
- class-incremental digits (as in `continual`), scored by the final average accuracy and
  forgetting.

The decisions to know: "lowest frequency" is the slowest level's period P, with the other
levels spread geometrically between 1 and P, so the sweep moves one knob at a time (k at a
fixed P, or P at a fixed k) while the size stays fixed. The multiscale task's fast period is
200 steps here, not its default 50: at 50 no model of this size tracks the fast map at all
(every model, one level or three, scored MSE about 0.34 in a probe, the fast map's own
size), so there would be nothing to compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..config import DigitsConfig, ModelConfig, MultiscaleConfig
from .common import Experiment, Outcome, Progress, check_settings, compare, spread
from .streams import (average_accuracy, digits_config, digits_stream, forgetting, geometric_periods, matched_levels,
                      multiscale_config, multiscale_tracking)

__all__ = ["LevelsSettings", "EXPERIMENT", "conditions"]

METRICS = {  # metric key -> (stream, label in the summary)
    "mse": ("multiscale", "multiscale MSE (2nd half)"),
    "mse_vs_slow_only": ("multiscale", "multiscale MSE against the slow map only"),
    "mse_vs_fast_only": ("multiscale", "multiscale MSE against the fast map only"),
    "average_accuracy": ("digits", "digits final average accuracy"),
    "forgetting": ("digits", "digits final average forgetting"),
}


@dataclass(frozen=True)
class LevelsSettings:
    level_counts: tuple[int, ...] = (1, 2, 3, 4)  # k
    lowest_periods: tuple[int, ...] = (8, 64, 512)  # P: the slowest level's period (k >= 2)
    width: int = 64  # every level's width
    total_hidden: int = 384  # the one-level model's hidden size; every model has its parameter count
    multiscale: MultiscaleConfig = field(default_factory=lambda: MultiscaleConfig(fast_period=200))  # see the docstring
    multiscale_steps: int = 2000  # one slow cycle
    eval_every: int = 50  # multiscale evaluation cadence (second half averaged)
    steps_per_task: int = 200  # digits: 5 tasks of 2 classes

    def __post_init__(self) -> None:
        check_settings(self)


def conditions(s: LevelsSettings) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """(label, k, P, periods) of each model in the grid; one level has P = 1."""
    out = []
    for k in s.level_counts:
        for lowest in ((1,) if k == 1 else s.lowest_periods):
            periods = geometric_periods(k, lowest)
            out.append((f"{k} level{'s' if k > 1 else ''}, C={', '.join(map(str, periods))}", k, lowest, periods))
    return out


def _units(s: LevelsSettings, seeds: Sequence[int]) -> int:
    return len(seeds) * len(conditions(s)) * (s.multiscale_steps + 5 * s.steps_per_task)


def _one(s: LevelsSettings, periods: tuple[int, ...], seed: int, progress: Progress) -> dict[str, float]:
    levels = matched_levels(periods, s.total_hidden, s.width)
    config = multiscale_config(ModelConfig(levels=levels), s.multiscale, s.multiscale_steps, seed)
    tracking = multiscale_tracking(config, progress, s.eval_every)
    options = DigitsConfig(classes_per_task=2, steps_per_task=s.steps_per_task)
    run = digits_stream(digits_config(levels, options, seed), progress)
    return {**tracking, "average_accuracy": average_accuracy(run.acc)[-1], "forgetting": forgetting(run.acc)[-1]}


def _run(s: LevelsSettings, seeds: Sequence[int], progress: Progress) -> Outcome:
    grid = conditions(s)
    per_seed = []
    for seed in seeds:
        rec = {"seed": seed, "conditions": {}}
        for label, _, _, periods in grid:
            progress.note(f"{label}, seed {seed}")
            rec["conditions"][label] = _one(s, periods, seed, progress)
        per_seed.append(rec)
    summary = [{"condition": label, "levels": k, "lowest_period": lowest, "metric": name,
                **spread([rec["conditions"][label][key] for rec in per_seed])}
               for label, k, lowest, _ in grid for key, (_, name) in METRICS.items()]
    data = {"conditions": [{"label": label, "levels": k, "lowest_period": lowest, "periods": list(periods)}
                           for label, k, lowest, periods in grid],
            "metrics": {key: name for key, (_, name) in METRICS.items()}}
    return Outcome(per_seed=per_seed, summary=summary, data=data, findings=_findings(s, summary))


def _best(summary: list[dict], metric: str, lowest: bool) -> dict:
    """The multi-level model with the lowest (or highest) mean of a metric."""
    rows = [r for r in summary if r["metric"] == metric and r["levels"] > 1]
    return min(rows, key=lambda r: r["mean"]) if lowest else max(rows, key=lambda r: r["mean"])


def _findings(s: LevelsSettings, summary: list[dict]) -> list[str]:
    one = {r["metric"]: r for r in summary if r["levels"] == 1}
    lines = []
    for metric, lowest, what in ((METRICS["mse"][1], True, "Lowest multiscale MSE of a multi-level model"),
                                 (METRICS["average_accuracy"][1], False,
                                  "Highest digits final average accuracy of a multi-level model"),
                                 (METRICS["forgetting"][1], True, "Lowest digits forgetting of a multi-level model")):
        best, base = _best(summary, metric, lowest), one[metric]
        overlap = compare(best, base) in (None, "overlap")
        lines.append(f"{what}: {best['condition']} ({best['mean']:.4g}) against one level ({base['mean']:.4g}); "
                     f"{'intervals overlap' if overlap else 'intervals do not overlap'}.")
    mse = [r for r in summary if r["metric"] == METRICS["mse"][1]]
    by_k = {k: np.mean([r["mean"] for r in mse if r["levels"] == k]) for k in s.level_counts}
    base = one[METRICS["mse"][1]]
    worse = [r for r in mse if r["levels"] > 1 and compare(r, base) == "above"]
    lines.append("Multiscale MSE by number of levels (mean over the lowest periods): "
                 + ", ".join(f"{k} level{'s' if k > 1 else ''} {v:.4g}" for k, v in by_k.items())
                 + f"; {len(worse)} of {len(mse) - 1} multi-level models have an interval entirely above one level's.")
    return lines


EXPERIMENT = Experiment(
    name="levels",
    title="Levels sweep: number of levels and the lowest frequency, at a fixed parameter count",
    question="Do more levels, or a slower slowest level, track a multi-timescale target better or forget less?",
    full=LevelsSettings(),
    quick=LevelsSettings(level_counts=(1, 2, 3), lowest_periods=(8,), width=16, total_hidden=32,
                         multiscale=MultiscaleConfig(dim=4, slow_period=60, fast_period=10), multiscale_steps=40,
                         eval_every=10, steps_per_task=8),
    default_seeds=3,
    quick_seeds=2,
    units=_units,
    run=_run,
)
