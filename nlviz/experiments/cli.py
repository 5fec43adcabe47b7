"""`python -m nlviz.experiments NAME [--seeds N] [--quick] [--out DIR]`: run one experiment.

The decision to know: every argument is checked before any work or any file, as in
`python -m nlviz train`: a bad value prints one line naming the option and what is
allowed, exits with status 2 and writes nothing. A run writes its directory only when it
has finished (see `common.write_result`).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn, Sequence

import torch

from .. import __version__
from ..rundir import creatable
from . import figures
from .common import Experiment, Progress, jsonable, machine, results_dir, write_result
from .registry import EXPERIMENTS

__all__ = ["main", "run_experiment", "UsageError", "MAX_SEEDS"]

MAX_SEEDS = 100


class UsageError(ValueError):
    """A bad argument; the message names it and what is allowed."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports an error in one line (no usage dump) and exits with 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m nlviz.experiments",
                description="Reproduce the paper's claims in miniature; writes RESULTS/NAME/result.json and figures.")
    p.add_argument("name", metavar="NAME", help=f"experiment: {', '.join(EXPERIMENTS)}")
    p.add_argument("--seeds", default=None, help="number of seeds (seeds 0..N-1); default depends on the experiment")
    p.add_argument("--quick", action="store_true", help="a tiny version that runs in seconds (used by the tests)")
    p.add_argument("--out", default=None, help="result directory (default $NLVIZ_RESULTS/NAME, else results/NAME)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _seeds(text: str | None, default: int) -> tuple[int, ...]:
    if text is None:
        return tuple(range(default))
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_SEEDS:
        raise UsageError(f"--seeds: must be an integer between 1 and {MAX_SEEDS}, got {text!r}")
    return tuple(range(n))


def _out(text: str | None, name: str) -> Path:
    out = Path(text) if text is not None else results_dir() / name
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} exists and is not a directory; give a directory (it is created if new)")
    ok, parent = creatable(out)
    if not ok:
        raise UsageError(f"--out: {out} cannot be written ({parent} is not a writable directory)")
    return out


def _experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise UsageError(f"NAME: must be one of {', '.join(EXPERIMENTS)}; got {name!r}")
    return EXPERIMENTS[name]


def run_experiment(name: str, seeds: Sequence[int] | None = None, quick: bool = False, out: Path | None = None,
                   progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Run one experiment and write its result directory; returns (directory, result as written).

    Runs on the CPU with one torch thread (faster than two for these small models, and one
    summation order), restoring the caller's thread count afterwards.
    """
    exp = _experiment(name)
    settings = exp.quick if quick else exp.full
    seeds = tuple(range(exp.quick_seeds if quick else exp.default_seeds)) if seeds is None else tuple(seeds)
    out = _out(None if out is None else str(out), name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bar = Progress(exp.units(settings, seeds), desc=name, enabled=progress)
    started = datetime.now(timezone.utc)
    start = time.perf_counter()
    try:
        outcome = exp.run(settings, seeds, bar)
        wall = time.perf_counter() - start
        result = {
            "experiment": exp.name, "title": exp.title, "question": exp.question, "quick": quick,
            "settings": settings, "seeds": list(seeds), "summary": outcome.summary, "findings": outcome.findings,
            "per_seed": outcome.per_seed, "data": outcome.data, "machine": machine("cpu"),
            "wall_s": wall, "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "nlviz": __version__,
        }
    finally:
        bar.close()
        torch.set_num_threads(threads)
    plain = jsonable(result)
    return out, write_result(out, plain, figures.build(plain))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        exp = _experiment(args.name)
        seeds = _seeds(args.seeds, exp.default_seeds if not args.quick else exp.quick_seeds)
        out = _out(args.out, args.name)
    except UsageError as e:
        print(f"python -m nlviz.experiments: error: {e}", file=sys.stderr)
        return 2
    out, result = run_experiment(args.name, seeds, args.quick, out, progress=not args.no_progress)
    print(f"{args.name}: {result['wall_s']:.1f} s; wrote {out / 'result.json'} and {len(result['files']['html'])} "
          f"figure(s) ({result['png_note']})")
    for line in result["findings"]:
        print(f"  {line}")
    return 0
