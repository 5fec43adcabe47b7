"""Start here: what nlviz shows, and a run one click away."""

from __future__ import annotations

import streamlit as st

import common
from nlviz import TrainConfig
from nlviz.store import RunStoreError

st.title("nlviz: see nested learning happen")
st.markdown(
    """
*Nested Learning: The Illusion of Deep Learning Architectures* (Behrouz, Razaviyayn, Zhong,
Mirrokni, NeurIPS 2025) reads a network as a set of nested memories, each learning at its own
frequency. Three ideas, each shown here from a live run:

- **Backprop is an associative memory (Eq 25-27).** One gradient step on a layer y = W x writes
  the pair (x, u) into W, where u = dL/dy is the layer's *local surprise*. Replacing the implicit
  dot-product objective by an L2 regression gives the **delta rule** (Eq 28-29), which erases what
  W already says about x before it writes.
- **A Continuum Memory System (Eq 30-31)** is a chain of MLP levels, each updated every C(l)
  steps by the sum of its chunk's gradients: fast levels are meant to track what changes quickly,
  slow ones what persists (the paper's claim; the **Results** page and notebook 03 test it in
  miniature, and report where it did not hold).
- **Every level has its own surprise**, and nlviz records it as it trains: activations, u_l,
  losses, and every update on the level clock.
"""
)


def start_default() -> None:
    config = TrainConfig(steps=common.DEFAULT_STEPS)  # the library's default model and task
    try:
        run = common.registry().create(config, **common.WRITER_OPTIONS)
        run.start()
        st.query_params["run"] = run.name
        st.session_state.started = run.name
    except (RunStoreError, ValueError) as e:  # RunBusyError is a ValueError
        st.session_state.home_error = str(e)


periods = ", ".join(str(p) for p in common.periods(None))
st.button(f"Start the default run ({len(common.DEFAULT_LEVELS)} levels, periods {periods}; {common.DEFAULT_STEPS} "
          f"steps on {common.default_device()})",
          type="primary", key="start_default", on_click=start_default)
if "home_error" in st.session_state:
    st.error(st.session_state.pop("home_error"))
if st.session_state.pop("started", None):
    st.switch_page("views/live.py")

st.markdown(
    """
Then: **Live run** to pause, step and watch each level; **Equations 25-29** to check the
equations on the recorded numbers; **Runs** to replay or compare recorded runs; **Results** for the experiments
(`make experiment NAME=capacity`), with their spread over seeds. The tutorial notebooks in
`notebooks/` go through the same equations by hand. Nothing to
install or download: runs train here (on a GPU if there is one) and are recorded in
`runs/`, one SQLite file each.
"""
)
