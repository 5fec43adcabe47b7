"""Overhead benchmarks: what surprise capture and the nlviz Trainer cost over plain PyTorch.

Prints one `name: ratio` line per measure (targets and latest figures: docs/benchmarks.md):

    surprise_time               step time, surprise capture (u_l, y_l) / none      (<= 1.10)
    surprise_memory             peak memory, surprise capture / none               (<= 1.10)
    capture_full_time           step time, full capture (u_l, y_l, and every linear
                                layer's input and output gradient, every step) / none
    capture_full_memory         peak memory, full capture / none (also the peak of the
                                defaults, which record the linear layers every 10 steps)
    trainer_vs_plain            throughput, Trainer recording nothing / a plain loop
                                that records nothing (like for like)               (>= 0.95)
    trainer_vs_plain_capture    throughput, Trainer with its default capture / the plain loop
    telemetry_time              step time, Trainer (defaults) recording into the run store at
                                its default cadence / the same Trainer without it  (<= 1.05)
    host_syncs_per_step         CUDA only: host synchronisations per step in the training
                                thread between two sync steps (torch.cuda.set_sync_debug_mode),
                                beside those of the run store's writer thread      (0)

`--autocast bf16` runs every side's forward pass under torch.autocast(bfloat16) (the Trainer's
`autocast` setting; the plain loop wraps its forward the same way).

After the ratios: the store's size per 100,000 steps at the default cadence, how long a
new step takes to become visible to a reader in another thread (target <= 1 s), and how
long a decimated plot query takes on a 1,000,000-step series.

Every measure uses one model: a CMS of 3 MLP levels (width 64, hidden 256, every period 1,
Adam at lr 1e-3 everywhere), batch 32, the multiscale task with dim 64, seed 0. The plain
loop is one torch.optim.Adam over the same CMS on the same batches.

The decision to know: all sides live in one process and run in short blocks that alternate
(A B C, then C B A, ...) after a warm-up; a side's step time is the median of its block
times, so a noisy machine slows every side alike. Peak memory is the most bytes torch held,
above what it held before, while building a trainer and running `--memory-steps` steps:
torch.cuda.max_memory_allocated on CUDA; on the CPU, which keeps no such counter, the
running sum of the CPU allocator's allocation and free events recorded by
torch.profiler(profile_memory=True). Both count tensor storage only, not Python objects.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shutil
import sqlite3
import tempfile
import threading
import gc
import os
import platform
import statistics
import time

# Kineto, behind torch.profiler, logs every profiler start and stop to stderr unless told
# otherwise before torch is imported.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch
from torch.profiler import ProfilerActivity, profile

from nlviz import CMS, LevelSpec, ModelConfig, MultiscaleConfig, Subscriber, Trainer, TrainConfig, make_task
from nlviz.config import ConfigError
from nlviz.store import SCHEMA, RunWriter, index_scalars, open_run
from nlviz.device import describe_device, resolve_device, seed_everything


# What each side records (capture, linears_every): nothing, the surprise alone, the
# defaults (linear-layer records every TrainConfig().linears_every steps), everything every step.
CAPTURE = {"none": (False, 0), "surprise": (True, 0), "default": (True, TrainConfig().linears_every), "full": (True, 1)}
AUTOCAST = {"autocast": "none"}  # set once from --autocast; every side is built with it


def make_config(device: str, capture: str, levels: int = 3, width: int = 64) -> TrainConfig:
    specs = tuple(LevelSpec(period=1, width=width, hidden=4 * width) for _ in range(levels))
    on, linears_every = CAPTURE[capture]
    return TrainConfig(
        model=ModelConfig(levels=specs),
        task_options=MultiscaleConfig(dim=64),
        steps=10**9,  # never "finished": run() would evaluate the task at the end
        device=device,
        capture=on,
        linears_every=linears_every,
        autocast=AUTOCAST["autocast"],
    )


class PlainLoop:
    """The hand-written reference: the same CMS and batches, one Adam, nothing else."""

    def __init__(self, config: TrainConfig):
        device = resolve_device(config.device)
        seed_everything(config.seed)  # the Trainer's order of seeding and building: same weights
        self.task = make_task(config.task, config.task_options, device, config.seed)
        self.model = CMS(config.model, self.task.input_dim, self.task.output_dim).to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.head_lr)
        self.batch_size, self.t, self.last_loss = config.batch_size, 0, None
        self.device, self.bf16 = device, config.autocast == "bf16"

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.t += 1
            x, target = self.task.batch(self.t, self.batch_size)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.task.loss(self.model(x), target)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.last_loss = loss.detach()


def step_times(runners: dict, rounds: int, steps: int, device: torch.device) -> dict[str, float]:
    """Median seconds per step of each runner over `rounds` alternating blocks of `steps`."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            sync()
            start = time.perf_counter()
            runners[name].run(steps)
            sync()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_bytes(config: TrainConfig, steps: int, device: torch.device) -> int:
    """Most bytes torch held, above what it held before, while building a Trainer and running it."""
    gc.collect()  # so that no older tensor is freed inside the window
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        Trainer(config).run(steps)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        Trainer(config).run(steps)
    # The raw results (which torch's own memory profiler also reads) keep every allocation with
    # its time; prof.events() folds the ones made inside an op into that op's totals.
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    held = peak = 0
    for e in events:
        held += e.nbytes()  # negative for a free
        peak = max(peak, held)
    return peak


