"""Wiring shared by the dashboard's pages: the run registry, where runs live, reading a run.

No maths and no figure code here: figures come from `nlviz.figures`, numbers from the run
store. The one decision to know: the registry of live runs is a `st.cache_resource`, so
every browser tab of this server sees the same runs, and a run outlives the tab that
started it. Pages only ever read the run store (bounded queries, decimated series); the
runs' training processes are the only writers.
"""

from __future__ import annotations

import math
import numbers
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import streamlit as st
import torch

from nlviz import LevelSpec, ModelConfig, SurpriseConfig, TrainConfig, figures, open_run
from nlviz.config import ACCUMULATE, AUTOCAST, OPTIMIZERS, SIGNS, VARIANTS, ConfigError
from nlviz import diverging
from nlviz.device import resolve_device
from nlviz.live import LiveRun, RunRegistry
from nlviz.store import RunInfo, RunReader, list_runs

PLOT_POINTS = 1000  # points per series a plot asks for; the store decimates, keeping extremes
CLOCK_EVENTS = figures.BAND_EVENTS  # events per level drawn one by one; a level with more is drawn as a band
REFRESH_S = 0.5  # how often the Step metric and the loss re-read the store (the writer commits twice a second)
LEVELS_REFRESH_S = 1.0  # how often the per-level panels and heatmaps do (the issue asks at least once a second)


def train_nice() -> int:
    """NLVIZ_TRAIN_NICE, default 10: niceness added to the dashboard's training processes, so on a
    machine with few cores the server and the browser drawing the page come first (docs/benchmarks.md
    measures what it costs the run). ValueError naming the variable when it is not 0 to 19."""
    text = os.environ.get("NLVIZ_TRAIN_NICE", "10")
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise ValueError(f"NLVIZ_TRAIN_NICE: must be an integer from 0 to 19, got {text!r}")
    return value


def runs_dir() -> Path:
    """Where the dashboard records and looks for runs: $NLVIZ_RUNS, else ./runs."""
    return Path(os.environ.get("NLVIZ_RUNS", "runs"))


def registry() -> RunRegistry:
    """The server's one registry of runs trained by the dashboard (shared by every tab)."""
    try:
        nice = train_nice()
    except ValueError as e:
        st.error(str(e))
        st.stop()  # ends the page's run here
        raise  # outside a page's run st.stop() returns
    return _registry(str(runs_dir().resolve()), nice)


@st.cache_resource
def _registry(parent: str, nice: int) -> RunRegistry:
    return RunRegistry(parent=parent, nice=nice)


def recorded_runs() -> list[RunInfo]:
    parent = runs_dir()
    return list_runs(parent) if parent.is_dir() else []


@contextmanager
def reading(path: Path) -> Iterator[RunReader]:
    """A short-lived reader: SQLite connections are cheap, and a fresh one sees the newest commit."""
    run = open_run(path)
    try:
        yield run
    finally:
        run.close()


def live_run(name: str | None) -> LiveRun | None:
    """The dashboard run called `name`, else the newest one; None when there is none."""
    reg = registry()
    if name:
        run = reg.get(name)
        if run is not None:
            return run
    runs = reg.runs()
    return runs[0] if runs else None


def query_int(key: str, default: int | None = None) -> int | None:
    """An integer from the page's URL (shareable state), or default when absent or malformed."""
    try:
        return int(st.query_params[key])
    except (KeyError, ValueError):
        return default


# What the dashboard records: every step's scalars (so a single Step shows up at once), tensor
# summaries and Eq 25-29 memory records every 10 steps (the trainer's linear-record cadence).
WRITER_OPTIONS = {"scalars_every": 1, "tensors_every": 10, "memory_every": 10}
DEFAULT_STEPS = 3000  # the default run: the library's default model and task, for this many steps
LEVEL_COLUMNS = ("period", "width", "hidden", "optimizer", "lr")  # the LevelSpec fields the levels table edits
DEFAULT_LEVELS = [{k: getattr(lv, k) for k in LEVEL_COLUMNS}
                  for lv in ModelConfig().levels]  # the levels table starts from the library's defaults
TASKS = {
    "multiscale": "multi-timescale regression: a fast and a slow drifting map",
    "recall": "associative recall of key-value pairs, keys optionally correlated",
    "digits": "class-incremental 8x8 digits, two classes per task",
}


