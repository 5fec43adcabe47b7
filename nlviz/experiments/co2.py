"""co2: on a real series, do levels with different periods split the seasonal cycle and the trend?

Data: the weekly Mauna Loa CO2 record 1958-2001 bundled with statsmodels
(`statsmodels.datasets.co2`, no download); the 59 missing weeks are filled by linear
interpolation in time, and the series is standardised with its own mean and standard
deviation (a scale, not a forecast: the experiment asks what the levels do, not how well
the model forecasts).

Model: an independent CMS (`ModelConfig(variant="independent")`): the levels run side by
side on the stem's output and the head reads their learned weighted sum, so the prediction
is exactly

    prediction = sum_l mix_l * (head.W y_l) + head.b,

and c_l = mix_l * head.W y_l is level l's contribution. Residual connections are off (a
residual would add the stem's output to every level and blur the split) and so is the
LayerNorm (it would divide out the level of the window, which is the trend). The task
(`series.WindowTask`) streams the series in time order, one week per optimizer step, so a
level with C(l) = 52 updates once per year of data.

Two models per seed: periods (1, 52), a fast and a once-a-year level, and the control
(1, 1), two identical clocks (any difference between its levels is chance). During the
last pass over the series each level's contribution to the newest window's prediction is
recorded *before* the step's update (prequential: what the level said at that week).
Two readings of each contribution:
- frequency content: the Hann-windowed power spectrum (mean removed), and its share of
  power in the seasonal bands (1 and 2 cycles/year, +-0.15) and at low frequency (below
  0.5 cycles/year: the trend and slow wiggles);
- what it carries: the target is split by STL (statsmodels, period 52 weeks) into trend +
  seasonal + remainder, and each contribution is regressed (least squares, means removed)
  on the trend and the seasonal part, c_l ~ a_l trend + b_l seasonal. a_l is the share of
  the trend level l carries, b_l its share of the season; over the levels they add up to
  about 1 when the model fits, and a level can carry more than all of one part (a_l > 1)
  if another cancels the excess.

The decision to know: "specialises" is read as the slow level carrying a different share
of the trend than of the season, a_2 - b_2 (the specialisation index), with a 95% interval
over seeds that excludes 0, where the control's index (two identical clocks) does not.
Spectral shares alone cannot show it here: the trend holds about 94% of the series' power,
so every contribution that follows the series is "mostly low frequency".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..config import ConfigError, LevelSpec, ModelConfig, TrainConfig
from ..trainer import StepEvent, Subscriber, Trainer
from .common import Experiment, Outcome, Progress, check_settings, spread
from .series import WindowTask

__all__ = ["CO2Settings", "EXPERIMENT", "load_co2", "Contributions", "band_shares", "spectrum", "decompose", "carried",
           "WEEKS_PER_YEAR"]

WEEKS_PER_YEAR = 365.25 / 7


@dataclass(frozen=True)
class CO2Settings:
    window: int = 52  # weeks of history in each input
    horizon: int = 4  # predict the value this many weeks after the window's end
    passes: int = 3  # passes over the series, in time order; contributions come from the last
    slow_period: int = 52  # C of the slow level (the control uses 1)
    width: int = 32  # each level's width
    hidden: int = 64  # each level's hidden size
    lr: float = 1e-3  # Adam, levels and head
    batch_size: int = 16  # the most recent windows in each step's batch
    weeks: int = 0  # use only the first N weeks of the series (0 = all; --quick uses a short piece)
    seasonal_halfwidth: float = 0.15  # cycles/year around 1 and 2
    low_cutoff: float = 0.5  # cycles/year: below is "low frequency" (trend)

    def __post_init__(self) -> None:
        check_settings(self, zero_ok=frozenset({"weeks"}))
        if self.weeks and self.weeks <= self.window + self.horizon:
            raise ConfigError(f"CO2Settings.weeks: must be 0 (all) or more than window + horizon "
                              f"({self.window + self.horizon}), got {self.weeks}")


def load_co2(weeks: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(dates as 'YYYY-MM-DD' strings, standardised values) of the weekly Mauna Loa record."""
    from statsmodels.datasets import co2

    frame = co2.load_pandas().data["co2"].interpolate(method="time")
    if weeks:
        frame = frame.iloc[:weeks]
    values = frame.to_numpy(np.float64)
    return frame.index.strftime("%Y-%m-%d").to_numpy(), (values - values.mean()) / values.std()


