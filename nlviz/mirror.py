"""An optional TensorBoard mirror of the run store, for users who live in TensorBoard.

`TensorBoardMirror` writes the same scalars (the whole model's loss; per level ||u_l||,
||y_l||, the Eq 26 and Eq 27 objectives of the output layer, the update size) and the
same histograms (activations y_l, surprises u_l, output-layer inputs) as TensorBoard
event files. Tags are `loss`, `level_<l>/<name>` and `level_<l>/<kind>`.

The decision to know: the mirror reads the run store, not the training loop. A thread
tails `run.sqlite` once a second and copies what the RunWriter committed, so training
pays nothing for it and TensorBoard shows exactly what the dashboard shows. It needs the
`tensorboard` package (torch's SummaryWriter writes through it).
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np

from .store import RunReader, open_run
from .trainer import Subscriber

__all__ = ["TensorBoardMirror", "mirror_run", "require_tensorboard"]


def require_tensorboard() -> type:
    """torch's SummaryWriter, or a one-line ImportError when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's module raises this when the tensorboard package is missing
        raise ImportError("tensorboard: the TensorBoard mirror needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter


class _Copier:
    """Copies what a run store holds, past what it copied before, into a SummaryWriter."""

    def __init__(self, run: RunReader, logdir: Path, after: int | None = None):
        """after: copy only later steps, and have TensorBoard drop the events it holds past
        that step (a resumed run records them again)."""
        purge = None if after is None else after + 1
        self.run, self.tb = run, require_tensorboard()(log_dir=str(logdir), purge_step=purge)
        self.after = after
        self.scalars_done: dict[tuple[str, int], int] = {}  # (name, level) -> last step copied
        self.tensors_done: dict[tuple[int, str], int] = {}  # (level, kind) -> last step copied

    def copy(self) -> None:
        # Per series, because a series may commit later than another one's later steps
        # (update sizes arrive in batches).
        for name, level in self.run.series():
            key = (name, level)
            rows = self.run.scalars(name, level, since=self.scalars_done.get(key, self.after))
            tag = name if level == 0 else f"level_{level}/{name}"
            for step, value in zip(rows.step.tolist(), rows.value.tolist()):
                if value == value:  # NaN: a non-finite value, stored as NULL
                    self.tb.add_scalar(tag, value, step)
            if len(rows):
                self.scalars_done[key] = int(rows.step.iloc[-1])
        stats = self.run.tensor_stats(since=min(self.tensors_done.values(), default=self.after))
        for row in stats.itertuples(index=False):
            key = (row.level, row.kind)
            if row.step <= self.tensors_done.get(key, -1 if self.after is None else self.after) or row.min != row.min or row.max != row.max:
                continue
            hist, _ = self.run.tensor(row.step, row.level, row.kind)
            n = int(hist.sum())
            edges = np.linspace(row.min, row.max, len(hist) + 1)
            self.tb.add_histogram_raw(
                f"level_{row.level}/{row.kind}", min=row.min, max=row.max, num=n, sum=row.mean * n,
                sum_squares=(row.std**2 + row.mean**2) * n, bucket_limits=edges[1:], bucket_counts=hist,
                global_step=row.step)
            self.tensors_done[key] = row.step
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()
        self.run.close()


def mirror_run(run_dir: str | os.PathLike, logdir: str | os.PathLike) -> Path:
    """Write a recorded run (finished or not) as TensorBoard events in `logdir`; returns it."""
    copier = _Copier(open_run(run_dir), Path(logdir))
    try:
        copier.copy()
    finally:
        copier.close()
    return Path(logdir)


class TensorBoardMirror(Subscriber):
    """Mirrors a run store into TensorBoard while it trains; subscribe it after the RunWriter."""

    def __init__(self, run_dir: str | os.PathLike, logdir: str | os.PathLike | None = None, every: float = 1.0,
                 resume_after: int | None = None):
        """logdir: where the events go (default run_dir/tensorboard); every: seconds between
        copies; resume_after: the step a resumed run continues from (as for RunWriter)."""
        require_tensorboard()  # fail at construction, not mid-run, when tensorboard is missing
        self.resume_after = resume_after
        self.run_dir = Path(run_dir)
        self.logdir = Path(logdir) if logdir is not None else self.run_dir / "tensorboard"
        self.every = every
        self._copier: _Copier | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def on_start(self, trainer) -> None:
        self._copier = _Copier(open_run(self.run_dir), self.logdir, self.resume_after)  # the RunWriter made the store
        self._thread = threading.Thread(target=self._follow, name="nlviz-tensorboard", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            while not self._done.wait(self.every):
                self._copier.copy()
        except BaseException as e:  # reported at the end; never stop training for a mirror
            self._error = e

    def on_end(self, trainer, status: str, error: BaseException | None = None) -> None:
        if self._thread is None:
            return
        self._done.set()
        self._thread.join()
        self._thread = None
        try:
            if self._error is None:
                self._copier.copy()  # the RunWriter, subscribed before, has committed everything
        finally:
            self._copier.close()
        if self._error is not None:  # the run itself is fine and recorded: say so, do not fail it
            warnings.warn(f"tensorboard: mirroring {self.run_dir} to {self.logdir} failed: {self._error}", stacklevel=2)
