"""The command line: one-line errors with exit status 2 and no files; a real run writes its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import wait_for

BAD_ARGS = [
    (["--levels", "0,8"], "--levels"),
    (["--levels", "1.5"], "--levels"),
    (["--levels", ""], "--levels"),
    (["--steps", "0"], "--steps"),
    (["--lrs", "0"], "--lrs"),
    (["--lrs", "nan"], "--lrs"),
    (["--lrs", "1e-3,2e-3"], "--lrs"),
    (["--task", "imagenet"], "--task"),
    (["--optimizers", "rmsprop"], "--optimizers"),
    (["--variant", "diagonal"], "--variant"),
    (["--device", "tpu"], "--device"),
    (["--task-option", "dim=0"], "--task-option dim"),
    (["--task-option", "colour=red"], "--task-option"),
    (["--memory-every", "15"], "--memory-every"),
    (["--memory-every", "0"], "--memory-every"),
    (["--scalars-every", "0"], "--scalars-every"),
    (["--threads", "-1"], "--threads"),
    (["--autocast", "fp16"], "--autocast"),
]


def _nlviz(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "nlviz", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


@pytest.mark.parametrize("args,option", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, args, option):
    out = tmp_path / "run"
    proc = _nlviz("train", "--out", str(out), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert option in lines[0]
    assert not out.exists()


def test_cuda_without_cuda_is_an_error(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = _nlviz("train", "--device", "cuda", "--out", str(tmp_path / "r"), env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "nlviz: error: --device: cuda was requested but CUDA is not available here; use auto or cpu"
    assert not (tmp_path / "r").exists()


def test_help_lists_the_train_command():
    proc = _nlviz("--help")
    assert proc.returncode == 0 and "train" in proc.stdout


def test_a_run_writes_checkpoint_and_summary_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "run"
    proc = _nlviz("train", "--task", "digits", "--levels", "1,4", "--optimizers", "adam,dgd", "--lrs", "1e-3,1e-4",
                  "--steps", "40", "--device", "cpu", "--no-progress", "--out", str(out),
                  "--task-option", "steps_per_task=10")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps_done"] == 40
    assert summary["level_updates"] == [40, 10]
    assert summary["config"]["model"]["levels"][1]["optimizer"] == "dgd"
    assert 0.0 <= summary["metrics"]["acc_mean_seen"] <= 1.0
    assert summary["config"]["autocast"] == "none"
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["clock"]["t"] == 40
    again = _nlviz("train", "--steps", "5", "--out", str(out))
    assert again.returncode == 2 and "--out" in again.stderr


def test_autocast_bf16_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    proc = _nlviz("train", "--steps", "20", "--device", "cpu", "--no-progress", "--autocast", "bf16",
                  "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["autocast"] == "bf16" and summary["status"] == "finished"


def test_ctrl_c_finishes_the_step_and_leaves_a_checkpoint_that_resumes(tmp_path):
    import signal

    from nlviz import Trainer, open_run
    from nlviz.store import RunStoreError

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nlviz", "train", "--steps", "1000000", "--no-progress",
                             "--device", "cpu", "--out", str(out)], stderr=subprocess.PIPE, text=True)

    def trained_a_little():
        try:
            run = open_run(out)
        except RunStoreError:  # no store yet
            return False
        try:
            return run.last_step() > 0
        finally:
            run.close()

    wait_for(trained_a_little, "the run recording its first steps", proc=proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted after step" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps_done"] > 0
    resumed = Trainer.from_checkpoint(out / "checkpoint.pt")
    assert resumed.clock.t == summary["steps_done"]
    straight = Trainer(resumed.config)  # the same steps, uninterrupted: the checkpoint is a whole step
    straight.run(steps=summary["steps_done"])
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_an_out_path_that_cannot_be_created_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _nlviz("train", "--out", str(blocker / "run"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("nlviz: error: --out:") and len(proc.stderr.strip().splitlines()) == 1