class Contributions(Subscriber):
    """Records c_l = mix_l * head.W y_l for the newest window of every step from `start` on."""

    def __init__(self, start: int):
        self.start = start
        self.steps: list[int] = []
        self.values: list[torch.Tensor] = []  # per step: (levels,)

    def on_start(self, trainer: Trainer) -> None:
        self.model = trainer.model

    @torch.no_grad()
    def on_step(self, event: StepEvent) -> None:
        if event.step < self.start:
            return
        head, mix = self.model.head.weight, self.model.mix  # (1, d), (levels,)
        newest = torch.stack([tr.y[-1] for tr in event.traces])  # (levels, d)
        self.steps.append(event.step)
        self.values.append(mix * (newest @ head[0]))  # (levels,)

    def array(self) -> np.ndarray:
        return torch.stack(self.values).numpy().T  # (levels, steps)


def band_shares(signal: np.ndarray, seasonal_halfwidth: float, low_cutoff: float) -> dict[str, float]:
    """Shares of a series' power (mean removed, Hann window) in the seasonal and low-frequency bands."""
    freq, power = spectrum(signal)
    total = power.sum()
    seasonal = (np.abs(freq - 1) <= seasonal_halfwidth) | (np.abs(freq - 2) <= seasonal_halfwidth)
    return {"seasonal": float(power[seasonal].sum() / total), "low": float(power[freq < low_cutoff].sum() / total)}


def spectrum(signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cycles per year, power) of a series, mean removed, Hann window, zero frequency dropped."""
    x = (signal - signal.mean()) * np.hanning(signal.size)
    power = np.abs(np.fft.rfft(x)) ** 2
    return np.fft.rfftfreq(signal.size, d=1 / WEEKS_PER_YEAR)[1:], power[1:]  # cycles per year; DC dropped


def decompose(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(trend, seasonal) of a weekly series by STL with a 52-week period (robust to outliers)."""
    from statsmodels.tsa.seasonal import STL

    fit = STL(values, period=52, robust=True).fit()
    return np.asarray(fit.trend), np.asarray(fit.seasonal)


def carried(contribution: np.ndarray, trend: np.ndarray, seasonal: np.ndarray) -> dict[str, float]:
    """Least-squares (a, b) in contribution ~ a trend + b seasonal, all with their means removed."""
    design = np.stack([trend - trend.mean(), seasonal - seasonal.mean()], axis=1)  # (T, 2)
    (a, b), *_ = np.linalg.lstsq(design, contribution - contribution.mean(), rcond=None)
    return {"trend": float(a), "season": float(b)}


def _config(s: CO2Settings, periods: tuple[int, int], seed: int, steps: int) -> TrainConfig:
    levels = tuple(LevelSpec(period=p, width=s.width, hidden=s.hidden, lr=s.lr) for p in periods)
    model = ModelConfig(levels=levels, variant="independent", residual=False, norm=False)
    # `task` is a placeholder: the Trainer is handed the WindowTask itself.
    return TrainConfig(model=model, steps=steps, batch_size=s.batch_size, seed=seed, device="cpu", head_lr=s.lr,
                       capture=True, linears_every=0)


def models(s: CO2Settings) -> dict[str, tuple[int, int]]:
    return {f"CMS (C=1, {s.slow_period})": (1, s.slow_period), "control (C=1, 1)": (1, 1)}


def _one(s: CO2Settings, task: WindowTask, parts: tuple[np.ndarray, np.ndarray], periods: tuple[int, int], seed: int,
         progress: Progress) -> dict:
    steps = s.passes * task.n_windows
    record = Contributions(start=steps - task.n_windows + 1)
    trainer = Trainer(_config(s, periods, seed, steps), [progress.subscriber(), record], task=task)
    trainer.run()
    contributions = record.array()  # (2, n_windows): the last pass, in series order
    shares = [band_shares(c, s.seasonal_halfwidth, s.low_cutoff) for c in contributions]
    return {"contributions": contributions, "bias": float(trainer.model.head.bias.detach()), "shares": shares,
            "carried": [carried(c, *parts) for c in contributions],
            "specialisation": _index([carried(c, *parts) for c in contributions]),
            "variance": [float(c.var()) for c in contributions],
            "final_mse": trainer.task.evaluate(trainer.model, steps)["mse_all_windows"]}


def _units(s: CO2Settings, seeds: Sequence[int]) -> int:
    n = len(load_co2(s.weeks)[1]) - s.window - s.horizon + 1
    return len(seeds) * len(models(s)) * s.passes * n


