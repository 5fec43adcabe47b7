"""Live runs for the dashboard: training in a process of its own, started, paused and stepped on command.

`RunRegistry.create(config)` makes a `LiveRun`: a Trainer that records into
parent/<name>/run.sqlite (a `RunWriter`), with periodic checkpoints and summary.json
written as the command line writes them (`nlviz.rundir`). Each run has one training
process, which owns its trainer, writer and checkpointer; callers (a Streamlit script, a
notebook, a test) only send commands (`start`, `pause`, `step`, `step_to_update`, `stop`)
and read `state`, `step_count` and `message`. Recorded data are read from the store with
`nlviz.open_run(run.directory)`, never from the worker.

    ready --start/step--> running --pause/target reached--> paused --start/step--> running
    running --config.steps reached--> finished    ready|running|paused --stop--> interrupted
    running --non-finite loss or surprise (or diverging, with diverging_stop)--> diverged
    running --any other error--> failed
    (the training process killed, or crashed) --> failed

A run's ended states are the run store's statuses, word for word (`RunReader.status`),
so the live page and every other reader name the same run the same way; `message` is the
store's line for it ("stopped by the user at step N", where it diverged, what failed).

The decision to know: a run trains in a process of its own, so the page and the run no
longer share a GIL. In a thread of the Streamlit server, every refresh of the live page
(plotly figures: pure Python) held training up, and training held up the page. The parent
keeps the cheap parts (names, the one-run-per-device rule, the state machine); commands go
down a pipe, and the child's state comes back up another, read by one listener thread per
run; `step_count` is a shared integer the child sets after every step, read without asking.
Processes come from a forkserver that has imported torch and nlviz once (spawn where there
is none), never from a fork of the server, which has threads (and perhaps CUDA). Before it
runs, each such process re-runs the main script of the process that created it, as
`__mp_main__` (multiprocessing's preparation of a spawned child; under `streamlit run` that
is the dashboard's entry point). A script that creates runs therefore keeps its work under
the usual `if __name__ == "__main__":` guard, as app/streamlit_app.py does.

A run belongs to its registry, not to whoever started it. Several callers (browser tabs)
may hold the same LiveRun, dropping a reference stops nothing, and by default one run holds
a device type while it is running or paused (a paused run keeps its model and optimizer
state on the device), so another is refused with `RunBusyError` until that one is stopped
or ends. At interpreter exit every run is stopped (checkpoint, "interrupted"), and a process
still there after EXIT_TIMEOUT_S is terminated; a run whose parent is killed stops itself at
its next step. No streamlit here: the dashboard keeps one registry in `st.cache_resource`.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import pickle
import signal
import threading
import time
import weakref
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .config import TrainConfig
from .device import describe_device, resolve_device
from .rundir import Checkpointer, write_summary
from .store import RunWriter, run_directory
from .tasks import Task
from .trainer import DivergenceError, RunResult, Subscriber, Trainer

__all__ = ["LiveRun", "RunRegistry", "RunBusyError", "STATES", "run_device"]

READY, RUNNING, PAUSED = "ready", "running", "paused"
FINISHED, INTERRUPTED, DIVERGED, FAILED = "finished", "interrupted", "diverged", "failed"  # the store's statuses
STATES = (READY, RUNNING, PAUSED, FINISHED, INTERRUPTED, DIVERGED, FAILED)
ENDED = (FINISHED, INTERRUPTED, DIVERGED, FAILED)
HOLDING = (RUNNING, PAUSED)  # states in which a run holds its device
CPU_THREADS = 1  # torch's intra-op threads in a CPU run's process unless create(threads=...) says otherwise

BUILD_TIMEOUT_S = 120.0  # create waits this long for the child's trainer (the first run also starts the forkserver)
EXIT_TIMEOUT_S = 5.0  # how long a process that has reported its end, or runs asked to stop at exit, get to exit

# Process.start and Process.join each read the exit status of every child that has ended;
# two threads reading one at once would lose it (the exit code a killed run reports).
_PROCESS_LOCK = threading.Lock()
_CONTEXT: Any = None
_RUNS: weakref.WeakSet[LiveRun] = weakref.WeakSet()  # every run of this process, for the exit handler


def _context() -> Any:
    """forkserver where there is one (Linux), else spawn; never fork. Called under _PROCESS_LOCK."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _CONTEXT = multiprocessing.get_context("forkserver")
            # The server imports these once, and every run is a fork of it: no imports per run.
            # torch.optim imports torch._dynamo on the first optimizer built, 1.5 s of a run's start.
            # Not "__main__": the forkserver never receives its path (CPython 3.11), and where it
            # does, it would run the creating script (the dashboard's page) inside the server.
            _CONTEXT.set_forkserver_preload([__name__, "torch._dynamo"])
        else:
            _CONTEXT = multiprocessing.get_context("spawn")
    return _CONTEXT


