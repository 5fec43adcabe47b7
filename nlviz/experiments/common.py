"""What every experiment shares: its description, spreads over seeds, the machine, the result files.

An experiment is an `Experiment`: a name, the question it asks, a frozen settings dataclass
for the full run and one for `--quick`, a count of work units for the progress bar, and a
`run(settings, seeds, progress)` that returns plain data (`Outcome`). Everything that
touches the disk is here, in `write_result`, and runs only after an experiment finished,
so a bad argument or a crash leaves nothing half written.

The decisions to know:
- Spread over seeds is the mean with a 95% interval from Student's t distribution,
  mean +- t_{0.975, n-1} s / sqrt(n) (s the sample standard deviation); with one seed
  the interval is unknown and recorded as null, never as zero.
- A result directory holds `result.json` (settings, seeds, per-seed numbers, summary,
  data for the figures, machine, wall time), one HTML file per figure (plotly.js written
  once beside them, so they open offline), and a PNG per figure only when kaleido imports
  and works; `result.json` says which (`png`, `png_note`). Figures are rebuilt from the
  JSON by `nlviz.experiments.figures`, so the dashboard never reads the HTML.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config import ConfigError
from ..trainer import StepEvent, Subscriber

__all__ = [
    "Experiment", "Outcome", "Progress", "spread", "machine", "results_dir", "write_result", "load_result",
    "list_results", "RESULT_NAME", "FIGURES_DIR", "jsonable", "check_settings", "curve", "compare",
]

RESULT_NAME = "result.json"
FIGURES_DIR = "figures"
RESULTS_ENV = "NLVIZ_RESULTS"


@dataclass
class Outcome:
    """What an experiment's run returns: plain numbers, lists and dicts (JSON-ready)."""

    per_seed: list[dict[str, Any]]  # one record per seed: {"seed": s, ...the numbers}
    summary: list[dict[str, Any]]  # the table a reader sees first: one row per condition, mean and interval
    data: dict[str, Any] = field(default_factory=dict)  # what the figures need beyond the summary
    findings: list[str] = field(default_factory=list)  # one sentence per claim checked, computed from the numbers


@dataclass(frozen=True)
class Experiment:
    name: str  # the command-line name
    title: str  # one line
    question: str  # what it asks, in a sentence or two
    full: Any  # the settings dataclass of a full run
    quick: Any  # the settings of --quick (seconds; used by the tests)
    default_seeds: int  # seeds of a full run without --seeds
    quick_seeds: int  # seeds of --quick without --seeds
    units: Callable[[Any, Sequence[int]], int]  # work units (steps, memories) for the progress bar
    run: Callable[[Any, Sequence[int], "Progress"], Outcome]


class Progress:
    """A tqdm bar over an experiment's work units; `subscriber()` advances it once per training step."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="unit", dynamic_ncols=True, disable=not enabled, mininterval=0.5)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def note(self, text: str) -> None:
        """Show what is running now (the condition and seed)."""
        self.bar.set_postfix_str(text, refresh=False)

    def subscriber(self) -> Subscriber:
        return _Advance(self)

    def close(self) -> None:
        self.bar.close()


class _Advance(Subscriber):
    def __init__(self, progress: Progress):
        self.progress = progress

    def on_step(self, event: StepEvent) -> None:
        self.progress.advance()


# Field types whose values validate themselves (task configs) or need no check.
CHECKED_ELSEWHERE = frozenset({"MultiscaleConfig", "DigitsConfig", "str", "bool"})


def check_settings(settings: Any, zero_ok: frozenset[str] = frozenset(),
                   fractions: frozenset[str] = frozenset()) -> None:
    """Check an experiment's settings dataclass by its fields' declared types: integers and
    numbers positive (or zero for the fields in zero_ok), tuples non-empty with positive
    entries, and the fields in `fractions` in [0, 1). Raises ConfigError naming the field."""
    cls = type(settings).__name__
    for f in dataclasses.fields(settings):
        # Annotations are strings under `from __future__ import annotations`, types otherwise.
        if isinstance(f.type, str):
            kind = f.type
        else:  # a generic alias such as tuple[int, ...] prints as written; a class by its name
            kind = str(f.type) if typing.get_origin(f.type) is not None else getattr(f.type, "__name__", str(f.type))
        kind = kind.replace("typing.", "").replace("Tuple[", "tuple[")
        name, value = f"{cls}.{f.name}", getattr(settings, f.name)
        lo = 0 if f.name in zero_ok else 1
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"{name}: must be an integer >= {lo}, got {value!r}")
        elif kind == "float" or kind.startswith("tuple[float"):
            values = value if kind.startswith("tuple") else (value,)
            if kind.startswith("tuple") and (not isinstance(value, tuple) or not value):
                raise ConfigError(f"{name}: must be a non-empty tuple of numbers, got {value!r}")
            for v in values:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                if f.name in fractions:
                    ok = ok and 0 <= v < 1
                    allowed = "numbers from 0 up to (not including) 1"
                else:
                    ok = ok and (v >= 0 if f.name in zero_ok else v > 0)
                    allowed = "non-negative numbers" if f.name in zero_ok else "positive numbers"
                if not ok:
                    raise ConfigError(f"{name}: must hold {allowed}, got {value!r}")
        elif kind.startswith("tuple[int"):
            if (not isinstance(value, tuple) or not value
                    or any(isinstance(v, bool) or not isinstance(v, int) or v < lo for v in value)):
                raise ConfigError(f"{name}: must be a non-empty tuple of integers >= {lo}, got {value!r}")
        elif kind not in CHECKED_ELSEWHERE:
            raise TypeError(f"check_settings: {name} has a type it does not check ({kind}); check it in __post_init__")


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and 95% t interval of per-seed values (None where undefined)."""
    from scipy.stats import t as student_t  # scipy comes with scikit-learn

    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    mean = float(x.mean()) if n else None
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None, "lo": None, "hi": None}
    std = float(x.std(ddof=1))
    half = float(student_t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "ci95": half, "lo": mean - half, "hi": mean + half}


