"""The diverging rule (nlviz.diverging): a finite loss grown past factor x its early minimum is
flagged once, with the level whose surprise grew most, and the run goes on unless asked to stop.

References: the rule recomputed by hand from the losses and surprises a run's own events carry,
so the tests do not depend on how a CPU rounds the blow-up itself."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from nlviz import LevelSpec, ModelConfig, TrainConfig
from nlviz.config import ConfigError
from nlviz.diverging import EARLY_STEPS, DivergingWatch
from nlviz.store import RunWriter, list_runs, open_run
from nlviz.trainer import DivergenceError, Subscriber, Trainer


# ---------------------------------------------------------------------- the rule itself
def test_flags_the_first_crossing_once_and_names_the_level_whose_surprise_grew_most():
    watch = DivergingWatch(1e4)
    assert watch.observe(1, 2.0, [1.0, 4.0]) is None
    assert watch.observe(2, 0.5, [2.0, 2.0]) is None  # the early minimum: 0.5; surprise floors 1.0, 2.0
    assert watch.observe(3, 0.5e4, [10.0, 10.0]) is None  # exactly factor x m is not above it
    event = watch.observe(4, 0.5e4 * 1.01, [30.0, 20.0])
    assert event is not None and event.step == 4
    assert event.reference == 0.5 and event.reference_step == 2 and event.factor == 1e4
    assert event.level == 1 and event.growth == pytest.approx(30.0)  # 30 / 1 beats 20 / 2
    assert "step 4" in event.message and "level 1" in event.message and "above 10000 x" in event.message
    assert watch.observe(5, 1e9, [1e9, 1e9]) is None  # once per run


def test_the_reference_is_the_early_minimum_not_the_running_one():
    watch = DivergingWatch(1e4)
    for t in range(1, EARLY_STEPS + 1):
        assert watch.observe(t, 1.0) is None
    for t in range(EARLY_STEPS + 1, EARLY_STEPS + 50):
        assert watch.observe(t, 1e-6) is None  # far below where training began: not a reference
    assert watch.observe(EARLY_STEPS + 50, 5e3) is None  # 5e9 x the running minimum, 5e3 x the early one
    event = watch.observe(EARLY_STEPS + 51, 2e4)
    assert event is not None and event.reference == 1.0 and event.reference_step == 1
    assert event.level is None and "not captured" in event.message  # no surprise values were given


def test_off_non_finite_and_levels_without_surprise():
    off = DivergingWatch(0)
    assert all(off.observe(t, v) is None for t, v in ((1, 1.0), (2, 1e30)))
    watch = DivergingWatch(10.0)
    watch.observe(1, 1.0, [0.0, 1.0])  # level 1 not in the graph: its max |u| is 0
    assert watch.observe(2, math.inf, [1.0, 1.0]) is None  # non-finite: the trainer's DivergenceError
    event = watch.observe(3, 100.0, [1e6, 3.0])
    assert event.level == 2 and event.growth == pytest.approx(3.0)


@pytest.mark.parametrize("factor", [-1.0, 0.5, 1.0, math.inf, math.nan, True, "10"])
def test_bad_factors_are_refused_naming_the_field(factor):
    with pytest.raises(ConfigError, match="^diverging_factor: must be 0 \\(off\\) or a finite number > 1"):
        TrainConfig(diverging_factor=factor)


def test_stopping_needs_the_rule_on():
    with pytest.raises(ConfigError, match="^diverging_stop: needs the diverging rule on"):
        TrainConfig(diverging_factor=0, diverging_stop=True)


# ---------------------------------------------------------------------- in a training run
def _blowing_up(steps: int = 30, **kw) -> TrainConfig:
    """The run a user reported: learning rate 100 on levels 2 and 3 (level 2 first updates at step 8)."""
    levels = (LevelSpec(period=1), LevelSpec(period=8, lr=100.0), LevelSpec(period=64, lr=100.0))
    return TrainConfig(steps=steps, device="cpu", model=ModelConfig(levels=levels), **kw)


class _Record(Subscriber):
    def __init__(self):
        self.loss, self.surprise_max, self.flags = {}, {}, []

    def on_step(self, event):
        self.loss[event.step] = event.loss_value
        self.surprise_max[event.step] = [float(u.abs().max()) for u in event.surprise]

    def on_diverging(self, event):
        self.flags.append(event)


def _expected(rec: _Record, factor: float = 1e4) -> tuple[int, int]:
    """The rule by hand: the first step whose loss passes factor x the early minimum, and the
    level whose max |u| grew most over its early minimum."""
    for t in sorted(rec.loss):
        early = [rec.loss[s] for s in rec.loss if s <= min(t, EARLY_STEPS)]
        if rec.loss[t] > factor * min(early):
            floors = [min(rec.surprise_max[s][l] for s in rec.loss if s <= min(t, EARLY_STEPS))
                      for l in range(len(rec.surprise_max[t]))]
            growth = [now / floor for now, floor in zip(rec.surprise_max[t], floors)]
            return t, growth.index(max(growth)) + 1
    raise AssertionError("the run never passed the rule")


def test_a_blowing_up_run_is_flagged_where_the_rule_says_and_trains_on():
    rec = _Record()
    trainer = Trainer(_blowing_up(), [rec])
    result = trainer.run()
    assert result.status == "finished" and result.steps == 30  # flagged, not stopped
    assert all(math.isfinite(v) for v in rec.loss.values())  # finite all along: the old check saw nothing
    step, level = _expected(rec)
    assert len(rec.flags) == 1 and trainer.diverging is rec.flags[0]
    assert (rec.flags[0].step, rec.flags[0].level) == (step, level)
    assert rec.flags[0].loss == rec.loss[step]


def test_diverging_stop_ends_the_run_there_as_diverged(tmp_path):
    rec = _Record()
    writer = RunWriter(tmp_path / "run", scalars_every=1)
    trainer = Trainer(_blowing_up(diverging_stop=True), [rec, writer])
    with pytest.raises(DivergenceError, match="stopped there") as caught:
        trainer.run()
    step, level = _expected(rec)
    assert (caught.value.step, caught.value.level) == (step, level) and trainer.clock.t == step
    run = open_run(tmp_path / "run")
    assert run.status == "diverged" and run.diverging["step"] == step and run.last_step() == step


def test_the_store_keeps_the_flag_and_the_listing_shows_it(tmp_path):
    rec = _Record()
    Trainer(_blowing_up(), [rec, RunWriter(tmp_path / "run", scalars_every=1)]).run()
    run = open_run(tmp_path / "run")
    assert run.status == "finished"
    assert run.diverging == json.loads(json.dumps(rec.flags[0].to_dict()))
    (info,) = list_runs(tmp_path)
    assert info.diverging == rec.flags[0].message
    healthy = tmp_path / "healthy"
    Trainer(TrainConfig(steps=20, device="cpu"), [RunWriter(healthy / "run")]).run()
    assert open_run(healthy / "run").diverging is None


def test_the_early_minimum_travels_in_the_checkpoint(tmp_path):
    rec = _Record()
    first = Trainer(_blowing_up(steps=6), [rec])
    first.run()
    first.save_checkpoint(tmp_path / "ck.pt")
    again = Trainer.from_checkpoint(tmp_path / "ck.pt")
    assert again.watch.reference == min(rec.loss.values())
    assert again.watch.state_dict() == first.watch.state_dict()


def test_a_resume_keeps_a_flag_from_before_its_checkpoint_and_drops_one_from_after(tmp_path):
    out = tmp_path / "run"
    first = Trainer(_blowing_up(steps=30), [writer := RunWriter(out, scalars_every=1)])
    for _ in range(5):
        first.step()
    first.save_checkpoint(tmp_path / "before.pt")
    for _ in range(7):
        first.step()
    first.save_checkpoint(tmp_path / "after.pt")
    first.run()
    flag = first.diverging
    assert flag is not None and 5 < flag.step <= 12 and open_run(out).diverging["step"] == flag.step

    later = Trainer.from_checkpoint(tmp_path / "after.pt", [writer := RunWriter(out, scalars_every=1, resume_after=12)])
    assert later.diverging == flag  # from the checkpoint, so summary.json keeps it too
    later.step()
    writer.sync()
    assert open_run(out).diverging == flag.to_dict()
    later.end("interrupted")

    earlier = Trainer.from_checkpoint(tmp_path / "before.pt", [writer := RunWriter(out, scalars_every=1, resume_after=5)])
    assert earlier.diverging is None
    earlier.step()  # step 6: before the flag, which the store dropped with the records after step 5
    writer.sync()
    assert open_run(out).diverging is None
    earlier.run()  # the same run again, bit for bit: flagged at the same step
    assert earlier.diverging == flag and open_run(out).diverging == flag.to_dict()


def test_a_rule_without_a_sync_step_in_the_early_window_takes_the_first_loss_read():
    watch = DivergingWatch(1e4)
    assert watch.observe(200, 1.0) is None and watch.reference == 1.0 and watch.reference_step == 200
    assert watch.observe(400, 0.5) is None and watch.reference == 1.0  # past the window: not a reference
    assert watch.observe(600, 2e4).step == 600


# ---------------------------------------------------------------------- the command line
def _cli(*args: str, cwd=None):
    return subprocess.run([sys.executable, "-m", "nlviz", "train", "--no-progress", "--device", "cpu", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_warns_once_and_finishes(tmp_path):
    out = tmp_path / "run"
    done = _cli("--steps", "20", "--lrs", "1e-3,100,100", "--out", str(out))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("nlviz: warning: diverging at step")]
    assert len(warnings) == 1
    assert json.loads((out / "summary.json").read_text())["diverging"]["message"] in warnings[0]
    listing = subprocess.run([sys.executable, "-m", "nlviz", "runs", str(tmp_path)], capture_output=True, text=True)
    assert "finished (diverging)" in listing.stdout


def test_cli_stop_diverging_exits_1_as_diverged(tmp_path):
    out = tmp_path / "run"
    done = _cli("--steps", "20", "--lrs", "1e-3,100,100", "--stop-diverging", "--out", str(out))
    assert done.returncode == 1
    assert "nlviz: warning" not in done.stderr and "stopped there" in done.stderr
    assert open_run(out).status == "diverged"


@pytest.mark.parametrize("args, message", [
    (("--diverging-factor", "1"), "--diverging-factor: must be 0 (off) or a finite number > 1, got 1.0"),
    (("--diverging-factor", "0", "--stop-diverging"), "--stop-diverging: needs the diverging rule on"),
    (("--diverging-factor", "x"), "argument --diverging-factor: invalid float value: 'x'"),
])
def test_cli_refuses_bad_values_in_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    done = _cli("--steps", "5", *args, "--out", str(out))
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
