"""Command line: `python -m nlviz train ...` (see `python -m nlviz --help`).

The decision to know: every argument is turned into a validated TrainConfig, and the
device is resolved, before anything is written; a bad value prints one line naming the
option and what is allowed, and exits with status 2 with no traceback and no files.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from .config import (
    DEVICES,
    TrainConfig,
    OPTIMIZERS,
    TASK_CONFIGS,
    VARIANTS,
    ConfigError,
    LevelSpec,
    ModelConfig,
    SurpriseConfig,
)

from .diverging import rule

__all__ = ["main", "config_from_args"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports an error in one line (no usage dump) and exits with 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _split(option: str, text: str, convert: Callable[[str], Any], what: str) -> list[Any]:
    parts = [p.strip() for p in text.split(",")]
    if text.strip() == "" or any(p == "" for p in parts):
        raise ConfigError(f"{option}: must be a comma-separated list of {what}, got {text!r}")
    out = []
    for p in parts:
        try:
            out.append(convert(p))
        except ValueError:
            raise ConfigError(f"{option}: must be a comma-separated list of {what}, got {p!r}") from None
    return out


def _per_level(option: str, values: list[Any], k: int) -> list[Any]:
    if len(values) == 1:
        return values * k
    if len(values) != k:
        raise ConfigError(f"{option}: give one value or one per level ({k}), got {len(values)}")
    return values


def _period(text: str) -> int:
    value = int(text)  # "2.5" and "x" raise ValueError
    if value < 1:
        raise ValueError(text)
    return value


def _task_options(task: str, items: Sequence[str]):
    cls = TASK_CONFIGS[task]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"--task-option: {task} takes KEY=VALUE with KEY one of {', '.join(fields)}; got {item!r}")
        kind = type(fields[key].default)
        try:
            kwargs[key] = kind(raw)
        except ValueError:
            raise ConfigError(f"--task-option: {key} must be {kind.__name__}, got {raw!r}") from None
    return cls(**kwargs)


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """Turn parsed `train` arguments into a TrainConfig (raises ConfigError)."""
    if a.levels.strip() == "":
        raise ConfigError("--levels: must list at least one period, e.g. 1,8,64; got nothing")
    periods = _split("--levels", a.levels, _period, "periods, each an integer >= 1 (e.g. 1,8,64)")
    k = len(periods)
    widths = _per_level("--widths", _split("--widths", a.widths, int, "integers"), k)
    hidden = _per_level("--hidden", _split("--hidden", a.hidden, int, "integers"), k)
    optims = _per_level("--optimizers", _split("--optimizers", a.optimizers, str, "names"), k)
    lrs = _per_level("--lrs", _split("--lrs", a.lrs, float, "numbers"), k)
    for o in optims:
        if o not in OPTIMIZERS:
            raise ConfigError(f"--optimizers: each must be one of {', '.join(OPTIMIZERS)}; got {o!r}")
    levels = []
    for i in range(k):
        try:
            levels.append(
                LevelSpec(
                    period=periods[i],
                    width=widths[i],
                    hidden=hidden[i],
                    kind=a.first_level if i == 0 else "mlp",
                    optimizer=optims[i],
                    lr=lrs[i],
                )
            )
        except ConfigError as e:
            name, _, rest = str(e).partition(": ")
            option = {"lr": "--lrs", "width": "--widths", "hidden": "--hidden", "period": "--levels"}.get(name, name)
            raise ConfigError(f"{option}: level {i + 1}: {rest}") from None
    model = ModelConfig(levels=tuple(levels), variant=a.variant, residual=not a.no_residual, norm=not a.no_norm)
    weights = tuple(_split("--surprise-weights", a.surprise_weights, float, "numbers"))
    surprise = SurpriseConfig(
        enabled=a.surprise, weights=weights, every=a.surprise_every, clip=a.surprise_clip, sign=a.surprise_sign
    )
    return TrainConfig(
        task=a.task,
        task_options=_task_options(a.task, a.task_option),
        model=model,
        surprise=surprise,
        steps=a.steps,
        batch_size=a.batch_size,
        seed=a.seed,
        device=a.device,
        accumulate=a.accumulate,
        head_optimizer=a.head_optimizer,
        head_lr=a.head_lr,
        sync_every=a.sync_every,
        autocast=a.autocast,
        diverging_factor=a.diverging_factor,
        diverging_stop=a.stop_diverging,
    )


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m nlviz", description="nlviz: train and inspect nested-learning models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train a CMS model on a task", description="Train a CMS model (Eq 30-31) on a task.")
    t.add_argument("--task", default="multiscale", choices=tuple(TASK_CONFIGS), help="task (default multiscale)")
    t.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a task setting, repeatable (e.g. fast_period=25, correlation=0.5)")
    t.add_argument("--levels", default="1,8,64", help="periods C(l), fastest first (default 1,8,64)")
    t.add_argument("--widths", default="64", help="level widths: one, or one per level (default 64)")
    t.add_argument("--hidden", default="256", help="MLP hidden sizes: one, or one per level (default 256)")
    t.add_argument("--optimizers", default="adam", help="sgd|adam|dgd: one, or one per level (default adam)")
    t.add_argument("--lrs", default="1e-3", help="learning rates: one, or one per level (default 1e-3)")
    t.add_argument("--first-level", default="mlp", choices=("mlp", "lstm"), help="kind of the first level")
    t.add_argument("--variant", default="sequential", choices=VARIANTS, help="how levels are wired")
    t.add_argument("--no-residual", action="store_true", help="drop residual connections (the bare chain)")
    t.add_argument("--no-norm", action="store_true", help="drop the LayerNorms")
    t.add_argument("--accumulate", default="sum", choices=("sum", "mean"),
                   help="Eq 31 sums a chunk's gradients; mean divides by C(l) (the prototype's convention)")
    t.add_argument("--head-optimizer", default="adam", choices=("sgd", "adam"), help="optimizer of stem and head")
    t.add_argument("--head-lr", type=float, default=1e-3, help="learning rate of stem and head")
    t.add_argument("--surprise", action="store_true", help="add the surprise auxiliary objective")
    t.add_argument("--surprise-weights", default="0.1", help="its weight: one, or one per level")
    t.add_argument("--surprise-every", type=int, default=1, help="add it every N steps")
    t.add_argument("--surprise-clip", type=float, default=0.0, help="clip rows of u to this norm (0 = off)")
    t.add_argument("--surprise-sign", default="consistent", choices=("consistent", "printed"),
                   help="target -u (consistent) or +u (the printed Eq 27 sign)")
    t.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    t.add_argument("--batch-size", type=int, default=32, help="examples per step (default 32)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--device", default="auto", choices=DEVICES, help="auto picks cuda, then mps, then cpu")
    t.add_argument("--sync-every", type=int, default=0, help="host reads every N steps (0 = auto)")
    t.add_argument("--autocast", default="none", choices=("none", "bf16"),
                   help="bf16: forward pass under torch.autocast(bfloat16); weights and optimizer stay float32")
    t.add_argument("--diverging-factor", type=float, default=TrainConfig.diverging_factor, metavar="F",
                   help=f"warn that the run is diverging at the first {rule('F')} (default "
                        f"{TrainConfig.diverging_factor:g}; 0 = never)")
    t.add_argument("--stop-diverging", action="store_true",
                   help="end a diverging run there (status diverged) instead of warning and going on")
    t.add_argument("--out", help="run directory, new or empty: run.sqlite (the live record), checkpoint.pt, summary.json")
    t.add_argument("--resume", metavar="DIR",
                   help="continue an interrupted run from its last checkpoint, with its own settings")
    t.add_argument("--checkpoint-every", type=int, default=500,
                   help="checkpoint every N steps, so --resume loses little (0 = only at the end; default 500)")
    t.add_argument("--scalars-every", type=int, default=10, help="record scalars every N steps (default 10)")
    t.add_argument("--tensors-every", type=int, default=100, help="record tensor summaries every N steps (default 100)")
    t.add_argument("--memory-every", type=int, default=500,
                   help="record each level's output layer as an Eq 25-29 memory every N steps, a multiple of 10 "
                        "(default 500)")
    t.add_argument("--tensorboard", action="store_true",
                   help="also write the run's scalars and histograms as TensorBoard events in DIR/tensorboard")
    t.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = torch's default; 1 is often fastest for small models)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = sub.add_parser("runs", help="list the runs in a directory", description="List runs: status, steps, age.")
    r.add_argument("parent", metavar="PARENT", help="a directory holding run directories")
    return p


# Config field -> the option that sets it, so errors name what the user typed.
_OPTIONS = {
    "steps": "--steps", "batch_size": "--batch-size", "seed": "--seed", "device": "--device",
    "accumulate": "--accumulate", "head_lr": "--head-lr", "head_optimizer": "--head-optimizer",
    "sync_every": "--sync-every", "levels.width": "--widths", "levels": "--levels",
    "diverging_factor": "--diverging-factor", "diverging_stop": "--stop-diverging",
    "surprise.weights": "--surprise-weights", "surprise.every": "--surprise-every",
    "surprise.clip": "--surprise-clip", "surprise.sign": "--surprise-sign",
}


def _fail(message: str) -> int:
    field, sep, rest = message.partition(": ")
    if sep and field in _OPTIONS:
        message = f"{_OPTIONS[field]}: {rest}"
    elif sep and field.startswith("task."):
        message = f"--task-option {field[5:]}: {rest}"
    print(f"nlviz: error: {message}", file=sys.stderr)
    return 2


def _check_out(out: Path) -> None:
    """--out must be a new or empty directory that can be created and written."""
    from .rundir import creatable

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out: {out} already exists and is not an empty directory; choose a new one")
    ok, parent = creatable(out)
    if not ok:
        raise ConfigError(f"--out: {out} cannot be created ({parent} is not a writable directory)")


def _prepare(a: argparse.Namespace):
    """Validate everything before any work: (config, out, checkpoint to resume or None, cadences)."""
    from .device import resolve_device
    from .rundir import CHECKPOINT_NAME
    from .store import RunStoreError, open_run

    if a.resume is not None:
        out = Path(a.resume)
        try:
            run = open_run(out)
            meta, status = run.meta, run.status
            run.close()
        except RunStoreError as e:
            raise ConfigError(f"--resume: {str(e).partition(': ')[2]}") from None
        if status in ("finished", "running"):
            raise ConfigError(f"--resume: {out} is {status}; only an interrupted, failed or diverged run resumes")
        config = TrainConfig.from_dict(meta["config"])
        resolve_device(config.device)
        checkpoint = out / CHECKPOINT_NAME
        cadence = {k: v for k, v in meta.get("cadence", {}).items() if k in _CADENCES}
        return config, out, (checkpoint if checkpoint.exists() else None), cadence
    if a.out is None:
        raise ConfigError("--out: give a new run directory (or --resume DIR to continue a run)")
    config = config_from_args(a)
    resolve_device(config.device)
    cadence = {name: getattr(a, name) for name in _CADENCES}
    for name, value in cadence.items():
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be an integer >= 1, got {value}")
    if cadence["memory_every"] % config.linears_every:  # memory records need the linear layers' records
        raise ConfigError(f"--memory-every: must be a multiple of {config.linears_every} (the steps that keep each "
                          f"layer's input), got {cadence['memory_every']}")
    out = Path(a.out)
    _check_out(out)
    return config, out, None, cadence


_CADENCES = ("scalars_every", "tensors_every", "memory_every")  # RunWriter options the CLI sets


def _train(a: argparse.Namespace) -> int:
    try:
        if a.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every: must be an integer >= 0, got {a.checkpoint_every}")
        if a.threads < 0:
            raise ConfigError(f"--threads: must be an integer >= 0, got {a.threads}")
        config, out, checkpoint, cadence = _prepare(a)
        if a.tensorboard:
            from .mirror import require_tensorboard

            require_tensorboard()  # refused here, before anything is written
    except (ConfigError, ImportError) as e:
        return _fail(str(e))

    from .rundir import CHECKPOINT_NAME, SUMMARY_NAME, Checkpointer, write_summary
    from .store import RunWriter
    from .trainer import DivergenceError, Subscriber, Trainer

    class DivergingWarning(Subscriber):
        """Says on stderr, once, above the progress bar, that the run has started to diverge."""

        def on_diverging(self, event) -> None:
            if config.diverging_stop:
                return  # the run ends here, and its error says so
            from tqdm.auto import tqdm

            tqdm.write(f"nlviz: warning: {event.message}", file=sys.stderr)

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    resuming = a.resume is not None
    if checkpoint is not None:
        trainer = Trainer.from_checkpoint(checkpoint)
    else:
        trainer = Trainer(config)
    writer = RunWriter(out, **cadence, resume_after=trainer.clock.t if resuming else None)

    checkpointer = Checkpointer(writer, a.checkpoint_every)
    trainer.subscribers += [writer, checkpointer, DivergingWarning()]
    if a.tensorboard:
        from .mirror import TensorBoardMirror

        # After the writer, which it tails; a resumed run replaces the events after its checkpoint.
        trainer.subscribers.append(TensorBoardMirror(out, resume_after=trainer.clock.t if resuming else None))

    def stop_after_this_step(signum, frame) -> None:
        # The first Ctrl-C finishes the current step, so the checkpoint is consistent;
        # a second one interrupts at once.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        trainer.request_stop()

    # Installed before --out appears, so a Ctrl-C from then on always ends cleanly.
    main_thread = threading.current_thread() is threading.main_thread()  # signals only go there
    previous = signal.signal(signal.SIGINT, stop_after_this_step) if main_thread else None
    out.mkdir(parents=True, exist_ok=True)
    verb = f"resuming at step {trainer.clock.t}" if resuming else "starting"
    print(f"nlviz: {verb}: {config.describe()}; on {trainer.device_name} -> {out}", file=sys.stderr)
    start, status, code, whole_step, first = time.time(), "finished", 0, True, trainer.clock.t
    result, error = None, None
    try:
        result = trainer.run(progress=not a.no_progress)
        if result.status == "stopped":
            status, code = "interrupted", 130
            trainer.end(status)
            print(f"nlviz: interrupted after step {trainer.clock.t}; continue with "
                  f"{_python()} -m nlviz train --resume {out}", file=sys.stderr)
    except DivergenceError as e:
        status, code, error = "diverged", 1, e
        print(f"nlviz: error: {e}", file=sys.stderr)
    except KeyboardInterrupt:  # a second Ctrl-C, inside a step: that step is incomplete
        status, code, whole_step = "interrupted", 130, False
        print("nlviz: interrupted inside a step; no new checkpoint written", file=sys.stderr)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    seconds = time.time() - start
    if status != "diverged" and whole_step:
        checkpointer.save(trainer)
    summary = write_summary(out, trainer, status, seconds=seconds, first_step=first, result=result, error=error)
    done = trainer.clock.t - first
    if status == "finished":
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in summary["metrics"].items())
        print(f"nlviz: {status}: {done} steps in {seconds:.1f} s "
              f"({summary['steps_per_second']:.0f} steps/s); final loss {result.final_loss:.4g}; {metrics}",
              file=sys.stderr)
        print(f"nlviz: wrote {out / 'run.sqlite'}, {out / CHECKPOINT_NAME} and {out / SUMMARY_NAME}",
              file=sys.stderr)
    return code


def _python() -> str:
    """This interpreter as the user can type it from here (.venv/bin/python after make demo)."""
    import os

    here = os.path.relpath(sys.executable)
    return here if not here.startswith("..") else sys.executable


def _runs(a: argparse.Namespace) -> int:
    from .store import list_runs

    parent = Path(a.parent)
    if not parent.is_dir():
        return _fail(f"PARENT: {parent} is not a directory")
    rows = [(i.name, i.status, "-", "-", i.message) if i.status == "unreadable" else
            (i.name, i.shown_status,
             f"{i.last_step}/{i.total if i.total is not None else '?'}", _age(i.age_s), i.task)
            for i in sorted(list_runs(parent), key=lambda i: i.name)]
    if not rows:
        print(f"no runs in {parent}")
        return 0
    header = ("run", "status", "steps", "last seen", "task")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "train":
        return _train(args)
    return _runs(args)
