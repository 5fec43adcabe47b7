"""The experiments by command-line name, in the order the issue lists them."""

from __future__ import annotations

from . import ablation, capacity, co2, continual, levels
from .common import Experiment

__all__ = ["EXPERIMENTS"]

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (capacity.EXPERIMENT, continual.EXPERIMENT, levels.EXPERIMENT, ablation.EXPERIMENT, co2.EXPERIMENT)
}