def curve(points: Sequence[Sequence[float]]) -> dict[str, list]:
    """Mean, lo and hi over seeds at each point of a sweep: points[j] holds point j's per-seed
    values (empty where a point has none, which gives None)."""
    stats = [spread(values) for values in points]
    return {k: [st[k] for st in stats] for k in ("mean", "lo", "hi")}


def compare(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Where spread a's 95 % interval lies against b's: "above", "below", "overlap", or None
    when either has none. Two conditions are called different only where they do not overlap."""
    if a["ci95"] is None or b["ci95"] is None:
        return None
    return "above" if a["lo"] > b["hi"] else "below" if a["hi"] < b["lo"] else "overlap"


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where the numbers came from: platform, processor, cores, torch and its threads, device."""
    return {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def results_dir() -> Path:
    """Where results live: $NLVIZ_RESULTS, else ./results."""
    return Path(os.environ.get(RESULTS_ENV, "results"))


def jsonable(value: Any) -> Any:
    """Numpy, tensors and dataclasses to plain JSON values; NaN and infinities to null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_result(out: Path, result: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
    """Write result.json and the figures (HTML, and PNG when kaleido works) into `out`.

    Returns the result as written (with `files`, `png` and `png_note` filled in). The figures
    are written into a fresh folder that then takes the old one's place by two renames (no
    figure of an earlier run stays behind), and result.json is replaced in one rename right
    after: a failure while rendering leaves the previous result whole.
    """
    out.mkdir(parents=True, exist_ok=True)
    fig_dir, staging = out / FIGURES_DIR, out / f"{FIGURES_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    html = []
    for name, fig in figures.items():
        fig.write_html(staging / f"{name}.html", include_plotlyjs="directory", full_html=True)  # plotly.min.js once, offline
        html.append(f"{FIGURES_DIR}/{name}.html")
    png, note = _write_pngs(staging, figures)
    result = {**result, "files": {"html": html, "png": png}, "png": bool(png), "png_note": note}
    text = json.dumps(jsonable(result), indent=1, allow_nan=False)
    tmp = out / (RESULT_NAME + ".tmp")
    tmp.write_text(text)
    old = out / f"{FIGURES_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)  # left by an earlier failure, if any
    if fig_dir.exists():
        fig_dir.rename(old)
    staging.rename(fig_dir)
    os.replace(tmp, out / RESULT_NAME)  # a reader never sees half a result
    shutil.rmtree(old, ignore_errors=True)
    return json.loads(text)


def _write_pngs(fig_dir: Path, figures: dict[str, Any]) -> tuple[list[str], str]:
    try:
        import kaleido  # noqa: F401  (plotly's static image engine; optional)
    except ImportError:
        return [], "kaleido is not installed: figures are HTML only"
    written = []
    try:
        for name, fig in figures.items():
            path = fig_dir / f"{name}.png"
            fig.write_image(path, width=900, height=500)
            written.append(str(Path(FIGURES_DIR) / path.name))
    except Exception as e:  # kaleido imports but cannot render (e.g. no browser for kaleido 1.x)
        return written, f"kaleido failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): HTML only"
    return written, "PNG written by kaleido"


# What the dashboard's Results page reads from a result; a file without them is not listed.
RESULT_KEYS = frozenset({"experiment", "title", "question", "quick", "seeds", "wall_s", "finished", "machine",
                         "findings", "summary", "png_note"})


def load_result(path: Path) -> dict[str, Any]:
    """Read one result.json (a directory or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_NAME
    return json.loads(path.read_text())


def list_results(parent: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(directory, result) for every parent/*/result.json that reads, newest first."""
    parent = results_dir() if parent is None else Path(parent)
    found = []
    for path in sorted(parent.glob(f"*/{RESULT_NAME}")) if parent.is_dir() else []:
        try:
            result = load_result(path)
        except (OSError, ValueError):
            continue  # a result being replaced, or a foreign file: skip, never fail the page
        if isinstance(result, dict) and RESULT_KEYS <= result.keys():
            found.append((path.parent, result))
    return sorted(found, key=lambda item: item[1].get("finished", ""), reverse=True)
