"""A run directory's files beside its store: checkpoint.pt, kept in step with run.sqlite, and summary.json.

The command line (`python -m nlviz train`) and the dashboard's worker (`nlviz.live`) both
write them through this module, so a run started in either place resumes with
`python -m nlviz train --resume DIR` and reads the same way.

The decision to know: a checkpoint is written only after the store has committed every
record up to its step (`RunWriter.sync`). A run resumed from it replaces the store's
records after that step, so it ends with nothing missing and nothing twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .store import RunWriter
from .trainer import DivergenceError, RunResult, Subscriber, Trainer

__all__ = ["Checkpointer", "write_summary", "creatable", "CHECKPOINT_NAME", "SUMMARY_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
SUMMARY_NAME = "summary.json"


def creatable(path: Path) -> tuple[bool, Path]:
    """Whether `path` can be made (or written, if it exists): its nearest existing ancestor (or
    itself) is a writable directory. Returns (answer, that ancestor) so errors can name it."""
    parent = Path(path).resolve()
    while not parent.exists():
        parent = parent.parent
    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK), parent


class Checkpointer(Subscriber):
    """Writes the writer's directory/checkpoint.pt every `every` steps (0: only when `save` is called)."""

    def __init__(self, writer: RunWriter, every: int = 500):
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"checkpoint_every: must be an integer >= 0, got {every!r}")
        self.writer = writer
        self.path = Path(writer.directory) / CHECKPOINT_NAME
        self.every = every

    def on_step_end(self, trainer: Trainer, step: int) -> None:  # after the update: a whole step
        if self.every and step % self.every == 0:
            self.save(trainer)

    def save(self, trainer: Trainer) -> Path:
        """Commit the store up to the trainer's step, then write the checkpoint of that step.

        Also valid after the run has ended: the writer has then committed everything."""
        self.writer.sync()
        return trainer.save_checkpoint(self.path)


def write_summary(
    directory: str | os.PathLike,
    trainer: Trainer,
    status: str,
    *,
    seconds: float,
    first_step: int = 0,
    result: RunResult | None = None,
    error: BaseException | None = None,
) -> dict[str, Any]:
    """Write directory/summary.json atomically and return it: config, device, status, steps,
    training time, final loss and task metrics (from `result`, when the run returned one),
    the error (with where a divergence started) and the update count per level.

    seconds: the training time behind `first_step` -> now, for steps per second."""
    import torch

    summary: dict[str, Any] = {"config": trainer.config.to_dict(), "device": trainer.device_name,
                               "torch": torch.__version__}
    if result is not None:
        summary.update(final_loss=result.final_loss, metrics=result.metrics)
    if isinstance(error, DivergenceError):
        summary.update(error=str(error), diverged_step=error.step, diverged_level=error.level)
    elif error is not None:
        summary.update(error=str(error))
    if trainer.diverging is not None:
        summary.update(diverging=trainer.diverging.to_dict())
    t = trainer.clock.t
    summary.update(status=status, steps_done=t, seconds=round(seconds, 3),
                   steps_per_second=round((t - first_step) / max(seconds, 1e-9), 1),
                   level_updates=[t // p for p in trainer.config.model.periods])
    path = Path(directory) / SUMMARY_NAME
    tmp = path.with_name(path.name + ".tmp")  # a reader never sees half a file
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(path)
    return summary