def sides(device: str, store: str | None = None, **model) -> dict:
    """The runners, built alike and checked to compute the same losses after a step."""
    runners = {
        "trainer+default": Trainer(make_config(device, "default", **model)),
        "trainer+full": Trainer(make_config(device, "full", **model)),
        "trainer+surprise": Trainer(make_config(device, "surprise", **model)),
        "trainer": Trainer(make_config(device, "none", **model)),
        "plain": PlainLoop(make_config(device, "none", **model)),
    }
    if store is not None:
        runners["trainer+telemetry"] = Trainer(make_config(device, "default", **model), [RunWriter(store)])
    for r in runners.values():
        r.run(1)
    losses = [r.last_loss for r in runners.values()]
    if not all(torch.allclose(losses[0], loss) for loss in losses):
        raise RuntimeError(f"the sides do not compute the same thing: first losses {[float(v) for v in losses]}")
    return runners


SYNC_WARNING = "called a synchronizing CUDA operation"  # torch.cuda.set_sync_debug_mode("warn")'s text


def host_syncs(device: str, store: str) -> tuple[int, int, int]:
    """(steps, host synchronisations in the training thread during them, in the run store's
    writer thread while it commits them), counted over the steps between two sync steps
    (CUDA only): set_sync_debug_mode('warn') warns at each one, in whichever thread."""
    import threading
    import warnings

    writer = RunWriter(os.path.join(store, "syncs"))
    trainer = Trainer(make_config(device, "default"), [writer])
    trainer.run(steps=trainer.sync_every)  # warm-up, ending on a sync step
    writer.sync()
    torch.cuda.synchronize()
    steps, seen = trainer.sync_every - 1, []

    def note(message, category, filename, lineno, file=None, line=None):
        if SYNC_WARNING in str(message):
            seen.append(threading.current_thread() is threading.main_thread())

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note  # restored when the block ends
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                trainer.step()
            writer.sync()  # the writer commits these steps inside the window
        finally:
            torch.cuda.set_sync_debug_mode("default")
    writer.on_end(trainer, "interrupted")
    return steps, sum(seen), len(seen) - sum(seen)


