"""The dashboard's worker: runs train in their own process, pause and step exactly, stop
resumably, refuse a busy device, and record everything in the store like the CLI does.

An injected task travels to the training process by pickle, so its class lives at the top
level of a test module (the child imports it from there: it inherits the parent's sys.path)."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from nlviz import LevelClock, Trainer, open_run
from nlviz.config import ConfigError
from nlviz.live import LiveRun, RunBusyError, RunRegistry
from nlviz.store import RunStoreError, run_directory
from nlviz.tasks import MultiscaleTask

from conftest import tiny_config, wait_for
from test_trainer import _PoisonedTask

LONG = 10**6  # steps of a run that is still running whenever a test looks
TIMEOUT = 120  # seconds; generous, the test machine is small and shared


@pytest.fixture
def registry(tmp_path):
    reg = RunRegistry(tmp_path / "runs")
    yield reg
    reg.stop_all()  # no worker outlives its test


def _until(condition, timeout=TIMEOUT):
    wait_for(condition, "the run reaching the state the test waits for", timeout)


def _updates(df):
    return [tuple(r) for r in df[["step", "level"]].values.tolist()]


def _gone(pid):
    """The process has exited (a zombie waiting for a parent that does not reap counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_started_run_finishes_and_the_store_has_every_step(registry):
    periods = (1, 2, 3)
    run = registry.create(tiny_config(periods, steps=40), scalars_every=1, tensors_every=10, sample_rows=2)
    assert run.state == "ready" and run.step_count == 0 and run.total == 40 and run.device == "cpu (1 thread)"
    run.start()
    assert run.wait("finished", timeout=TIMEOUT) == "finished"
    assert run.step_count == 40 and run.error == ""
    assert run._process.exitcode == 0  # an ended run's process has exited: its model (device memory) is free
    store = open_run(run.directory)
    assert store.status == "finished" and store.last_step() == 40
    assert store.scalars("loss").step.tolist() == list(range(1, 41))
    assert _updates(store.level_updates()) == [(t, l + 1) for t, l in LevelClock(periods).updates_between(1, 40)]
    assert store.tensor(10, 1, "surprise")[1].shape[0] == 2  # a RunWriter option passed through
    summary = json.loads((run.directory / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps_done"] == 40 and summary["level_updates"] == [40, 20, 13]
    assert torch.load(run.directory / "checkpoint.pt", weights_only=True)["clock"]["t"] == 40


@pytest.mark.parametrize("threads", [None, 2])
def test_run_device_says_beforehand_what_the_run_will_report(registry, threads):
    """The home page describes the device from run_device, the live page from the run itself:
    one sentence for both, whatever this process's own torch thread count is."""
    from nlviz.live import CPU_THREADS, run_device

    run = registry.create(tiny_config(steps=5), threads=threads)
    assert run.device == run_device("cpu", threads=threads)
    assert run_device("cpu") == f"cpu ({CPU_THREADS} thread)" and run_device("cpu", threads=2) == "cpu (2 threads)"
    auto = registry.create(tiny_config(steps=5, device="auto"), threads=threads)
    assert auto.device == run_device("auto", threads=threads)
    with pytest.raises(ConfigError, match="^device: "):
        run_device("tpu")


def test_pause_holds_the_step_and_step_runs_exactly_n_more(registry):
    run = registry.create(tiny_config(steps=LONG), scalars_every=1)
    run.start()
    _until(lambda: run.step_count >= 3)
    run.pause()
    paused_at = run.step_count
    assert run.state == "paused"
    assert torch.load(run.directory / "checkpoint.pt", weights_only=True)["clock"]["t"] == paused_at
    assert open_run(run.directory).last_step() == paused_at  # the checkpoint waited for the store
    assert run.step_count == paused_at and run.state == "paused"
    run.step(3)
    assert run.wait("paused", timeout=TIMEOUT) == "paused"
    assert run.step_count == paused_at + 3
    store = open_run(run.directory)
    assert store.scalars("loss").step.tolist() == list(range(1, paused_at + 4))
    run.step()
    run.wait("paused", timeout=TIMEOUT)
    assert run.step_count == paused_at + 4 and open_run(run.directory).last_step() == paused_at + 4


@pytest.mark.parametrize("first", [0, 5, 7])
@pytest.mark.parametrize("level", [1, 2, 3])
def test_step_to_update_lands_on_the_levels_next_update(registry, level, first):
    periods = (1, 4, 7)
    run = registry.create(tiny_config(periods, steps=30), scalars_every=1)
    if first:
        run.step(first)
        run.wait("paused", timeout=TIMEOUT)
    run.step_to_update(level)
    assert run.wait("paused", timeout=TIMEOUT) == "paused"
    period = periods[level - 1]
    expected = (first // period + 1) * period
    assert run.step_count == expected
    updates = _updates(open_run(run.directory).level_updates())
    assert updates == [(t, l + 1) for t, l in LevelClock(periods).updates_between(1, expected)]
    assert (expected, level) in updates and max(t for t, _ in updates) == expected


def test_stop_records_interrupted_and_the_checkpoint_resumes_from_the_command_line(registry):
    config = tiny_config((1, 2), steps=40)
    # The reference below trains here: as many threads as here give the same bits.
    run = registry.create(config, scalars_every=1, threads=torch.get_num_threads())
    run.step(17)
    run.wait("paused", timeout=TIMEOUT)
    run.stop()
    # The store's word for a stopped run, and its line: the live page and the Runs page agree.
    assert run.state == "interrupted" and run.step_count == 17 and run.error == ""
    assert run.message == "stopped by the user at step 17"
    assert run._process.exitcode == 0
    store = open_run(run.directory)
    assert store.status == "interrupted" and store.meta["message"] == "stopped by the user at step 17"
    summary = json.loads((run.directory / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps_done"] == 17

    resumed = Trainer.from_checkpoint(run.directory / "checkpoint.pt")
    straight = Trainer(config)  # the same 17 steps, uninterrupted: the checkpoint is a whole step
    straight.run(steps=17)
    assert resumed.clock.t == 17
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)

    proc = subprocess.run([sys.executable, "-m", "nlviz", "train", "--no-progress", "--resume", str(run.directory)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    store = open_run(run.directory)
    assert store.status == "finished" and store.scalars("loss").step.tolist() == list(range(1, 41))
    assert not store.level_updates().duplicated().any()


def test_stopping_a_run_that_never_started_leaves_nothing(registry):
    run = registry.create(tiny_config())
    assert run.directory.is_dir()
    run.stop()
    assert run.state == "interrupted" and not run.directory.exists()
    assert run.message == "stopped by the user before its first step"


def test_a_device_holds_one_run_until_it_is_stopped_and_ended_runs_do_not_block(registry):
    first = registry.create(tiny_config(steps=LONG))
    first.step(2)
    first.wait("paused", timeout=TIMEOUT)
    assert registry.active("cpu") is first and registry.active("cuda") is None
    with pytest.raises(RunBusyError, match=rf"^cpu is busy: run {first.name} is paused at step 2 of {LONG}; stop it"):
        registry.create(tiny_config())
    first.start()
    with pytest.raises(RunBusyError, match=rf"^cpu is busy: run {first.name} is training \(step \d+ of {LONG}\)"):
        registry.create(tiny_config())
    first.stop()
    assert registry.active("cpu") is None

    second = registry.create(tiny_config(steps=5))
    third = registry.create(tiny_config(steps=5))  # ready runs do not hold the device
    second.step(2)  # paused, it holds the device for as long as the checks take (a running one could finish first)
    second.wait("paused", timeout=TIMEOUT)
    for command in (third.start, third.step, lambda: third.step_to_update(1)):
        with pytest.raises(RunBusyError, match=rf"^cpu is busy: run {second.name} is paused at step 2 of 5"):
            command()
        assert third.state == "ready"
    second.start()
    second.wait("finished", timeout=TIMEOUT)
    third.start()  # a finished run does not hold it
    assert third.wait(timeout=TIMEOUT) == "finished"
    assert isinstance(RunBusyError("x"), ValueError)


def test_per_device_allows_that_many_runs_at_once(tmp_path):
    registry = RunRegistry(tmp_path, per_device=2)
    try:
        a, b = registry.create(tiny_config(steps=50)), registry.create(tiny_config(steps=50))
        for run in (a, b):
            run.step(1)
        for run in (a, b):
            assert run.wait(timeout=TIMEOUT) == "paused"
        with pytest.raises(RunBusyError, match=rf"run {a.name} is paused at step 1 of 50; run {b.name} is paused"):
            registry.create(tiny_config())
    finally:
        registry.stop_all()


def test_nice_lowers_the_training_process_priority_and_its_threads(tmp_path):
    registry = RunRegistry(tmp_path, nice=7)
    try:
        run = registry.create(tiny_config(steps=10**6), scalars_every=1)
        run.start()
        _until(lambda: run.step_count > 5)
        base = os.getpriority(os.PRIO_PROCESS, 0)
        threads = list((Path("/proc") / str(run.pid) / "task").iterdir())  # the writer's thread among them
        assert len(threads) > 1
        for tid in threads:
            assert os.getpriority(os.PRIO_PROCESS, int(tid.name)) == min(base + 7, 19)
        run.stop()
    finally:
        registry.stop_all()


class _BrokenTask(MultiscaleTask):
    def batch(self, t, batch_size):
        if t == 4:
            raise RuntimeError("no batch at step 4\nsecond line")
        return super().batch(t, batch_size)


def test_a_diverged_run_says_where_and_keeps_its_data(registry):
    config = tiny_config((1, 2), steps=20, norm=False)
    run = registry.create(config, scalars_every=1, task=_PoisonedTask(config.task_options, "cpu", 0))
    run.start()
    assert run.wait(("finished", "diverged", "failed"), timeout=TIMEOUT) == "diverged"
    assert "non-finite at step 5" in run.error and run.step_count == 5
    store = open_run(run.directory)
    assert store.status == "diverged" and store.meta["diverged_step"] == 5 and store.meta["message"] == run.error
    assert store.scalars("loss").step.tolist() == [1, 2, 3, 4, 5]
    summary = json.loads((run.directory / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == 5
    assert not (run.directory / "checkpoint.pt").exists()  # never a checkpoint of a non-finite state


def test_an_error_in_training_ends_the_run_failed_and_is_not_raised(registry):
    config = tiny_config(steps=20)
    run = registry.create(config, scalars_every=1, task=_BrokenTask(config.task_options, "cpu", 0))
    run.start()
    assert run.wait(("finished", "failed"), timeout=TIMEOUT) == "failed"
    assert run.error == "RuntimeError: no batch at step 4" and run.step_count == 4  # the clock ticked first
    store = open_run(run.directory)
    assert store.status == "failed" and "no batch at step 4" in store.meta["message"]
    assert store.scalars("loss").step.tolist() == [1, 2, 3]


def test_commands_that_make_no_sense_raise_value_errors_saying_what_is_allowed(registry, tmp_path):
    run = registry.create(tiny_config((1, 4, 7), steps=10))
    with pytest.raises(ValueError, match=r"^pause: the run is ready; it has not started; start or step it$"):
        run.pause()
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"^step: n must be an integer >= 1, got {re.escape(repr(n))}$"):
            run.step(n)
    for level in (0, 4, "1"):
        with pytest.raises(ValueError, match=r"^step_to_update: level must be an integer from 1 to 3 \(this run's levels\)"):
            run.step_to_update(level)
    run.step(8)
    run.wait("paused", timeout=TIMEOUT)
    with pytest.raises(ValueError, match=r"^step_to_update: level 3 \(period 7\) next updates at step 14, after this run's last step 10$"):
        run.step_to_update(3)
    with pytest.raises(ValueError, match=r"^pause: the run is paused; it is paused already$"):
        run.pause()
    with pytest.raises(ValueError, match=r"^wait: states are ready, running, "):
        run.wait("sleeping")
    with pytest.raises(TimeoutError, match=r"^wait: the run is still paused after 0.01 s$"):
        run.wait("finished", timeout=0.01)
    run.step(5)  # two steps are left: it finishes
    assert run.wait(timeout=TIMEOUT) == "finished" and run.step_count == 10
    for command, call in (("start", run.start), ("step", run.step), ("pause", run.pause), ("stop", run.stop),
                          ("step_to_update", lambda: run.step_to_update(1))):
        with pytest.raises(ValueError, match=rf"^{command}: the run has ended \(finished\); create a new run$"):
            call()

    busy = registry.create(tiny_config(steps=LONG))
    busy.start()
    for command, call, allowed in (("step", busy.step, "pause it first"),
                                   ("step_to_update", lambda: busy.step_to_update(1), "pause it first"),
                                   ("start", busy.start, "it is running already; pause or stop it")):
        with pytest.raises(ValueError, match=rf"^{command}: the run is running; {allowed}$"):
            call()
    busy.stop()

    with pytest.raises(RunStoreError, match="^name: "):
        registry.create(tiny_config(), name="../escape")
    with pytest.raises(ValueError, match=rf"^name: .*{busy.name} already exists; choose another name$"):
        registry.create(tiny_config(), name=busy.name)
    with pytest.raises(RunStoreError, match="^scalars_every: "):
        registry.create(tiny_config(), name="bad-cadence", scalars_every=0)
    with pytest.raises(ValueError, match="^checkpoint_every: "):
        registry.create(tiny_config(), name="bad-checkpoints", checkpoint_every=-1)
    with pytest.raises(ValueError, match=r"^threads: must be an integer >= 1 \(or None for the default\), got 0$"):
        registry.create(tiny_config(), name="bad-threads", threads=0)
    for bad in ("bad-cadence", "bad-checkpoints", "bad-threads"):
        assert not (registry.parent / bad).exists()
    with pytest.raises(ValueError, match="^config: must be a TrainConfig, got dict$"):
        registry.create(tiny_config().to_dict())
    with pytest.raises(ValueError, match="^per_device: must be an integer >= 1, got 0$"):
        RunRegistry(tmp_path, per_device=0)
    for bad in (-1, 20, True, 2.5):
        with pytest.raises(ValueError, match="^nice: must be an integer from 0 to 19, got "):
            RunRegistry(tmp_path, nice=bad)


def test_two_threads_polling_step_count_see_it_grow(registry):
    run = registry.create(tiny_config(steps=LONG))
    run.start()
    seen: dict[int, list[int]] = {0: [], 1: []}

    def poll(i):
        deadline = time.monotonic() + TIMEOUT
        while len(set(seen[i])) < 4 and time.monotonic() < deadline:
            seen[i].append(run.step_count)
            time.sleep(0.01)

    threads = [threading.Thread(target=poll, args=(i,)) for i in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.stop()
    for counts in seen.values():
        assert len(set(counts)) >= 4 and counts == sorted(counts)
    assert run.step_count >= max(max(c) for c in seen.values())


def test_runs_belong_to_the_registry_not_to_their_callers(registry):
    run = registry.create(tiny_config(steps=LONG))
    name = run.name
    assert re.fullmatch(r"app-\d{8}-\d{6}(-\d+)?", name) and run.directory == run_directory(registry.parent, name)
    run.start()
    del run
    gc.collect()
    again = registry.get(name)  # another caller (a second browser tab) finds the same run
    assert isinstance(again, LiveRun) and again.state == "running"
    before = again.step_count
    _until(lambda: again.step_count > before)
    again.stop()
    other = registry.create(tiny_config(steps=5))  # created within the same second: a name of its own
    assert other.name != name and [r.name for r in registry.runs()] == [other.name, name]
    assert registry.get("no-such-run") is None


class _UnbuildableTask(MultiscaleTask):
    def __setstate__(self, state):
        raise RuntimeError("this task cannot be rebuilt in the training process")


def test_what_building_the_run_raises_is_raised_by_create_and_nothing_is_written(registry):
    config = tiny_config()
    with pytest.raises(RuntimeError, match="^this task cannot be rebuilt in the training process$"):
        registry.create(config, name="unbuildable", task=_UnbuildableTask(config.task_options, "cpu", 0))

    class Local(MultiscaleTask):  # a class inside a function cannot travel by pickle
        pass

    with pytest.raises(ValueError, match=r"^task: must pickle, to travel to the run's own process \(.*Local"):
        registry.create(config, name="local-task", task=Local(config.task_options, "cpu", 0))
    assert not (registry.parent / "unbuildable").exists() and not (registry.parent / "local-task").exists()
    assert registry.runs() == []


def test_a_killed_training_process_ends_the_run_failed_and_frees_the_device(registry):
    run = registry.create(tiny_config(steps=LONG), scalars_every=1)
    run.start()
    _until(lambda: run.step_count >= 3)
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait(timeout=TIMEOUT) == "failed"
    assert re.fullmatch(rf"the training process died \(exit code -{int(signal.SIGKILL)}\) at step {run.step_count}", run.error)
    assert run.step_count >= 3 and _gone(run.pid)
    assert registry.active("cpu") is None
    with pytest.raises(ValueError, match=r"^start: the run has ended \(failed\); create a new run$"):
        run.start()
    assert open_run(run.directory).meta["writer_pid"] == run.pid  # the store reads "interrupted" once its heartbeat is stale
    other = registry.create(tiny_config(steps=5))
    other.start()
    assert other.wait(timeout=TIMEOUT) == "finished"


def test_step_count_grows_while_running_without_asking_the_process(registry):
    run = registry.create(tiny_config(steps=LONG))
    run.start()
    commands = run._commands

    class NoCommands:
        def __getattr__(self, name):
            raise AssertionError(f"reading step_count used the command pipe ({name})")

    run._commands = NoCommands()  # a round trip would have to ask through it
    try:
        seen = []
        deadline = time.monotonic() + TIMEOUT
        while len(set(seen)) < 5 and time.monotonic() < deadline:
            seen.append(run.step_count)
            time.sleep(0.005)
    finally:
        run._commands = commands
    run.stop()
    assert len(set(seen)) >= 5 and seen == sorted(seen) and run.state == "interrupted"


def test_stop_all_leaves_no_training_process(tmp_path):
    registry = RunRegistry(tmp_path, per_device=2)
    running, paused, ready = (registry.create(tiny_config(steps=LONG)) for _ in range(3))
    running.start()
    paused.step(2)
    paused.wait("paused", timeout=TIMEOUT)
    runs = (running, paused, ready)
    pids = {run.pid for run in runs}
    assert pids <= {p.pid for p in multiprocessing.active_children()}  # one process per run, ready ones too
    assert sorted(registry.stop_all()) == sorted(run.name for run in runs)
    assert not pids & {p.pid for p in multiprocessing.active_children()}
    assert all(_gone(pid) for pid in pids) and all(run._process.exitcode == 0 for run in runs)


_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from nlviz.live import RunRegistry

if __name__ == "__main__":
    run = RunRegistry(sys.argv[1]).create(tiny_config(steps=10**6), name="left-running", scalars_every=1)
    run.start()
    while run.step_count < 5:
        time.sleep(0.01)
    print(run.pid, flush=True)
    if sys.argv[2] == "hang":
        time.sleep(600)
"""


def _assert_stopped_cleanly(directory):
    summary = json.loads((directory / "summary.json").read_text())
    steps = summary["steps_done"]
    assert summary["status"] == "interrupted" and steps >= 5
    store = open_run(directory)
    assert store.status == "interrupted" and store.last_step() == steps
    assert store.meta["message"] == f"stopped when the process that started it exited at step {steps}"
    assert torch.load(directory / "checkpoint.pt", weights_only=True)["clock"]["t"] == steps  # it resumes


@pytest.mark.parametrize("parent", ["exits", "is killed"])
def test_a_run_stops_cleanly_when_the_process_that_started_it_ends(tmp_path, parent):
    """No training process outlives the server: at exit the registry stops its runs; a run
    whose parent is killed (no exit handlers) reads the end of its command pipe and stops."""
    script = _SCRIPT.format(tests=str(Path(__file__).parent))
    mode = "exit" if parent == "exits" else "hang"
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), mode], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        if mode == "hang":
            proc.kill()
        assert proc.wait(TIMEOUT) == (0 if mode == "exit" else -signal.SIGKILL)
    finally:
        proc.kill()
        proc.stdout.close()
    _until(lambda: _gone(pid))
    _assert_stopped_cleanly(tmp_path / "left-running")
