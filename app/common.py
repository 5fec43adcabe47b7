"""Wiring shared by the dashboard's pages: the run registry, where runs live, reading a run.

No maths and no figure code here: figures come from `nlviz.figures`, numbers from the run
store. The one decision to know: the registry of live runs is a `st.cache_resource`, so
every browser tab of this server sees the same runs, and a run outlives the tab that
started it. Pages only ever read the run store (bounded queries, decimated series); the
runs' training processes are the only writers.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import streamlit as st
import torch

from nlviz import ModelConfig, figures, open_run
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
DEFAULT_LEVELS = [{k: getattr(lv, k) for k in ("period", "width", "hidden", "optimizer", "lr")}
                  for lv in ModelConfig().levels]  # the levels table starts from the library's defaults
TASKS = {
    "multiscale": "multi-timescale regression: a fast and a slow drifting map",
    "recall": "associative recall of key-value pairs, keys optionally correlated",
    "digits": "class-incremental 8x8 digits, two classes per task",
}


def default_device() -> str:
    from nlviz.device import describe_device, resolve_device

    return describe_device(resolve_device("auto"))


def devices() -> list[str]:
    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def periods(run: LiveRun | None) -> tuple[int, ...]:
    return run.config.model.periods if run is not None else tuple(lv["period"] for lv in DEFAULT_LEVELS)


def config_form(key: str):
    """The run settings as widgets; returns (TrainConfig, None) or (None, the validation message)."""
    import pandas as pd

    from nlviz import LevelSpec, ModelConfig, SurpriseConfig, TrainConfig
    from nlviz.config import ConfigError

    top = st.columns([2, 1, 1, 1, 1])
    task = top[0].selectbox("Task", list(TASKS), key=f"{key}_task", format_func=lambda t: f"{t}: {TASKS[t]}")
    steps = top[1].number_input("Steps", 1, 10**7, DEFAULT_STEPS, step=500, key=f"{key}_steps")
    batch = top[2].number_input("Batch size", 1, 4096, 32, key=f"{key}_batch")
    seed = top[3].number_input("Seed", 0, 2**31 - 1, 0, key=f"{key}_seed")
    device = top[4].selectbox("Device", devices(), key=f"{key}_device",
                              help="auto picks a GPU (CUDA, then MPS) when there is one, else the CPU")
    st.markdown("**Levels**, fast to slow: each updates every C(l) steps (its period) with its own optimizer")
    cfg = st.column_config
    levels = st.data_editor(
        pd.DataFrame(DEFAULT_LEVELS), key=f"{key}_levels", num_rows="dynamic", hide_index=True,
        column_config={
            "period": cfg.NumberColumn("period C(l)", min_value=1, max_value=100_000, step=1, default=1, required=True),
            "width": cfg.NumberColumn("width d", min_value=1, max_value=4096, step=1, default=64, required=True),
            "hidden": cfg.NumberColumn("hidden", min_value=1, max_value=16384, step=1, default=256, required=True),
            "optimizer": cfg.SelectboxColumn("optimizer", options=["sgd", "adam", "dgd"], default="adam", required=True,
                                             help="dgd: the delta rule of Eq 28-29 as an optimizer"),
            "lr": cfg.NumberColumn("learning rate", min_value=1e-7, max_value=100.0, default=1e-3, format="%.0e",
                                   required=True),
        },
    )
    mid = st.columns([1, 1, 1, 1, 2])
    variant = mid[0].selectbox("Variant", ["sequential", "independent"], key=f"{key}_variant",
                               help="sequential: the chain of Eq 30; independent: levels side by side, summed")
    accumulate = mid[1].selectbox("Chunk update", ["sum", "mean"], key=f"{key}_accumulate",
                                  help="Eq 31 sums a chunk's gradients; mean divides by C(l) (a different choice)")
    residual = mid[2].toggle("Residual", True, key=f"{key}_residual")
    norm = mid[3].toggle("LayerNorm", True, key=f"{key}_norm")
    autocast = mid[4].selectbox("Forward pass", ["none", "bf16"], key=f"{key}_autocast",
                                format_func=lambda a: "float32" if a == "none" else "bfloat16 (torch.autocast)",
                                help="bf16 runs the forward pass under torch.autocast; weights and optimizer stay "
                                     "float32. Fast on GPUs with bf16 units, slow on most CPUs")
    sur = st.columns([1, 1, 2])
    surprise = sur[0].toggle("Surprise objective", False, key=f"{key}_surprise",
                             help="each level also regresses its output y_l towards a target built from u_l")
    weight = sur[1].number_input("Weight", 0.0, 100.0, 0.1, key=f"{key}_weight", disabled=not surprise)
    sign = sur[2].radio("Target", ["consistent", "printed"], key=f"{key}_sign", horizontal=True, disabled=not surprise,
                        format_func=lambda s: "v = -u (consistent)" if s == "consistent" else "v = +u (printed Eq 27: ascends the loss)")
    try:
        rows = levels.to_dict("records")
        specs = []
        for i, row in enumerate(rows):
            try:
                specs.append(LevelSpec(period=int(row["period"]), width=int(row["width"]), hidden=int(row["hidden"]),
                                       optimizer=row["optimizer"], lr=float(row["lr"])))
            except (TypeError, ValueError) as e:  # an empty cell in a new row
                raise ConfigError(f"level {i + 1}: every column needs a value ({e})") from None
            except ConfigError as e:
                raise ConfigError(f"level {i + 1} {e}") from None
        config = TrainConfig(
            task=task, steps=int(steps), batch_size=int(batch), seed=int(seed), device=device, accumulate=accumulate,
            autocast=autocast,
            model=ModelConfig(levels=tuple(specs), variant=variant, residual=residual, norm=norm),
            surprise=SurpriseConfig(enabled=surprise, weights=(float(weight),), sign=sign),
        )
        from nlviz.device import resolve_device

        resolve_device(config.device)
        return config, None
    except ConfigError as e:
        return None, str(e)


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
    """Heatmaps of a level's activations and surprise at a recorded step (the nearest at or
    before `cursor`, or the newest); with choose_step, a slider over the recorded steps."""
    steps = reader.tensor_steps("activation")
    if not steps:
        st.info("Heatmaps appear at the first tensor record (every 10 steps in dashboard runs).")
        return
    pick = st.columns([1, 3])
    level = pick[0].selectbox("Heatmaps of level", range(1, len(periods) + 1), key=f"{key}_heat_level",
                              format_func=lambda l: f"level {l} (C={periods[l - 1]})")
    at = max((s for s in steps if cursor is None or s <= cursor), default=steps[0])
    if choose_step and len(steps) > 1:  # a paused or ended run: any recorded step
        at = pick[1].select_slider("Heatmaps at step", steps, value=at, key=f"{key}_heat_step")
    st.caption(f"Activations y_l and surprise u_l of level {level} at step {at}: the first 4 examples of the batch "
               "(rows) by up to 64 units (columns); the nearest record at or before the selected step.")
    a, b = st.columns(2)
    for col, kind, title in ((a, "activation", "activations y_l"), (b, "surprise", "surprise u_l = dL/dy_l")):
        try:
            _, sample = reader.tensor(at, level, kind)
        except KeyError:
            col.info(f"No {kind} record for level {level} at step {at}.")
            continue
        fig = figures.heatmap_figure(sample, f"level {level}: {title}, step {at}")
        col.plotly_chart(figures.steady(fig, right=90), key=f"{key}_heat_{kind}")