def store_size(writer: RunWriter, steps: int) -> int:
    """Bytes of the store once everything is committed and the WAL folded into the file."""
    writer.close()
    con = sqlite3.connect(writer.path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return writer.path.stat().st_size


def visibility(device: str, steps: int) -> tuple[float, float]:
    """Median and worst seconds from a step's event to a reader in another thread seeing it."""
    directory = tempfile.mkdtemp(prefix="nlviz-bench-")
    emitted: dict[int, float] = {}
    seen: dict[int, float] = {}

    class Clock(Subscriber):
        def on_step(self, event):
            emitted[event.step] = time.perf_counter()

    writer = RunWriter(directory, scalars_every=1)
    trainer = Trainer(make_config(device, "default"), [Clock(), writer])
    trainer.step()  # creates the store
    done = threading.Event()

    def poll() -> None:
        con = sqlite3.connect(f"file:{writer.path}?mode=ro", uri=True)
        last = 0
        while not done.is_set():
            step = con.execute("SELECT MAX(step) FROM scalars").fetchone()[0] or 0
            now = time.perf_counter()
            for t in range(last + 1, step + 1):
                seen[t] = now
            last = step
            time.sleep(0.01)
        con.close()

    reader = threading.Thread(target=poll)
    reader.start()
    trainer.run(steps)
    time.sleep(1.5)
    done.set()
    reader.join()
    writer.close()
    shutil.rmtree(directory, ignore_errors=True)
    lags = [seen[t] - emitted[t] for t in emitted if t in seen and t > 1]
    return statistics.median(lags), max(lags)


def plot_query(n: int) -> list[tuple[str, float]]:
    """Seconds for the dashboard's queries on a synthetic n-step loss series."""
    directory = tempfile.mkdtemp(prefix="nlviz-bench-")
    con = sqlite3.connect(f"{directory}/run.sqlite")
    con.executescript(SCHEMA)
    values = torch.randn(n, generator=torch.Generator().manual_seed(0)).tolist()
    con.executemany("INSERT INTO scalars VALUES (?, 0, 'loss', ?)", ((i + 1, v) for i, v in enumerate(values)))
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("status", '"finished"'), ("config", "{}")])
    con.execute("INSERT INTO series VALUES ('loss', 0)")
    index_scalars(con)  # what the writer keeps up to date as it commits
    con.commit()
    con.close()
    run = open_run(directory)
    out = []
    for label, call in ((f"{n:,} steps decimated to 1,000 points", lambda: run.scalars("loss", max_points=1000)),
                        ("the newest 1,000 steps", lambda: run.scalars("loss", since=n - 1000))):
        out.append((label, min(_timed(call) for _ in range(3))))
    run.close()
    shutil.rmtree(directory, ignore_errors=True)
    return out


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--steps", type=positive, default=50, help="steps per timed block (default 50)")
    parser.add_argument("--rounds", type=positive, default=60, help="timed blocks per side (default 60)")
    parser.add_argument("--memory-steps", type=positive, default=100, help="steps of each peak-memory run (default 100)")
    parser.add_argument("--threads", type=positive, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=None,
                        help="step time vs width and vs levels (default: on, off with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--autocast", default="none", choices=("none", "bf16"),
                        help="run every side's forward pass under torch.autocast(bfloat16)")
    args = parser.parse_args()
    AUTOCAST["autocast"] = args.autocast
    if args.quick:
        args.steps, args.rounds, args.memory_steps = 20, 5, 20
    scaling = not args.quick if args.scaling is None else args.scaling
    torch.set_num_threads(args.threads)  # one thread: at these sizes more are slower here, and noisier
    try:
        device = resolve_device(args.device)
    except ConfigError as e:
        parser.error(str(e))
    mem_method = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler CPU allocator events"

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, device {describe_device(device)}")
    print(f"date: {datetime.date.today()}")
    print("model: CMS 3 MLP levels (width 64, hidden 256, period 1), Adam lr 1e-3, batch 32, multiscale dim 64, seed 0"
          f"; autocast {args.autocast}")
    print(f"timing: median of {args.rounds} alternating blocks of {args.steps} steps per side, after {args.steps} warm-up steps")
    print(f"memory: peak over {args.memory_steps} steps from a fresh trainer ({mem_method})")
    print()

    store = tempfile.mkdtemp(prefix="nlviz-bench-")
    runners = sides(args.device, store=store)
    step_times(runners, 1, args.steps, device)  # warm-up
    t = step_times(runners, args.rounds, args.steps, device)
    # The default side's peak is the full side's: the steps that record set it.
    mem = {c: peak_bytes(make_config(args.device, c), args.memory_steps, device) for c in ("none", "surprise", "full")}
    print(f"surprise_time: {t['trainer+surprise'] / t['trainer']:.2f}")
    print(f"surprise_memory: {mem['surprise'] / mem['none']:.2f}")
    print(f"capture_full_time: {t['trainer+full'] / t['trainer']:.2f}")
    print(f"capture_full_memory: {mem['full'] / mem['none']:.2f}")
    print(f"trainer_vs_plain: {t['plain'] / t['trainer']:.2f}")
    print(f"trainer_vs_plain_capture: {t['plain'] / t['trainer+default']:.2f}")
    print(f"telemetry_time: {t['trainer+telemetry'] / t['trainer+default']:.2f}")
    print()
    print("step time (ms): " + ", ".join(f"{name} {1e3 * s:.3f}" for name, s in t.items()))
    print("peak memory (MB): " + ", ".join(f"{c} {b / 1e6:.2f}" for c, b in mem.items()))
    telemetry = runners["trainer+telemetry"]
    writer = next(s for s in telemetry.subscribers if isinstance(s, RunWriter))
    print(f"store size per 100,000 steps: {store_size(writer, telemetry.clock.t) * 1e5 / telemetry.clock.t / 1e6:.1f} MB "
          f"(default cadence: scalars every {writer.scalars_every}, tensors every {writer.tensors_every}, "
          f"memory records every {writer.memory_every} steps)")
    if device.type == "cuda":  # after the sides' writer is closed: only this count's threads run
        steps, trainer_syncs, writer_syncs = host_syncs(args.device, store)
        print(f"host_syncs_per_step: {trainer_syncs / steps:.2f} (training thread: {trainer_syncs} in the {steps} "
              f"steps between two sync steps; the store's writer thread: {writer_syncs} while committing them)")
    else:
        print("host_syncs_per_step: not measured (torch.cuda.set_sync_debug_mode needs CUDA)")
    lat = visibility(args.device, 400 if args.quick else 2000)
    print(f"visibility: a recorded step reaches a reader in median {lat[0]:.2f} s, at most {lat[1]:.2f} s (target <= 1 s)")
    for label, seconds in plot_query(100_000 if args.quick else 1_000_000):
        print(f"plot query, {label}: {seconds * 1e3:.0f} ms")
    shutil.rmtree(store, ignore_errors=True)

    if scaling:
        rounds = max(3, args.rounds // 4)
        print(f"\nscaling: ms per step, median of {rounds} alternating blocks of {args.steps} steps")
        print(f"{'levels':>6} {'width':>5} {'hidden':>6} {'trainer+full':>12} {'trainer':>8} {'plain':>8} {'capture x':>9}")
        for levels, width in [(3, 32), (3, 64), (3, 128), (1, 64), (2, 64), (4, 64)]:
            runners = sides(args.device, levels=levels, width=width)
            step_times(runners, 1, args.steps, device)
            s = step_times(runners, rounds, args.steps, device)
            cap, tr, plain = (1e3 * s[k] for k in ("trainer+full", "trainer", "plain"))
            print(f"{levels:>6} {width:>5} {4 * width:>6} {cap:>12.3f} {tr:>8.3f} {plain:>8.3f} {cap / tr:>9.2f}")
        print(f"\nmemory against batch size: peak MB over {args.memory_steps} steps, ratio to no capture")
        print(f"{'batch':>6} {'none':>8} {'surprise':>9} {'full':>8} {'surprise x':>10} {'full x':>7}")
        for batch in (32, 128, 512):
            peaks = {c: peak_bytes(dataclasses.replace(make_config(args.device, c), batch_size=batch),
                                   args.memory_steps, device) for c in ("none", "surprise", "full")}
            none, sur, full = (peaks[c] / 1e6 for c in ("none", "surprise", "full"))
            print(f"{batch:>6} {none:>8.2f} {sur:>9.2f} {full:>8.2f} {sur / none:>10.2f} {full / none:>7.2f}")


if __name__ == "__main__":
    main()