def default_device() -> str:
    """What a run of the default settings trains on, as its Device metric will say."""
    from nlviz.live import run_device

    return run_device("auto")


def devices() -> list[str]:
    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def periods(run: LiveRun | None) -> tuple[int, ...]:
    return run.config.model.periods if run is not None else tuple(lv["period"] for lv in DEFAULT_LEVELS)


def _typed(value: Any, whole: bool) -> Any:
    """A number as the user typed it: numpy scalars as Python numbers, and a whole float as an
    int where the field wants an integer (the table holds floats, so that 1.5 reaches the
    validation as 1.5 instead of being rounded by the widget); anything else unchanged."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)
        if whole and value.is_integer():
            return int(value)
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def level_specs(rows: list[dict[str, Any]]) -> tuple[LevelSpec, ...]:
    """The levels table's rows, as `st.data_editor(...).to_dict("records")` gives them, as
    LevelSpecs holding exactly what was typed; LevelSpec alone decides what is allowed.
    ConfigError naming the level (from 1) and the field: "level 2 period: must be ...", or
    "level 2 lr: needs a value" for an empty cell."""
    specs = []
    for i, row in enumerate(rows, start=1):
        values = {}
        for name in LEVEL_COLUMNS:
            value = _typed(row.get(name), whole=name in ("period", "width", "hidden"))
            if _missing(value):
                raise ConfigError(f"level {i} {name}: needs a value")
            values[name] = value
        try:
            specs.append(LevelSpec(**values))
        except ConfigError as e:
            raise ConfigError(f"level {i} {e}") from None
    return tuple(specs)


def train_config(form: dict[str, Any], rows: list[dict[str, Any]]) -> TrainConfig:
    """The run the form describes: `form` holds the settings widgets' values by field name
    (task, steps, batch_size, seed, device, variant, accumulate, residual, norm, autocast,
    surprise, weight, sign, diverging_factor, diverging_stop), `rows` the levels table. Values pass through as typed; ConfigError
    with the library's message for any that is not allowed, or for a device that is not here."""
    config = TrainConfig(
        task=form["task"], steps=_typed(form["steps"], True), batch_size=_typed(form["batch_size"], True),
        seed=_typed(form["seed"], True), device=form["device"], accumulate=form["accumulate"],
        autocast=form["autocast"],
        model=ModelConfig(levels=level_specs(rows), variant=form["variant"], residual=form["residual"],
                          norm=form["norm"]),
        # The weight box is disabled while the objective is off: a value left in it is not this run's.
        surprise=SurpriseConfig(enabled=form["surprise"], sign=form["sign"],
                                weights=(_typed(form["weight"], False),) if form["surprise"] else SurpriseConfig().weights),
        diverging_factor=_typed(form["diverging_factor"], False), diverging_stop=form["diverging_stop"],
    )
    resolve_device(config.device)  # the one setting only this machine can check
    return config


def run_summary(config: TrainConfig) -> str:
    """The run a config starts, in one line: `TrainConfig.describe` and the device it will train on."""
    from nlviz.live import run_device

    return f"{config.describe()}; on {run_device(config.device)}"