class RunBusyError(ValueError):
    """The device type already has as many running or paused runs as the registry allows."""


class _UserStop(Exception):
    """Handed to `Trainer.end` so the store records why the run ended."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


# ---------------------------------------------------------------------- the training process
# Commands, parent -> child: ("run", target step), ("pause",), ("stop",).
# Reports, child -> parent: ("built", device name, device type) or ("error", exception), then
# ("paused",) any number of times, then ("ended", state, the store's message line).


def _send(conn: Connection, message: tuple) -> None:
    try:
        conn.send(message)
    except OSError:
        pass  # the other side has gone; its end of the other pipe says so


class _Control(Subscriber):
    """The child's hook inside `Trainer.run`: sets the shared step count after every step,
    and turns a command that has arrived (pause or stop: nothing else is sent while it
    runs) into `trainer.request_stop()`, leaving the command for the loop to read. It also
    notes whether the trainer has started (the store exists) and has ended its subscribers
    (the store's final status is written, once)."""

    def __init__(self, commands: Connection, steps: Any):
        self.commands = commands
        self.steps = steps
        self.started = False
        self.ended = False

    def on_start(self, trainer: Trainer) -> None:
        self.started = True

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        self.steps.value = step
        if self.commands.poll():  # also true once the parent has gone (end of file)
            trainer.request_stop()

    def on_end(self, trainer: Trainer, status: str, error: BaseException | None = None) -> None:
        self.ended = True


class _Worker:
    """A run inside its training process: the trainer and its subscribers, and the command loop."""

    def __init__(self, directory: Path, config: TrainConfig, task: Task | None, checkpoint_every: int,
                 writer_options: dict[str, Any], commands: Connection, states: Connection, steps: Any):
        writer = RunWriter(directory, **writer_options)
        self.checkpointer = Checkpointer(writer, checkpoint_every)
        self.control = _Control(commands, steps)
        # _Control first: it must see the end even when the writer's on_end raises.
        self.trainer = Trainer(config, [self.control, writer, self.checkpointer], task=task)
        self.directory = directory
        self.commands, self.states, self.steps = commands, states, steps
        self.seconds = 0.0  # time spent inside Trainer.run, for summary.json's steps per second
        self.result: RunResult | None = None

    def serve(self) -> tuple[str, str]:
        """Serve commands until the run ends; returns its state and message line."""
        trainer = self.trainer
        try:
            state, message = self._loop()
        except DivergenceError as e:  # Trainer.run has recorded "diverged" and where in the store
            state, message = DIVERGED, str(e)
            self._record_end("diverged", e)
        except BaseException as e:  # the state says it; the parent raises nothing
            state, message = FAILED, _one_line(e)
            self._record_end("failed", e)
        self.steps.value = trainer.clock.t  # a step that failed midway has ticked the clock already
        trainer.close()
        return state, message

    def _receive(self) -> str | int:
        """The next command: "pause", "stop", or the step to train to; "gone" once the parent has."""
        try:
            kind, *args = self.commands.recv()
        except (EOFError, OSError):
            return "gone"
        return args[0] if kind == "run" else kind

    def _halt(self) -> str | None:
        """Read the commands that came while training: "stop" or "gone" if there is one, else
        "pause" if any pause came, else None."""
        halt = None
        while self.commands.poll():
            command = self._receive()
            if command in ("stop", "gone"):
                return command
            halt = "pause"  # nothing but pause and stop is sent while training
        return halt

    def _loop(self) -> tuple[str, str]:
        """Serve commands until the run finishes or is stopped; returns that state and its message."""
        trainer, checkpointer = self.trainer, self.checkpointer
        while True:
            command = self._receive()
            if command == "pause":
                continue  # it came after the run had paused at its target: nothing to do
            if command in ("stop", "gone"):
                halt = command
                break
            halt = self._halt()  # a pause that came before the first step skips it
            if halt is None:
                result = trainer.run(steps=command - trainer.clock.t)
                self.seconds += result.seconds
                self.result = result
                if result.status == "finished":  # Trainer.run has recorded "finished"
                    checkpointer.save(trainer)
                    self._summary(FINISHED)
                    return FINISHED, ""
                halt = self._halt()
            if halt in ("stop", "gone"):
                break
            checkpointer.save(trainer)  # paused: resumable from this very step
            self.steps.value = trainer.clock.t
            _send(self.states, ("paused",))
        why = "stopped by the user" if halt == "stop" else "stopped when the process that started it exited"
        if not self.control.started:  # stopped before its first step: no store, nothing to keep
            _remove_if_empty(self.directory)
            return INTERRUPTED, f"{why} before its first step"
        checkpointer.save(trainer)  # before the status, so an "interrupted" run can resume at once
        message = f"{why} at step {trainer.clock.t}"
        trainer.end(INTERRUPTED, _UserStop(message))
        self._summary(INTERRUPTED)
        return INTERRUPTED, message

    def _summary(self, status: str, error: BaseException | None = None) -> None:
        write_summary(self.directory, self.trainer, status, seconds=self.seconds, result=self.result, error=error)

    def _record_end(self, status: str, error: BaseException) -> None:
        """After an exception: end the store's record if Trainer.run has not, and write the summary."""
        if not self.control.started:
            return
        try:
            if not self.control.ended:
                self.trainer.end(status, error)
            self._summary(status, error)
        except Exception:
            pass  # the store or disk is what failed; the first error is the one to report


def _portable(error: BaseException) -> BaseException:
    """The exception itself if it survives pickling (ConfigError, RunStoreError, ...), else its line."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(_one_line(error))


def _serve(directory: Path, config: TrainConfig, task: bytes | None, threads: int | None, nice: int,
           checkpoint_every: int, writer_options: dict[str, Any], commands: Connection, states: Connection,
           steps: Any) -> None:
    """The training process: build the run, report, serve commands until the run ends, report."""
    # ^C in the server's terminal reaches this process too; stopping its runs is the server's call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        os.nice(nice)  # before any thread starts: torch's and the writer's threads inherit it
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        worker = _Worker(directory, config, pickle.loads(task) if task is not None else None, checkpoint_every,
                         writer_options, commands, states, steps)
    except BaseException as e:
        _send(states, ("error", _portable(e)))
        return
    _send(states, ("built", worker.trainer.device_name, worker.trainer.device.type))
    _send(states, ("ended", *worker.serve()))


# ---------------------------------------------------------------------- the parent's side
class LiveRun:
    """One training run driven by its own process; made by `RunRegistry.create`.

    Commands return at once (`start`, `step`, `step_to_update`) or when the run has acted
    on them (`pause`, `stop`; `wait=False` returns at once). A command that makes no sense
    in the current state raises ValueError saying what is allowed. `pid` is the training
    process's."""

    def __init__(self, registry: RunRegistry, name: str, directory: Path, config: TrainConfig, *,
                 task: Task | None, threads: int | None, scalars_every: int, tensors_every: int,
                 checkpoint_every: int, writer_options: dict[str, Any]):
        writer_options = {"scalars_every": scalars_every, "tensors_every": tensors_every, **writer_options}
        # Checked here, where the caller sees the error at once; building them writes nothing.
        Checkpointer(RunWriter(directory, **writer_options), checkpoint_every)
        try:
            task_bytes = pickle.dumps(task) if task is not None else None
        except Exception as e:
            raise ValueError(f"task: must pickle, to travel to the run's own process ({_one_line(e)}); "
                             "define its class at the top level of an importable module") from e
        self.name = name
        self.directory = directory
        self.config = config
        self.total = config.steps
        self.created = time.time()
        self._registry = registry
        self._cond = threading.Condition()  # guards the fields below; notified on every state change
        self._state = READY
        self._message = ""
        self._stop_asked = False
        with _PROCESS_LOCK:
            context = _context()
            child_commands, self._commands = context.Pipe(duplex=False)
            self._states, child_states = context.Pipe(duplex=False)
            # int64 in shared memory: the child alone writes it, one aligned word, so a read needs no lock.
            self._steps = context.Value("q", 0, lock=False)
            self._process = context.Process(
                target=_serve, name=f"nlviz-live-{name}", daemon=True,
                args=(directory.absolute(), config, task_bytes, threads, registry.nice, checkpoint_every, writer_options,
                      child_commands, child_states, self._steps))
            self._process.start()
        # The child now holds the only other ends: its exit reads as the end of file here.
        child_commands.close()
        child_states.close()
        self.pid = self._process.pid
        try:
            # e.g. "cpu (1 thread)", "cuda (NVIDIA H100 ...)"; the type is what the one-run-per-device rule compares
            self.device, self.device_type = self._built()
        except BaseException:
            self._process.terminate()  # nothing to stop cleanly: no trainer, nothing recorded
            self._join()
            self._commands.close()
            self._states.close()
            raise
        _RUNS.add(self)
        threading.Thread(target=self._listen, name=f"nlviz-live-{name}", daemon=True).start()

    # ------------------------------------------------------------------ reading
    @property
    def state(self) -> str:
        """ready | running | paused | finished | interrupted | diverged | failed (the last
        four are the run store's statuses)."""
        return self._state

    @property
    def step_count(self) -> int:
        """Steps done so far (the trainer's clock t), set by the child after every step; a
        plain read of shared memory, safe from any thread."""
        return self._steps.value

    @property
    def message(self) -> str:
        """Why the run ended, in one line, as the store records it ("stopped by the user at
        step 17", where it diverged, what failed); "" while it has not ended, or once it finished."""
        return self._message

    @property
    def error(self) -> str:
        """Why the run diverged or failed, in one line; "" otherwise."""
        return self._message if self._state in (DIVERGED, FAILED) else ""

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
            self._tell(("pause",))
            if wait:
                self._wait_locked(lambda: self._state != RUNNING, timeout, "pause")

    def stop(self, wait: bool = True, timeout: float | None = 60.0) -> None:
        """End the run after the current step: checkpoint.pt, the store's status
        "interrupted" ("stopped by the user at step N", also `message`), summary.json; the
        process exits; the state becomes interrupted.
        From ready (nothing was recorded: the empty directory is removed), running or paused.
        The checkpoint resumes with `python -m nlviz train --resume DIR`."""
        with self._cond:
            if self._state in ENDED:
                raise ValueError(self._refusal("stop"))
            if not self._stop_asked:
                self._stop_asked = True
                self._tell(("stop",))
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
            goal = target(self.step_count)  # the child is idle: the count is not moving
            self._registry._check_free(self.device_type, exclude=self)
            self._state = RUNNING
            self._tell(("run", goal))
            self._cond.notify_all()

    def _tell(self, message: tuple) -> None:
        """Send a command; called under the run's lock, so commands reach the child in order."""
        try:
            self._commands.send(message)
        except OSError:
            pass  # the process has died: the listener is about to end the run "failed"

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

    # ------------------------------------------------------------------ the child's reports
    def _built(self) -> tuple[str, str]:
        """Wait for the child's trainer; raise what building it raised."""
        if not self._states.poll(BUILD_TIMEOUT_S):
            raise TimeoutError(f"run {self.name}: the training process built nothing in {BUILD_TIMEOUT_S:g} s")
        try:
            kind, *report = self._states.recv()
        except EOFError:
            raise RuntimeError(f"the training process died (exit code {self._join()}) before its trainer was built") from None
        if kind == "error":
            raise report[0]
        return report[0], report[1]

    def _listen(self) -> None:
        """The listener thread: apply the child's reports until it ends or dies; then join it."""
        ended: tuple[str, str] | None = None
        try:
            while ended is None:
                # The sentinel as well as the pipe: a process can die without its pipe ending.
                if not self._states.poll():
                    wait_ready([self._states, self._process.sentinel])
                    if not self._states.poll():
                        break
                kind, *report = self._states.recv()
                if kind == "paused":
                    with self._cond:
                        if not self._stop_asked:  # stopping: the state stays until the run has ended
                            self._state = PAUSED
                            self._cond.notify_all()
                elif kind == "ended":
                    ended = (report[0], report[1])
        except (EOFError, OSError):
            pass  # it died mid-report, or before one
        code = self._join()  # an ended run has exited: its device memory is free
        if ended is None:
            ended = (FAILED, f"the training process died (exit code {code}) at step {self.step_count}")
        with self._cond:
            self._state, self._message = ended
            self._commands.close()  # no command is sent to an ended run
            self._states.close()
            self._cond.notify_all()

    def _join(self) -> int | None:
        """Wait for the process to exit, terminating it after EXIT_TIMEOUT_S and killing it
        after as long again; its exit code."""
        process = self._process
        for end in (process.terminate, process.kill):
            if wait_ready([process.sentinel], EXIT_TIMEOUT_S):
                break
            end()
        with _PROCESS_LOCK:
            process.join()
        return process.exitcode


def _threads(device_type: str, threads: int | None) -> int | None:
    return CPU_THREADS if threads is None and device_type == "cpu" else threads


def run_device(device: str = "auto", threads: int | None = None) -> str:
    """What a run created with this `TrainConfig.device` (and `RunRegistry.create`'s threads)
    will train on, in the words its `LiveRun.device` will use, e.g. "cpu (1 thread)": the run's
    process sets its own thread count, so this process's (what `describe_device` reads) is not
    the run's. ConfigError naming `device` for a device that is not here."""
    resolved = resolve_device(device)
    return describe_device(resolved, _threads(resolved.type, threads))


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty (or gone): what is there is not ours to delete


class RunRegistry:
    """The live runs of one process, recorded under `parent`; thread-safe.

    per_device: how many runs may be running or paused on one device type at once.
    nice: added to the niceness of each run's training process (0 to 19): the dashboard
    passes a positive value so that, on a machine with few cores, the server and the
    browser drawing the run come before the run's own CPU work."""

    def __init__(self, parent: str | os.PathLike = "runs", per_device: int = 1, nice: int = 0):
        if isinstance(per_device, bool) or not isinstance(per_device, int) or per_device < 1:
            raise ValueError(f"per_device: must be an integer >= 1, got {per_device!r}")
        if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
            raise ValueError(f"nice: must be an integer from 0 to 19, got {nice!r}")
        self.parent = Path(parent)
        self.per_device = per_device
        self.nice = nice
        self._lock = threading.Lock()  # taken before any run's own lock, never after
        self._runs: dict[str, LiveRun] = {}  # in creation order

    def create(self, config: TrainConfig, name: str | None = None, *, scalars_every: int = 10,
               tensors_every: int = 100, checkpoint_every: int = 500, task: Task | None = None,
               threads: int | None = None, **writer_options: Any) -> LiveRun:
        """A new run in state ready, recording into parent/<name>, with its training process
        started and its trainer built. name: default app-YYYYmmdd-HHMMSS (made unique); it
        must be new. The store's cadences and any other RunWriter option pass through;
        checkpoint_every (0: only on pause, stop and finish) as on the command line; task
        replaces the config's task (experiments, tests; a resume from the command line
        rebuilds the config's own task) and must pickle; threads: torch's intra-op threads
        in the training process (default CPU_THREADS on the CPU, where at these sizes one
        thread is as fast and two spin against each other on a busy machine; torch's own
        default elsewhere). `run_device` says beforehand what the run will train on.

        Raises RunBusyError while the device type is held (see `per_device`), ConfigError
        for a device that is not here, ValueError for a bad name or option, and what building
        the trainer raised; nothing is written then."""
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config: must be a TrainConfig, got {type(config).__name__}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads: must be an integer >= 1 (or None for the default), got {threads!r}")
        device_type = resolve_device(config.device).type
        threads = _threads(device_type, threads)
        with self._lock:
            self._check_free(device_type)
            name, directory = self._claim(name)
        try:
            run = LiveRun(self, name, directory, config, task=task, threads=threads, scalars_every=scalars_every,
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


def _stop_at_exit() -> None:
    """At interpreter exit: stop every run (a checkpoint, the store's "interrupted"), give
    them EXIT_TIMEOUT_S together, then terminate what is left, so that no training process
    outlives the server. Registered after multiprocessing's own exit handler, so it runs
    first (atexit runs the last registered first), while the listener threads still run."""
    runs = [run for run in list(_RUNS) if not run.ended]
    for run in runs:
        with run._cond:
            run._commands.close()  # the end of the pipe: what a child reads when its parent has gone
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    for run in runs:
        try:
            run.wait(ENDED, timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            run._process.terminate()
            run._join()


atexit.register(_stop_at_exit)
