"""Typed, frozen configuration for models, tasks, the surprise objective and training.

Every dataclass validates itself once, at construction, and raises `ConfigError` whose
one-line message names the field and what is allowed. Nothing else in nlviz checks
configuration again, so a config that exists is a config that is valid (the device is
the one exception: whether CUDA exists is only known when a run starts, see
`nlviz.device.resolve_device`).

Configs round-trip through plain dicts (`to_dict` / `TrainConfig.from_dict`) so that a
checkpoint or a run store can hold them as JSON.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ConfigError",
    "LevelSpec",
    "ModelConfig",
    "SurpriseConfig",
    "MultiscaleConfig",
    "RecallConfig",
    "DigitsConfig",
    "TrainConfig",
    "TASK_CONFIGS",
    "OPTIMIZERS",
    "VARIANTS",
    "DEVICES",
]

OPTIMIZERS = ("sgd", "adam", "dgd")
VARIANTS = ("sequential", "independent")
LEVEL_KINDS = ("mlp", "lstm")
DEVICES = ("auto", "cpu", "cuda", "mps")
ACCUMULATE = ("sum", "mean")
AUTOCAST = ("none", "bf16")
SIGNS = ("consistent", "printed")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field and what is allowed."""


def _int(name: str, value: Any, lo: int = 1, hi: int | None = None) -> None:
    allowed = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise ConfigError(f"{name}: must be an integer {allowed}, got {value!r}")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: must be a finite number > 0, got {value!r}")


def _nonneg(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}: must be a finite number >= 0, got {value!r}")