def config_form(key: str) -> tuple[TrainConfig | None, str | None]:
    """The run settings as widgets; returns (TrainConfig, None) or (None, the validation message).

    No widget clamps or rounds: inputs have no bounds, and numbers are floats shown with %g,
    so what reaches `train_config` is what the page shows, and the library's validation alone
    says what is allowed."""
    import pandas as pd

    shown = "%g"  # the browser's %g prints a number in full (JavaScript's own digits), neither rounded nor padded
    # Rows of two to four widgets: beside the sidebar on a 1000 px screen the form is about 480 px
    # wide, and five in a row cut their labels and values ("Re...", "seq").
    top = st.columns([3, 1])
    counts = st.columns(3)
    form: dict[str, Any] = {}
    form["task"] = top[0].selectbox("Task", list(TASKS), key=f"{key}_task", format_func=lambda t: f"{t}: {TASKS[t]}")
    # Floats even where the field is an integer: an integer input rounds a typed 1.5 to 1.
    form["steps"] = counts[0].number_input("Steps", value=float(DEFAULT_STEPS), step=500.0, format=shown, key=f"{key}_steps")
    form["batch_size"] = counts[1].number_input("Batch size", value=32.0, step=1.0, format=shown, key=f"{key}_batch")
    form["seed"] = counts[2].number_input("Seed", value=0.0, step=1.0, format=shown, key=f"{key}_seed")
    form["device"] = top[1].selectbox("Device", devices(), key=f"{key}_device",
                                      help="auto picks a GPU (CUDA, then MPS) when there is one, else the CPU")
    st.markdown("**Levels**, fast to slow: each updates every C(l) steps (its period) with its own optimizer")
    cfg = st.column_config
    levels = st.data_editor(
        pd.DataFrame(DEFAULT_LEVELS).astype({"period": float, "width": float, "hidden": float, "lr": float}),
        key=f"{key}_levels", num_rows="dynamic", hide_index=True,
        column_config={
            "period": cfg.NumberColumn("period C(l)", default=1, format=shown, required=True),
            "width": cfg.NumberColumn("width", width="small", help="d, the level's output width", default=64, format=shown, required=True),
            "hidden": cfg.NumberColumn("hidden", width="small", default=256, format=shown, required=True),
            "optimizer": cfg.SelectboxColumn("optimizer", options=list(OPTIMIZERS), default="adam", required=True,
                                             help="dgd: the delta rule of Eq 28-29 as an optimizer"),
            "lr": cfg.NumberColumn("learning rate", default=1e-3, format=shown, required=True),
        },
    )
    mid = st.columns([1, 1, 1.4])
    form["variant"] = mid[0].selectbox("Variant", list(VARIANTS), key=f"{key}_variant",
                                       help="sequential: the chain of Eq 30; independent: levels side by side, summed")
    form["accumulate"] = mid[1].selectbox("Chunk update", list(ACCUMULATE), key=f"{key}_accumulate",
                                          help="Eq 31 sums a chunk's gradients; mean divides by C(l) (a different choice)")
    form["autocast"] = mid[2].selectbox(
        "Forward pass", list(AUTOCAST), key=f"{key}_autocast",
        format_func=lambda a: "float32" if a == "none" else "bfloat16 (torch.autocast)",
        help="bf16 runs the forward pass under torch.autocast; weights and optimizer stay "
             "float32. Fast on GPUs with bf16 units, slow on most CPUs")
    wiring = st.columns(2)
    form["residual"] = wiring[0].toggle("Residual", True, key=f"{key}_residual")
    form["norm"] = wiring[1].toggle("LayerNorm", True, key=f"{key}_norm")
    sur = st.columns([1.7, 1, 2])
    form["surprise"] = sur[0].toggle("Surprise objective", False, key=f"{key}_surprise",
                                     help="each level also regresses its output y_l towards a target built from u_l")
    form["weight"] = sur[1].number_input("Weight", value=0.1, format=shown, key=f"{key}_weight",
                                         disabled=not form["surprise"])
    form["sign"] = sur[2].radio(
        "Target", list(SIGNS), key=f"{key}_sign", horizontal=True, disabled=not form["surprise"],
        format_func=lambda s: "v = -u (consistent)" if s == "consistent" else "v = +u (printed Eq 27: ascends the loss)")
    default = TrainConfig()
    watch = st.columns(2, vertical_alignment="bottom")
    form["diverging_factor"] = watch[0].number_input(
        "Diverging at x early loss", value=float(default.diverging_factor), format=shown, key=f"{key}_diverging",
        help=f"warn that the run is diverging at the first {diverging.rule('F')}; 0 = never")
    form["diverging_stop"] = watch[1].toggle("Stop if diverging", default.diverging_stop, key=f"{key}_diverging_stop",
                                           help="end the run there (diverged) instead of warning and training on")
    try:
        config = train_config(form, levels.to_dict("records"))
    except ConfigError as e:
        return None, str(e)
    st.caption(f"**Start** trains: {run_summary(config)}.")
    return config, None


def loss_panel(reader: RunReader, periods: tuple[int, ...], key: str, cursor: int | None = None) -> None:
    """The whole model's loss, over the page's full width."""
    scalars = reader.scalars("loss", level=0, max_points=PLOT_POINTS)
    fig = figures.loss_figure(scalars, None, periods, cursor=cursor)
    st.plotly_chart(figures.steady(fig).update_layout(height=320), key=f"{key}_chart_loss")


