"""Live run: configure, start, pause and step a CMS run, and watch each level (Eq 25-27, 31)."""

from __future__ import annotations

import streamlit as st

import common
from nlviz.config import ConfigError
from nlviz.store import RunStoreError

st.title("Live run")
st.caption(
    "Each level of a Continuum Memory System updates on its own clock (Eq 31) from its own "
    "surprise u_l = dL/dy_l (Eq 25). Start a run, pause it, step it one optimizer step at a "
    "time, or jump to the next update of a slow level, and watch what every level does."
)

run = common.live_run(st.query_params.get("run"))

with st.expander("Configure a new run", expanded=run is None):
    config, problem = common.config_form("live")
    if problem:
        st.error(problem)


def act(action: str) -> None:
    """Button callbacks run before the page is drawn again, so every control shows the new state."""
    current = common.live_run(st.query_params.get("run"))
    try:
        if action == "pause":
            current.pause()
        elif action in ("step", "step_to_update"):
            if action == "step":
                current.step(1)
            else:
                current.step_to_update(int(st.session_state.target_level))
            try:  # short steps are done before the page is drawn; long ones show as running
                current.wait(timeout=3.0)
            except TimeoutError:
                pass
        elif action == "stop":
            current.stop()
    except (ConfigError, RunStoreError, ValueError) as e:  # RunBusyError is a ValueError
        st.session_state.live_error = str(e)


state = run.state if run is not None else None
stepping = state in ("ready", "paused")
# Two rows of controls, so every label fits beside the sidebar on a 1000 px screen.
cols = st.columns(4, vertical_alignment="bottom")
# Start is handled in the page's body, not in a callback: a callback runs before the form is
# read, with the settings of the page's previous run, so a value typed just before the click
# would not be the one that runs.
start = cols[0].button("Start", type="primary", key="start",
                       disabled=state == "running" or (config is None and state != "paused"),
                       help="Start a new run with the settings above, or continue the paused one")
cols[1].button("Pause", key="pause", on_click=act, args=("pause",), disabled=state != "running")
cols[2].button("Step", key="step", on_click=act, args=("step",), disabled=not stepping,
               help="One optimizer step, then pause")
periods = common.periods(run)
cols[3].button("Stop", key="stop", on_click=act, args=("stop",), disabled=state not in ("ready", "running", "paused"))
to_update = st.columns([1, 1.4], vertical_alignment="bottom")
to_update[0].selectbox("Level", range(1, len(periods) + 1), key="target_level",
                       format_func=lambda l: f"level {l} (C={periods[l - 1]})")
to_update[1].button("Step to next update of level", key="step_to_update", on_click=act, args=("step_to_update",),
                    disabled=not stepping, help="Run until the chosen level's chunk ends and it updates (Eq 31)")

if start:
    try:
        if state == "paused":
            run.start()
        elif config is None:
            raise ConfigError(problem)
        else:
            new = common.registry().create(config, **common.WRITER_OPTIONS)
            new.start()
            st.query_params["run"] = new.name
    except (ConfigError, RunStoreError, ValueError) as e:  # RunBusyError is a ValueError
        st.session_state.live_error = str(e)
    st.rerun()  # draw every control again, for the run's new state

if "live_error" in st.session_state:
    st.error(st.session_state.pop("live_error"))

if run is None:
    st.info(f"No run yet: press **Start** to train the run configured above (by default a CMS with periods "
            f"{', '.join(map(str, periods))} on the multi-timescale task), on {common.default_device()}.")
    st.stop()

live = state == "running"
# The step every panel shows. A run that is not running does not move, so one read serves the
# metric and every panel alike, and the store has that step: a run reports paused (or ended)
# only after committing its store, and a Step waits for that report before the page is drawn.
# While it runs, each fragment reads the step when it refreshes (the per-level panels and the
# heatmaps are at most LEVELS_REFRESH_S behind the metric), and a heatmap's title names the
# record it shows: the newest at or before that step.
held_at = run.step_count


def shown_step() -> int:
    return run.step_count if live else held_at


# Three fragments, so the Step metric and the loss (what a learner watches step by step) are
# redrawn every 0.5 s without waiting for the heavier per-level panels, which follow every second.
@st.fragment(run_every=common.REFRESH_S if live else None)
def pulse() -> None:
    now, step = run.state, shown_step()
    # Two rows, so that at 1000 px the Step, "interrupted" and the device's name are shown whole.
    top = st.columns(2, vertical_alignment="bottom")
    top[0].metric("Step", step)
    top[1].metric("State", now)
    below = st.columns(2, vertical_alignment="bottom")
    below[0].metric("Device", run.device)
    below[1].progress(min(step / run.total, 1.0), text=f"{run.name}: {step} of {run.total} steps")
    if run.error:
        st.error(run.error)
    elif run.message:  # an interrupted run: by whom, and where
        resumable = (run.directory / "checkpoint.pt").exists()
        st.info(f"This run was {run.message}." + (f" `.venv/bin/python -m nlviz train --resume {run.directory}` "
                                                   "continues it." if resumable else ""))
    try:
        with common.reading(run.directory) as reader:
            diverging = reader.diverging  # nlviz.diverging's flag: the loss has grown by orders of magnitude
            if diverging:
                st.warning(diverging["message"])
            common.loss_panel(reader, periods, key="live")
    except RunStoreError as e:
        if not run.ended:  # an ended run without a store never trained: its message says so
            st.warning(f"The run store is not readable yet: {e}")
    if live and now != "running":
        st.rerun()  # the run paused or ended: draw the controls again once, and stop polling


@st.fragment(run_every=common.LEVELS_REFRESH_S if live else None)
def level_panels() -> None:
    try:
        with common.reading(run.directory) as reader:
            common.level_panels(reader, periods, key="live")
    except RunStoreError:
        pass  # the loss panel above says so


@st.fragment(run_every=common.LEVELS_REFRESH_S if live else None)
def heatmaps() -> None:
    try:
        with common.reading(run.directory) as reader:
            common.heatmap_panels(reader, periods, key="live", cursor=shown_step(), choose_step=not live)
    except RunStoreError:
        pass  # the loss panel above says so


pulse()
level_panels()
heatmaps()