def _fraction(name: str, value: Any, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (0 < value < 1 if lo_open else 0 <= value < 1)
    if not ok:
        rng = "0 < value < 1" if lo_open else "0 <= value < 1"
        raise ConfigError(f"{name}: must be a number with {rng}, got {value!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: must be one of {', '.join(allowed)}; got {value!r}")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: must be true or false, got {value!r}")


@dataclass(frozen=True)
class LevelSpec:
    """One CMS level: an MLP block (or an LSTM cell) with its own clock and optimizer."""

    period: int = 1  # C(l): the level updates every `period` steps (Eq 31)
    width: int = 64  # d: the level's output width
    hidden: int = 256  # MLP hidden size (LSTM levels ignore it)
    kind: str = "mlp"  # "mlp", or "lstm" (first level only; state persists across batches)
    optimizer: str = "adam"  # sgd | adam | dgd (delta-rule GD, Eq 28-29)
    lr: float = 1e-3  # the level's own learning rate

    def __post_init__(self) -> None:
        _int("period", self.period)
        _int("width", self.width, 1, 65536)
        _int("hidden", self.hidden, 1, 262144)
        _choice("kind", self.kind, LEVEL_KINDS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _positive("lr", self.lr)


def _default_levels() -> tuple[LevelSpec, ...]:
    return (LevelSpec(period=1), LevelSpec(period=8), LevelSpec(period=64))


@dataclass(frozen=True)
class ModelConfig:
    """The CMS chain of Eq 30: which levels, how they are wired."""

    levels: tuple[LevelSpec, ...] = field(default_factory=_default_levels)  # fast to slow
    variant: str = "sequential"  # sequential chain (Eq 30), or independent levels summed
    residual: bool = True  # y = x + MLP(x); off shows the paper's bare chain
    norm: bool = True  # pre-LayerNorm inside each level

    def __post_init__(self) -> None:
        if not isinstance(self.levels, tuple):
            object.__setattr__(self, "levels", tuple(self.levels))
        if len(self.levels) == 0:
            raise ConfigError("levels: must list at least one level, got none")
        for i, lv in enumerate(self.levels):
            if not isinstance(lv, LevelSpec):
                raise ConfigError(f"levels[{i}]: must be a LevelSpec, got {type(lv).__name__}")
            if lv.kind == "lstm" and i > 0:
                raise ConfigError(f"levels[{i}].kind: lstm is allowed for the first level only")
        _choice("variant", self.variant, VARIANTS)
        _bool("residual", self.residual)
        _bool("norm", self.norm)
        if self.variant == "independent":
            widths = {lv.width for lv in self.levels}
            if len(widths) > 1:
                raise ConfigError(
                    f"levels.width: the independent variant sums level outputs, so all widths must be equal; got {sorted(widths)}"
                )

    @property
    def periods(self) -> tuple[int, ...]:
        return tuple(lv.period for lv in self.levels)


@dataclass(frozen=True)
class SurpriseConfig:
    """The prototype's surprise auxiliary objective ("Tier 2"), made sign-consistent.

    On step t (when enabled and t % every == 0) level l adds
    weight_l / 2 * mean_b ||y_l - v_l||^2 with v_l = -clip(u_l) (consistent) or +clip(u_l)
    (the printed Eq 27 sign), u_l the surprise reaching y_l, treated as a constant.
    """

    enabled: bool = False  # on/off toggle
    weights: tuple[float, ...] = (0.1,)  # per-level weight; one value is used for every level
    every: int = 1  # add the objective every N steps
    clip: float = 0.0  # max L2 norm of each row of u used as target; 0 = no clipping
    sign: str = "consistent"  # "consistent": v = -u;  "printed": v = +u (the paper's slip)

    def __post_init__(self) -> None:
        _bool("surprise.enabled", self.enabled)
        if isinstance(self.weights, (int, float)) and not isinstance(self.weights, bool):
            object.__setattr__(self, "weights", (float(self.weights),))
        if not isinstance(self.weights, tuple):
            object.__setattr__(self, "weights", tuple(self.weights))
        if len(self.weights) == 0:
            raise ConfigError("surprise.weights: must hold one weight, or one per level; got none")
        for w in self.weights:
            _nonneg("surprise.weights", w)
        _int("surprise.every", self.every)
        _nonneg("surprise.clip", self.clip)
        _choice("surprise.sign", self.sign, SIGNS)

    def weight_for(self, level: int, n_levels: int) -> float:
        if len(self.weights) == 1:
            return float(self.weights[0])
        return float(self.weights[level])


@dataclass(frozen=True)
class MultiscaleConfig:
    """Regression stream y = (A_slow(t) + A_fast(t)) x + noise with two drift speeds."""

    dim: int = 16  # input and output width
    slow_period: int = 2000  # steps for one full cycle of the slow component
    fast_period: int = 50  # steps for one full cycle of the fast component
    slow_scale: float = 1.0  # size of the slowly drifting map
    fast_scale: float = 0.5  # size of the quickly drifting map
    noise: float = 0.01  # std of additive target noise

    def __post_init__(self) -> None:
        _int("task.dim", self.dim, 1, 4096)
        _int("task.slow_period", self.slow_period, 2)
        _int("task.fast_period", self.fast_period, 2)
        _nonneg("task.slow_scale", self.slow_scale)
        _nonneg("task.fast_scale", self.fast_scale)
        _nonneg("task.noise", self.noise)


@dataclass(frozen=True)
class RecallConfig:
    """Associative recall: a fixed set of key -> value pairs, keys with shared correlation."""

    pairs: int = 32  # number of stored pairs
    key_dim: int = 32  # key width
    value_dim: int = 32  # value width
    correlation: float = 0.0  # cosine similarity shared by every two keys, 0 <= c < 1

    def __post_init__(self) -> None:
        _int("task.pairs", self.pairs, 1, 1_000_000)
        _int("task.key_dim", self.key_dim, 1, 4096)
        _int("task.value_dim", self.value_dim, 1, 4096)
        _fraction("task.correlation", self.correlation)


@dataclass(frozen=True)
class DigitsConfig:
    """Class-incremental scikit-learn digits: tasks of a few classes, one after another."""

    classes_per_task: int = 2  # classes in each task (10 classes in all)
    steps_per_task: int = 200  # optimizer steps spent on each task
    test_fraction: float = 0.25  # share of each class held out for evaluation

    def __post_init__(self) -> None:
        _int("task.classes_per_task", self.classes_per_task, 1, 10)
        _int("task.steps_per_task", self.steps_per_task)
        _fraction("task.test_fraction", self.test_fraction, lo_open=True)


TASK_CONFIGS: dict[str, type] = {
    "multiscale": MultiscaleConfig,
    "recall": RecallConfig,
    "digits": DigitsConfig,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. `TrainConfig()` is the dashboard's default run."""

    task: str = "multiscale"  # multiscale | recall | digits
    task_options: Any = None  # the task's config dataclass; None = that task's defaults
    model: ModelConfig = field(default_factory=ModelConfig)
    surprise: SurpriseConfig = field(default_factory=SurpriseConfig)
    steps: int = 1000  # optimizer steps in the run
    batch_size: int = 32  # examples per step
    seed: int = 0  # seeds torch, python and numpy; the task draws from its own generator
    device: str = "auto"  # auto picks cuda, then mps, then cpu
    accumulate: str = "sum"  # Eq 31 sums a chunk's gradients; "mean" divides by C(l) (the prototype's convention)
    head_optimizer: str = "adam"  # optimizer of the input and output projections (period 1)
    head_lr: float = 1e-3  # their learning rate
    capture: bool = True  # record each level's input, output y_l and surprise u_l every step
    linears_every: int = 10  # with capture, also each linear layer's input and output gradient every N steps (0 = never): Eq 25 from data; costs time and activation memory
    sync_every: int = 0  # host reads (progress, non-finite check) every N steps; 0 = 1 on cpu, 50 on gpu
    autocast: str = "none"  # "bf16": forward pass and loss under torch.autocast(bfloat16); parameters, gradients, optimizer state and the task's final evaluation stay float32
    diverging_factor: float = 1e4  # flag the run as diverging once its loss passes this many times its early minimum (nlviz.diverging); 0 = never
    diverging_stop: bool = False  # end a diverging run there (status diverged) instead of flagging it and going on

    def __post_init__(self) -> None:
        _choice("task", self.task, tuple(TASK_CONFIGS))
        cls = TASK_CONFIGS[self.task]
        if self.task_options is None:
            object.__setattr__(self, "task_options", cls())
        elif not isinstance(self.task_options, cls):
            raise ConfigError(
                f"task_options: task {self.task!r} takes a {cls.__name__}, got {type(self.task_options).__name__}"
            )
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model: must be a ModelConfig, got {type(self.model).__name__}")
        if not isinstance(self.surprise, SurpriseConfig):
            raise ConfigError(f"surprise: must be a SurpriseConfig, got {type(self.surprise).__name__}")
        k = len(self.model.levels)
        if len(self.surprise.weights) not in (1, k):
            raise ConfigError(
                f"surprise.weights: must hold one weight or one per level ({k}), got {len(self.surprise.weights)}"
            )
        _int("steps", self.steps, 1, 10**9)
        _int("batch_size", self.batch_size, 1, 1_000_000)
        _int("seed", self.seed, 0, 2**63 - 1)
        _choice("device", self.device, DEVICES)
        _choice("accumulate", self.accumulate, ACCUMULATE)
        _choice("head_optimizer", self.head_optimizer, ("sgd", "adam"))
        _positive("head_lr", self.head_lr)
        _bool("capture", self.capture)
        _int("linears_every", self.linears_every, 0)
        _int("sync_every", self.sync_every, 0)
        _choice("autocast", self.autocast, AUTOCAST)
        f = self.diverging_factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not (f == 0 or f > 1):
            raise ConfigError(f"diverging_factor: must be 0 (off) or a finite number > 1, got {f!r}")
        _bool("diverging_stop", self.diverging_stop)
        if self.diverging_stop and not self.diverging_factor:
            raise ConfigError("diverging_stop: needs the diverging rule on (diverging_factor > 1), got diverging_factor 0")
        if self.surprise.enabled and not self.capture:
            raise ConfigError("capture: the surprise objective reads u_l, so capture must be true when surprise.enabled is")

    def describe(self) -> str:
        """The run in one line, every setting a reader of a run needs (the device aside, which
        only the machine that trains it can name): what the CLI prints when it starts and the
        dashboard's form shows above its Start button. Numbers as repr, the shortest text that
        reads back as the same value."""
        levels = "; ".join(f"C={lv.period} {lv.kind} width {lv.width}" + (f" hidden {lv.hidden}" if lv.kind == "mlp" else "")
                           + f" {lv.optimizer} lr {lv.lr!r}" for lv in self.model.levels)
        m, sur = self.model, self.surprise
        wiring = ", ".join([m.variant, "residual" if m.residual else "no residual", "LayerNorm" if m.norm else "no LayerNorm"])
        surprise = (f"surprise objective weights {', '.join(map(repr, sur.weights))} every {sur.every} step(s), "
                    f"{sur.sign} sign" + (f", clip {sur.clip!r}" if sur.clip else "") if sur.enabled
                    else "no surprise objective")
        diverging = (f"diverging past {self.diverging_factor:g} x the early loss" + (", then stop" if self.diverging_stop else "")
                     if self.diverging_factor else "no diverging check")
        changed = [f"{f.name}={getattr(self.task_options, f.name)!r}" for f in dataclasses.fields(self.task_options)
                   if getattr(self.task_options, f.name) != f.default]
        task = f"{self.task} ({', '.join(changed)})" if changed else self.task
        return (f"{task}, {self.steps} steps of batch {self.batch_size}, seed {self.seed}; "
                f"{len(m.levels)} level(s): {levels}; {wiring}; chunk {self.accumulate}; stem and head "
                f"{self.head_optimizer} lr {self.head_lr!r}; {surprise}; "
                f"{'bf16' if self.autocast == 'bf16' else 'float32'} forward pass; {diverging}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `TrainConfig.from_dict` rebuilds (and re-validates) it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        try:
            return cls._from_dict(d)
        except TypeError as e:  # an unknown or missing key inside a nested section
            raise ConfigError(f"config: {e}") from None

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        task = d.get("task", "multiscale")
        if task not in TASK_CONFIGS:
            _choice("task", task, tuple(TASK_CONFIGS))
        if isinstance(d.get("task_options"), dict):
            d["task_options"] = TASK_CONFIGS[task](**d["task_options"])
        if isinstance(d.get("model"), dict):
            m = dict(d["model"])
            m["levels"] = tuple(LevelSpec(**lv) for lv in m.get("levels", ()))
            d["model"] = ModelConfig(**m)
        if isinstance(d.get("surprise"), dict):
            s = dict(d["surprise"])
            if "weights" in s:
                s["weights"] = tuple(s["weights"])
            d["surprise"] = SurpriseConfig(**s)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: not a TrainConfig field; allowed: {', '.join(sorted(known))}")
        return cls(**d)