def level_panels(reader: RunReader, periods: tuple[int, ...], key: str, cursor: int | None = None) -> None:
    """Each level's surprise with its update ticks, the level clock and the update sizes."""
    import pandas as pd

    scalars = pd.concat([reader.scalars(name, max_points=PLOT_POINTS) for name in ("surprise_norm", "update_norm")])
    events, busy = reader.clock_events(len(periods), CLOCK_EVENTS)
    left, right = st.columns(2)
    steady = figures.steady
    left.plotly_chart(steady(figures.surprise_figure(scalars, events, periods, cursor=cursor, busy=busy)),
                      key=f"{key}_chart_surprise")
    right.plotly_chart(steady(figures.level_clock_figure(events, periods, cursor=cursor, busy=busy), left=140),
                       key=f"{key}_chart_clock")
    left.plotly_chart(steady(figures.update_norm_figure(scalars, periods, cursor=cursor)),
                      key=f"{key}_chart_update_norm")


def time_panels(reader: RunReader, periods: tuple[int, ...], key: str, cursor: int | None = None) -> None:
    """Every time panel: the loss, then the per-level panels."""
    loss_panel(reader, periods, key, cursor)
    level_panels(reader, periods, key, cursor)


def heatmap_panels(reader: RunReader, periods: tuple[int, ...], key: str, cursor: int | None = None,
                   choose_step: bool = False) -> None:
    """Heatmaps of a level's activations and surprise at one recorded step: the newest record
    at or before `cursor`, the step the page shows (None: the newest record). Tensors are
    recorded every few steps only (every 10 in dashboard runs), so that is the record a reader
    of step `cursor` has. With choose_step, a slider over the recorded steps that follows
    `cursor`: a step the user picks stays until `cursor` moves on, then the slider follows again.

    The step is written once, in each figure's title, not in the caption: a new figure is a
    new chart in the browser, drawn a few hundred ms after the text beside it, so a step in
    both would disagree on screen while the page refreshes."""
    steps = reader.tensor_steps("activation")
    every = reader.meta.get("cadence", {}).get("tensors_every")
    cadence = f"every {every} steps in this run" if every else "every few steps"
    if not steps:
        st.info(f"Heatmaps appear at the first tensor record ({cadence}).")
        return
    newest = max((s for s in steps if cursor is None or s <= cursor), default=None)
    if newest is None:
        st.info(f"No tensor record yet at or before step {cursor}: the first is at step {steps[0]} ({cadence}).")
        return
    pick = st.columns([1, 3])
    level = pick[0].selectbox("Heatmaps of level", range(1, len(periods) + 1), key=f"{key}_heat_level",
                              format_func=lambda l: f"level {l} (C={periods[l - 1]})")
    at, why = newest, "the newest record at or before the step this page shows" if cursor is not None else "the newest record"
    if choose_step and len(steps) > 1:  # a paused or ended run: any recorded step
        slider, pinned = f"{key}_heat_step", f"{key}_heat_pinned"
        # A widget's state outlives the value= it was created with, so the slider is set here,
        # before it is drawn: to the step the page shows, unless the user picked one at this very cursor.
        if st.session_state.get(pinned) != cursor or st.session_state.get(slider) not in steps:
            st.session_state[slider] = newest
            st.session_state.pop(pinned, None)
        at = pick[1].select_slider("Heatmaps at step", steps, key=slider, on_change=_pin, args=(pinned, cursor))
        if at != newest:
            why = "the step picked on the slider; it follows the run again once the run moves on"
    # Everything is read and built before anything is drawn, so the caption and both charts
    # leave in one burst and the browser never holds half of a refresh.
    charts = []
    for kind, title in (("activation", "activations y_l"), ("surprise", "surprise u_l = dL/dy_l")):
        try:
            _, sample = reader.tensor(at, level, kind)
        except KeyError:
            charts.append((kind, None))
            continue
        charts.append((kind, figures.heatmap_figure(sample, f"level {level}: {title}, step {at}")))
    st.caption(f"Activations y_l and surprise u_l of level {level}, at the step in each title: {why} "
               f"(tensors are recorded {cadence}). The first 4 examples of the batch (rows) by up to 64 units "
               "(columns).")
    for col, (kind, fig) in zip(st.columns(2), charts):
        if fig is None:
            col.info(f"No {kind} record for level {level} at step {at}.")
        else:
            col.plotly_chart(figures.steady(fig, right=90), key=f"{key}_heat_{kind}")


def _pin(pinned: str, cursor: int | None) -> None:
    """The user moved the heatmap slider: keep their step while the page's step stays `cursor`."""
    st.session_state[pinned] = cursor