def _run(s: CO2Settings, seeds: Sequence[int], progress: Progress) -> Outcome:
    dates, values = load_co2(s.weeks)
    task = WindowTask(torch.tensor(values), s.window, s.horizon)
    target_idx = [task.target_index(i) for i in range(task.n_windows)]
    trend, seasonal = decompose(values)
    parts = (trend[target_idx], seasonal[target_idx])  # aligned with the contributions
    per_seed, kept = [], {}
    for seed in seeds:
        rec = {"seed": seed, "models": {}}
        for name, periods in models(s).items():
            progress.note(f"{name}, seed {seed}")
            out = _one(s, task, parts, periods, seed, progress)
            if seed == seeds[0]:
                kept[name] = out
            rec["models"][name] = {k: v for k, v in out.items() if k != "contributions"}
        per_seed.append(rec)
    target_shares = band_shares(values[target_idx], s.seasonal_halfwidth, s.low_cutoff)
    summary = _summary(s, per_seed)
    data = {
        "dates": [dates[i] for i in target_idx], "target": np.round(values[target_idx], 4), "models": list(models(s)),
        "periods": {n: list(p) for n, p in models(s).items()}, "target_shares": target_shares,
        "seed_shown": seeds[0],
        "contributions": {n: np.round(k["contributions"], 4) for n, k in kept.items()},
        "bias": {n: k["bias"] for n, k in kept.items()},
        "spectra": {n: _spectra(k["contributions"]) for n, k in kept.items()},
    }
    return Outcome(per_seed=per_seed, summary=summary, data=data, findings=_findings(s, per_seed, target_shares))


def _spectra(contributions: np.ndarray) -> dict[str, list]:
    """Each level's power share per frequency, up to 4 cycles a year (the seasonal bands and around)."""
    spectra = [spectrum(c) for c in contributions]
    keep = spectra[0][0] <= 4
    return {"freq": np.round(spectra[0][0][keep], 4),
            "power": [np.round(power[keep] / power.sum(), 6) for _, power in spectra]}


def _index(carried_by_level: list[dict[str, float]]) -> float:
    """The specialisation index a_2 - b_2: level 2's share of the trend minus its share of the season."""
    return carried_by_level[1]["trend"] - carried_by_level[1]["season"]


def _summary(s: CO2Settings, per_seed: list[dict]) -> list[dict]:
    rows = []
    for name, periods in models(s).items():
        for level, period in enumerate(periods):
            condition = f"{name}, level {level + 1} (C={period})"
            for band, label in (("seasonal", "seasonal share of power"), ("low", "low-frequency share of power")):
                rows.append({"condition": condition, "metric": label,
                             **spread([rec["models"][name]["shares"][level][band] for rec in per_seed])})
            for part, label in (("trend", "share of the trend carried"), ("season", "share of the season carried")):
                rows.append({"condition": condition, "metric": label,
                             **spread([rec["models"][name]["carried"][level][part] for rec in per_seed])})
        rows.append({"condition": name, "metric": "specialisation index a_2 - b_2",
                     **spread([rec["models"][name]["specialisation"] for rec in per_seed])})
        rows.append({"condition": name, "metric": "MSE over all windows after training",
                     **spread([rec["models"][name]["final_mse"] for rec in per_seed])})
    return rows


def _findings(s: CO2Settings, per_seed: list[dict], target: dict[str, float]) -> list[str]:
    lines = [f"The target series itself: seasonal share of power {target['seasonal']:.3f}, "
             f"low-frequency share {target['low']:.3f}."]
    for name, periods in models(s).items():
        a = np.array([[rec["models"][name]["carried"][l]["trend"] for l in (0, 1)] for rec in per_seed])
        b = np.array([[rec["models"][name]["carried"][l]["season"] for l in (0, 1)] for rec in per_seed])
        index = spread([rec["models"][name]["specialisation"] for rec in per_seed])
        if index["ci95"] is None:
            verdict = "one seed: no interval"
        elif index["lo"] > 0 or index["hi"] < 0:
            verdict = "its 95% interval excludes 0"
        else:
            verdict = "its 95% interval includes 0"
        lines.append(
            f"{name}: level 1 (C={periods[0]}) carries {a[:, 0].mean():.3f} of the trend and {b[:, 0].mean():.3f} "
            f"of the season, level 2 (C={periods[1]}) {a[:, 1].mean():.3f} and {b[:, 1].mean():.3f} (means over "
            f"seeds); specialisation index {index['mean']:.3f}, {verdict}.")
    return lines


EXPERIMENT = Experiment(
    name="co2",
    title="Mauna Loa CO2: do a fast and a once-a-year level split the seasonal cycle and the trend?",
    question="Trained on the weekly CO2 record in time order, does the slow level carry the trend and the fast "
             "one the season?",
    full=CO2Settings(),
    quick=CO2Settings(window=16, passes=1, weeks=260, width=8, hidden=16),
    default_seeds=5,
    quick_seeds=2,
    units=_units,
    run=_run,
)
