"""The TensorBoard mirror writes exactly what the run store holds."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nlviz import Trainer, open_run
from nlviz.mirror import TensorBoardMirror, mirror_run
from nlviz.store import RunWriter

from conftest import tiny_config


def _events(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def _assert_same_as_store(acc, run):
    tags = set(acc.Tags()["scalars"])
    series = run.series()
    assert tags == {n if lv == 0 else f"level_{lv}/{n}" for n, lv in series}
    for name, level in series:
        df = run.scalars(name, level)
        got = acc.Scalars(name if level == 0 else f"level_{level}/{name}")
        assert [e.step for e in got] == df.step.tolist()
        np.testing.assert_allclose([e.value for e in got], df.value.to_numpy(), rtol=1e-6)  # events hold float32
    stats = run.tensor_stats()
    assert set(acc.Tags()["histograms"]) == {f"level_{lv}/{k}" for lv, k in zip(stats.level, stats.kind)}
    for row in stats.itertuples(index=False):
        (event,) = [e for e in acc.Histograms(f"level_{row.level}/{row.kind}") if e.step == row.step]
        hist, _ = run.tensor(row.step, row.level, row.kind)
        assert event.histogram_value.bucket == hist.tolist() and event.histogram_value.num == hist.sum()
        assert event.histogram_value.min == pytest.approx(row.min) and event.histogram_value.max == pytest.approx(row.max)


def test_the_live_mirror_holds_every_scalar_and_histogram_of_the_store(tmp_path):
    trainer = Trainer(tiny_config((1, 3), steps=60))
    trainer.subscribers += [RunWriter(tmp_path, scalars_every=2, tensors_every=10), TensorBoardMirror(tmp_path, every=0.05)]
    trainer.run()
    run = open_run(tmp_path)
    _assert_same_as_store(_events(tmp_path / "tensorboard"), run)
    assert len(run.scalars("update_norm", 2)) == 20  # a series that commits in batches arrived whole


def test_a_recorded_run_mirrors_afterwards(tmp_path):
    Trainer(tiny_config((1, 2), steps=20), [RunWriter(tmp_path / "run", scalars_every=1, tensors_every=5)]).run()
    logdir = mirror_run(tmp_path / "run", tmp_path / "tb")
    _assert_same_as_store(_events(logdir), open_run(tmp_path / "run"))


def test_a_resumed_run_replaces_the_events_after_its_checkpoint(tmp_path):
    first = Trainer(tiny_config((1, 2), steps=20))
    first.subscribers += [RunWriter(tmp_path, scalars_every=1, tensors_every=5), TensorBoardMirror(tmp_path, every=0.05)]
    first.run(steps=10)
    first.save_checkpoint(tmp_path / "ck.pt")
    first.run(steps=5)  # steps 11-15 reach the store and TensorBoard, then the process "dies"
    first.end("interrupted")
    again = Trainer.from_checkpoint(tmp_path / "ck.pt")
    again.subscribers += [RunWriter(tmp_path, scalars_every=1, tensors_every=5, resume_after=10),
                          TensorBoardMirror(tmp_path, every=0.05, resume_after=10)]
    again.run()
    acc = _events(tmp_path / "tensorboard")
    assert [e.step for e in acc.Scalars("loss")] == list(range(1, 21))  # each step once
    _assert_same_as_store(acc, open_run(tmp_path))


def test_the_command_line_mirrors_with_tensorboard(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "nlviz", "train", "--steps", "30", "--no-progress", "--device", "cpu",
                    "--scalars-every", "5", "--tensors-every", "10", "--tensorboard", "--out", str(out)], check=True)
    _assert_same_as_store(_events(out / "tensorboard"), open_run(out))
