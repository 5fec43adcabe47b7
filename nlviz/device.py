"""Device choice and seeding: `auto` picks CUDA, then Apple MPS, then the CPU.

The decision to know: asking explicitly for a device that is not there (`cuda` on a
machine without CUDA) is a configuration error, never a silent fallback.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from .config import ConfigError

__all__ = ["resolve_device", "describe_device", "seed_everything"]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """Map a config device name to a torch.device, or raise ConfigError naming `device`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device: cuda was requested but CUDA is not available here; use auto or cpu")
        return torch.device("cuda")
    if name == "mps":
        if not _mps_available():
            raise ConfigError("device: mps was requested but MPS is not available here; use auto or cpu")
        return torch.device("mps")
    raise ConfigError(f"device: must be one of auto, cpu, cuda, mps; got {name!r}")


def describe_device(device: torch.device, threads: int | None = None) -> str:
    """A human-readable name, e.g. 'cuda (NVIDIA H100 80GB HBM3)' or 'cpu (2 threads)'.
    threads: the CPU threads the run will use, where that is not this process's count."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        threads = torch.get_num_threads() if threads is None else threads
        return f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    return device.type


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
