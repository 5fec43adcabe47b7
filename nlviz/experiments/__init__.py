"""Experiments: the paper's claims in miniature, run reproducibly, with their spread over seeds.

    python -m nlviz.experiments NAME [--seeds N] [--quick] [--out DIR]

writes DIR/result.json (default results/NAME/) and the figures. The five experiments:

    capacity   Hebbian (Eq 26) against delta-rule (Eq 27-29) memories: pairs and key correlation
    continual  class-incremental digits: one level, CMS with 2, 3, 4 levels (same size), EWC
    levels     number of levels and lowest frequency, on the multiscale task and continual digits
    ablation   the paper's ablation table in miniature: without DGD, CMS, residual/norm, surprise; sum/mean
    co2        Mauna Loa CO2 (bundled with statsmodels): do slow and fast levels split trend and season?

Module by module: `common` (experiment description, spread over seeds, result files),
`streams` (training streams shared by the model experiments), one module per experiment,
`ewc` (the EWC baseline), `series` (the CO2 task), `registry` (names to experiments),
`figures` (result -> plotly figures, shared with the dashboard), `cli` (the command line).
The decision to know: an experiment is a pure function of its settings and seeds; it
returns plain data, and files are written once, at the end, so a result directory is never
half written.
"""

from .cli import main, run_experiment
from .common import list_results, load_result, results_dir, spread
from .registry import EXPERIMENTS

__all__ = ["main", "run_experiment", "EXPERIMENTS", "list_results", "load_result", "results_dir", "spread"]
