"""nlviz: see how nested learning works (Behrouz et al., NeurIPS 2025), equation by equation.

Where each equation lives:
    Eq 25-29  nlviz.rules      (Hebbian and delta-rule steps, their objectives)
    Eq 28-29  nlviz.optim.DGD  (the delta rule as a per-level optimizer)
    Eq 30     nlviz.cms        (the Continuum Memory System chain)
    Eq 31     nlviz.clock      (which level updates when) and nlviz.trainer (chunk sums)
    Eq 25     nlviz.surprise   (local surprise capture, the surprise objective)
"""

from . import rules
from .clock import LevelClock
from .cms import CMS, LevelTrace, LSTMLevel, MLPLevel
from .config import (
    ConfigError,
    DigitsConfig,
    LevelSpec,
    ModelConfig,
    MultiscaleConfig,
    RecallConfig,
    SurpriseConfig,
    TrainConfig,
)
from .device import resolve_device, seed_everything
from .live import LiveRun, RunBusyError, RunRegistry
from .optim import DGD, build_update_groups
from .rules import delta_step, dot_objective, hebbian_step, l2_objective
from .store import RunReader, RunStoreError, RunWriter, open_run
from .surprise import SurpriseCapture, surprise_target
from .tasks import DigitsTask, MultiscaleTask, RecallTask, make_pairs, make_task
from .trainer import DivergenceError, LevelUpdateEvent, ProgressBar, RunResult, StepEvent, Subscriber, Trainer

__version__ = "0.1.0"

__all__ = [
    "rules",
    "dot_objective",
    "l2_objective",
    "hebbian_step",
    "delta_step",
    "LevelClock",
    "CMS",
    "MLPLevel",
    "LSTMLevel",
    "LevelTrace",
    "ConfigError",
    "LevelSpec",
    "ModelConfig",
    "SurpriseConfig",
    "MultiscaleConfig",
    "RecallConfig",
    "DigitsConfig",
    "TrainConfig",
    "resolve_device",
    "seed_everything",
    "DGD",
    "build_update_groups",
    "SurpriseCapture",
    "surprise_target",
    "MultiscaleTask",
    "RecallTask",
    "DigitsTask",
    "make_task",
    "make_pairs",
    "RunWriter",
    "RunReader",
    "RunStoreError",
    "open_run",
    "LiveRun",
    "RunRegistry",
    "RunBusyError",
    "Trainer",
    "Subscriber",
    "StepEvent",
    "LevelUpdateEvent",
    "RunResult",
    "DivergenceError",
    "ProgressBar",
]
