"""Live runs for the dashboard: training in a background thread, started, paused and stepped on command.

`RunRegistry.create(config)` makes a `LiveRun`: a Trainer that records into
parent/<name>/run.sqlite (a `RunWriter`), with periodic checkpoints and summary.json
written as the command line writes them (`nlviz.rundir`). Each run has one daemon thread
that does all of its training; callers (a Streamlit script, a notebook, a test) only send
commands (`start`, `pause`, `step`, `step_to_update`, `stop`) and read `state` and
`step_count`. Recorded data are read from the store with `nlviz.open_run(run.directory)`,
never from the worker, which holds nothing but its trainer.

    ready --start/step--> running --pause/target reached--> paused --start/step--> running
    running --config.steps reached--> finished      ready|running|paused --stop--> stopped
    running --non-finite loss or surprise--> diverged    --any other error--> failed

The decision to know: a run belongs to its registry, not to whoever started it. Several
callers (browser tabs) may hold the same LiveRun, dropping a reference stops nothing, and
by default one run holds a device type while it is running or paused (a paused run keeps
its model and optimizer state on the device), so another is refused with `RunBusyError`
until that one is stopped or ends. No streamlit here: the dashboard keeps one registry in
`st.cache_resource`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from .config import TrainConfig
from .device import resolve_device
from .rundir import Checkpointer, write_summary
from .store import RunWriter, run_directory
from .tasks import Task
from .trainer import DivergenceError, RunResult, Subscriber, Trainer

__all__ = ["LiveRun", "RunRegistry", "RunBusyError", "STATES"]

READY, RUNNING, PAUSED = "ready", "running", "paused"
FINISHED, STOPPED, DIVERGED, FAILED = "finished", "stopped", "diverged", "failed"
STATES = (READY, RUNNING, PAUSED, FINISHED, STOPPED, DIVERGED, FAILED)
ENDED = (FINISHED, STOPPED, DIVERGED, FAILED)
HOLDING = (RUNNING, PAUSED)  # states in which a run holds its device

# Trainer construction seeds the process-wide RNGs and then initialises the model from them:
# two runs built at once would interleave their draws and lose their seeds' models.
_BUILD_LOCK = threading.Lock()


class RunBusyError(ValueError):
    """The device type already has as many running or paused runs as the registry allows."""


class _UserStop(Exception):
    """Handed to `Trainer.end` so the store records why the run ended."""


class _Control(Subscriber):
    """The worker's hook inside `Trainer.run`, called in the worker thread only.

    A pause or stop sets `halt`; this turns it into `trainer.request_stop()` after the
    current step. Asking from the worker thread alone means no stop request is ever left
    over for the next `run` call. It also notes whether the trainer has started (the store
    exists) and has ended its subscribers (the store's final status is written, once)."""

    def __init__(self, halt: threading.Event):
        self.halt = halt
        self.started = False
        self.ended = False

    def on_start(self, trainer: Trainer) -> None:
        self.started = True

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self.halt.is_set():
            trainer.request_stop()

    def on_end(self, trainer: Trainer, status: str, error: BaseException | None = None) -> None:
        self.ended = True


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class LiveRun:
    """One training run driven by its own worker thread; made by `RunRegistry.create`.

    Commands return at once (`start`, `step`, `step_to_update`) or when the worker has
    acted on them (`pause`, `stop`; `wait=False` returns at once). A command that makes no
    sense in the current state raises ValueError saying what is allowed."""

    def __init__(self, registry: RunRegistry, name: str, directory: Path, config: TrainConfig, *,
                 task: Task | None, scalars_every: int, tensors_every: int, checkpoint_every: int,
                 writer_options: dict[str, Any]):
        writer = RunWriter(directory, scalars_every=scalars_every, tensors_every=tensors_every, **writer_options)
        self._checkpointer: Checkpointer | None = Checkpointer(writer, checkpoint_every)
        self._halt = threading.Event()
        self._control = _Control(self._halt)
        with _BUILD_LOCK:
            # _Control first: it must see the end even when the writer's on_end raises.
            trainer = Trainer(config, [self._control, writer, self._checkpointer], task=task)
        self._trainer: Trainer | None = trainer
        self.name = name
        self.directory = directory
        self.config = config
        self.total = config.steps
        self.device = trainer.device_name  # e.g. "cpu (2 threads)", "cuda (NVIDIA H100 ...)"
        self.device_type = trainer.device.type  # what the one-run-per-device rule compares
        self.created = time.time()
        self._registry = registry
        self._cond = threading.Condition()  # guards the fields below; notified on every state change
        self._state = READY
        self._error = ""
        self._target: int | None = None  # the step the worker trains to; None while idle
        self._stop_asked = False
        self._final_step = 0  # step_count once the trainer is released
        self._seconds = 0.0  # time spent inside Trainer.run, for summary.json's steps per second
        self._result: RunResult | None = None
        self._thread = threading.Thread(target=self._work, name=f"nlviz-live-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ reading
    @property
    def state(self) -> str:
        """ready | running | paused | finished | stopped | diverged | failed."""
        return self._state

    @property
    def step_count(self) -> int:
        """Steps done so far (the trainer's clock t); a plain read, safe from any thread."""
        trainer = self._trainer  # read once: the worker releases it when the run ends
        return trainer.clock.t if trainer is not None else self._final_step

    @property
    def error(self) -> str:
        """Why the run diverged or failed, in one line; "" otherwise."""
        return self._error

    @property
    def ended(self) -> bool:
        return self._state in ENDED

    def __repr__(self) -> str:
        return f"LiveRun({self.name!r}, {self._state}, step {self.step_count} of {self.total}, {self.device})"

    # ------------------------------------------------------------------ commands
    def start(self) -> None:
        """Train towards config.steps; returns at once. From ready, or paused (resumes)."""
        self._begin("start", lambda t: self.total)

    def step(self, n: int = 1) -> None:
        """Train exactly n more optimizer steps, then pause (or finish, at config.steps).
        From ready or paused; returns at once."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"step: n must be an integer >= 1, got {n!r}")
        self._begin("step", lambda t: min(t + n, self.total))

    def step_to_update(self, level: int) -> None:
        """Train up to and including the next step at which `level` (from 1) updates, then
        pause: Eq 31's clock updates level l at the multiples of its period C(l)."""
        periods = self.config.model.periods
        k = len(periods)
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= k:
            raise ValueError(f"step_to_update: level must be an integer from 1 to {k} (this run's levels), got {level!r}")
        period = periods[level - 1]

        def target(t: int) -> int:
            update = (t // period + 1) * period
            if update > self.total:
                raise ValueError(f"step_to_update: level {level} (period {period}) next updates at step {update}, "
                                 f"after this run's last step {self.total}")
            return update

        self._begin("step_to_update", target)

    def pause(self, wait: bool = True, timeout: float | None = 60.0) -> None:
        """Stop after the current step and write checkpoint.pt; the state becomes paused.
        From running. With wait, returns once paused (the checkpoint is then on disk)."""
        with self._cond:
            if self._state != RUNNING or self._stop_asked:
                raise ValueError(self._refusal("pause"))
            self._halt.set()
            if wait:
                self._wait_locked(lambda: self._state != RUNNING, timeout, "pause")

    def stop(self, wait: bool = True, timeout: float | None = 60.0) -> None:
        """End the run after the current step: checkpoint.pt, the store's status
        "interrupted" ("stopped by the user at step N"), summary.json; the thread ends.
        From ready (nothing was recorded: the empty directory is removed), running or paused.
        The checkpoint resumes with `python -m nlviz train --resume DIR`."""
        with self._cond:
            if self._state in ENDED:
                raise ValueError(self._refusal("stop"))
            self._stop_asked = True
            self._halt.set()
            self._cond.notify_all()
            if wait:
                self._wait_locked(lambda: self._state in ENDED, timeout, "stop")

    def wait(self, state_in: str | Iterable[str] = (READY, PAUSED, *ENDED), timeout: float | None = None) -> str:
        """Block until the state is one of `state_in` (default: anything but running);
        returns it. Raises TimeoutError after `timeout` seconds."""
        wanted = (state_in,) if isinstance(state_in, str) else tuple(state_in)
        unknown = [s for s in wanted if s not in STATES]
        if unknown or not wanted:
            raise ValueError(f"wait: states are {', '.join(STATES)}; got {unknown or 'none'}")
        with self._cond:
            self._wait_locked(lambda: self._state in wanted, timeout, "wait")
            return self._state

    # ------------------------------------------------------------------ command plumbing
    def _begin(self, command: str, target: Callable[[int], int]) -> None:
        # The registry's lock makes "is the device free?" and "now it is mine" one act.
        with self._registry._lock, self._cond:
            if self._state not in (READY, PAUSED) or self._stop_asked:
                raise ValueError(self._refusal(command))
            goal = target(self.step_count)  # the worker is idle: the count is not moving
            self._registry._check_free(self.device_type, exclude=self)
            self._target = goal
            self._state = RUNNING
            self._cond.notify_all()

    def _refusal(self, command: str) -> str:
        state = self._state
        if state in ENDED:
            return f"{command}: the run has ended ({state}); create a new run"
        if self._stop_asked:
            return f"{command}: the run is stopping"
        allowed = {
            "pause": {READY: "it has not started; start or step it", PAUSED: "it is paused already"},
            "start": {RUNNING: "it is running already; pause or stop it"},
        }.get(command, {RUNNING: "pause it first"})
        return f"{command}: the run is {state}; {allowed[state]}"

    def _wait_locked(self, done: Callable[[], bool], timeout: float | None, command: str) -> None:
        if not self._cond.wait_for(done, timeout):
            raise TimeoutError(f"{command}: the run is still {self._state} after {timeout:g} s")

    def _busy_message(self) -> str:
        if self._state == RUNNING:
            return f"run {self.name} is training (step {self.step_count} of {self.total})"
        return f"run {self.name} is paused at step {self.step_count} of {self.total}"

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        trainer = self._trainer
        assert trainer is not None
        try:
            state, error = self._loop(trainer), ""
        except DivergenceError as e:  # Trainer.run has recorded "diverged" and where in the store
            state, error = DIVERGED, str(e)
            self._record_end(trainer, "diverged", e)
        except BaseException as e:  # never raised into anyone's thread: the state says it
            state, error = FAILED, _one_line(e)
            self._record_end(trainer, "failed", e)
        self._release(trainer, state, error)

    def _loop(self, trainer: Trainer) -> str:
        """Serve commands until the run finishes or is stopped; returns that state."""
        checkpointer = self._checkpointer
        assert checkpointer is not None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._target is not None or self._stop_asked)
                if self._stop_asked:
                    break
                target = self._target
            if not self._halt.is_set():  # a pause that came before the first step skips it
                result = trainer.run(steps=target - trainer.clock.t)
                self._seconds += result.seconds
                self._result = result
                if result.status == "finished":  # Trainer.run has recorded "finished"
                    checkpointer.save(trainer)
                    self._summary(trainer, FINISHED)
                    return FINISHED
            if not self._stop_asked:
                checkpointer.save(trainer)  # paused: resumable from this very step
            with self._cond:
                self._target = None
                self._halt.clear()
                if not self._stop_asked:
                    self._state = PAUSED
                    self._cond.notify_all()
        if self._control.started:
            checkpointer.save(trainer)  # before the status, so an "interrupted" run can resume at once
            trainer.end("interrupted", _UserStop(f"stopped by the user at step {trainer.clock.t}"))
            self._summary(trainer, "interrupted")
        else:  # stopped before its first step: no store, nothing to keep
            _remove_if_empty(self.directory)
        return STOPPED

    def _summary(self, trainer: Trainer, status: str, error: BaseException | None = None) -> None:
        write_summary(self.directory, trainer, status, seconds=self._seconds, result=self._result, error=error)

    def _record_end(self, trainer: Trainer, status: str, error: BaseException) -> None:
        """After an exception: end the store's record if Trainer.run has not, and write the summary."""
        if not self._control.started:
            return
        try:
            if not self._control.ended:
                trainer.end(status, error)
            self._summary(trainer, status, error)
        except Exception:
            pass  # the store or disk is what failed; the first error is the one to report

    def _release(self, trainer: Trainer, state: str, error: str) -> None:
        # Drop the trainer (and the writer and checkpointer, which reference its model) so an
        # ended run frees its device memory; step_count keeps answering from _final_step.
        self._final_step = trainer.clock.t
        trainer.close()
        self._trainer = self._checkpointer = None
        with self._cond:
            self._state, self._error = state, error
            self._cond.notify_all()


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty (or gone): what is there is not ours to delete


class RunRegistry:
    """The live runs of one process, recorded under `parent`; thread-safe.

    per_device: how many runs may be running or paused on one device type at once."""

    def __init__(self, parent: str | os.PathLike = "runs", per_device: int = 1):
        if isinstance(per_device, bool) or not isinstance(per_device, int) or per_device < 1:
            raise ValueError(f"per_device: must be an integer >= 1, got {per_device!r}")
        self.parent = Path(parent)
        self.per_device = per_device
        self._lock = threading.Lock()  # taken before any run's own lock, never after
        self._runs: dict[str, LiveRun] = {}  # in creation order

    def create(self, config: TrainConfig, name: str | None = None, *, scalars_every: int = 10,
               tensors_every: int = 100, checkpoint_every: int = 500, task: Task | None = None,
               **writer_options: Any) -> LiveRun:
        """A new run in state ready, recording into parent/<name>. name: default
        app-YYYYmmdd-HHMMSS (made unique); it must be new. The store's cadences and any other
        RunWriter option pass through; checkpoint_every (0: only on pause, stop and finish)
        as on the command line; task replaces the config's task (experiments, tests; a
        resume from the command line rebuilds the config's own task).

        Raises RunBusyError while the device type is held (see `per_device`), ConfigError
        for a device that is not here, ValueError for a bad name or option; nothing is
        written then."""
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config: must be a TrainConfig, got {type(config).__name__}")
        device_type = resolve_device(config.device).type
        with self._lock:
            self._check_free(device_type)
            name, directory = self._claim(name)
        try:
            run = LiveRun(self, name, directory, config, task=task, scalars_every=scalars_every,
                          tensors_every=tensors_every, checkpoint_every=checkpoint_every, writer_options=writer_options)
        except BaseException:
            _remove_if_empty(directory)
            raise
        with self._lock:
            self._runs[name] = run
        return run

    def get(self, name: str) -> LiveRun | None:
        """The live run of that name, or None (it may still be on disk: nlviz.open_run)."""
        with self._lock:
            return self._runs.get(name)

    def runs(self) -> list[LiveRun]:
        """Every run this registry made, ended ones included, newest first."""
        with self._lock:
            return list(reversed(self._runs.values()))

    def active(self, device_type: str) -> LiveRun | None:
        """The newest run running or paused on that device type ("cpu", "cuda", "mps"), or None."""
        with self._lock:
            holders = self._holders(device_type)
        return holders[-1] if holders else None

    def stop_all(self, timeout: float | None = 60.0) -> list[str]:
        """Stop every run that has not ended (as `LiveRun.stop`); returns their names."""
        stopped = []
        for run in self.runs():
            try:
                run.stop(timeout=timeout)
                stopped.append(run.name)
            except ValueError:
                pass  # it ended on its own meanwhile
        return stopped

    def _holders(self, device_type: str, exclude: LiveRun | None = None) -> list[LiveRun]:
        # A run's state is read without its lock (one attribute read): taking run locks here
        # could deadlock against a command that holds its run's lock and waits for ours.
        return [r for r in self._runs.values()
                if r is not exclude and r.device_type == device_type and r._state in HOLDING]

    def _check_free(self, device_type: str, exclude: LiveRun | None = None) -> None:
        holders = self._holders(device_type, exclude)
        if len(holders) >= self.per_device:
            held = "; ".join(r._busy_message() for r in holders)
            raise RunBusyError(f"{device_type} is busy: {held}; stop it, or let it finish, first")

    def _claim(self, name: str | None) -> tuple[str, Path]:
        """Pick the name and create its directory (creating it is what claims it)."""
        if name is not None:
            directory = run_directory(self.parent, name)
            if name in self._runs or directory.exists():
                raise ValueError(f"name: {directory} already exists; choose another name")
            directory.mkdir(parents=True)
            return name, directory
        base = time.strftime("app-%Y%m%d-%H%M%S")
        for i in range(1, 1000):
            candidate = base if i == 1 else f"{base}-{i}"
            directory = run_directory(self.parent, candidate)
            if candidate in self._runs:
                continue
            try:
                directory.mkdir(parents=True)
            except FileExistsError:
                continue
            return candidate, directory
        raise ValueError(f"name: {base} and 998 variants of it are taken in {self.parent}; give a name")
