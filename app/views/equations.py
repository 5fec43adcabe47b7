"""Equations 25-29 from a recorded run: backprop as an associative memory, its two objectives,
and the delta rule's erase term."""

from __future__ import annotations

import streamlit as st

import common
from nlviz import figures
from nlviz.store import RunStoreError

st.title("Equations 25-29, from data")
st.caption("Every number here was recorded while the run trained, and every formula is computed "
           "by nlviz from those numbers. Pick a run, a level and a recorded step.")

runs = [r for r in common.recorded_runs() if r.status != "unreadable"]
if not runs:
    st.info("No recorded run yet. Start one on the **Live run** page (one click), then come back.")
    st.stop()

names = [r.name for r in runs]
wanted = st.query_params.get("run")
pick = st.columns([2, 1, 1])
name = pick[0].selectbox("Run", names, index=names.index(wanted) if wanted in names else 0, key="eq_run",
                         format_func=lambda n: f"{n} ({next(r.status for r in runs if r.name == n)})")
info = next(r for r in runs if r.name == name)
level = pick[1].selectbox("Level", range(1, len(info.periods) + 1), key="eq_level",
                          index=min(max(common.query_int("level", 1), 1), len(info.periods)) - 1,
                          format_func=lambda l: f"level {l} (C={info.periods[l - 1]})")
try:
    with common.reading(info.path) as reader:
        steps = reader.memory_steps(level=level).step.tolist()
        if not steps:
            st.info("This run has no memory record for that level yet (they come every few steps while it trains, "
                    "and a level without a linear output layer, such as an LSTM level, has none).")
            st.stop()
        wanted_step = common.query_int("step", steps[-1])
        step = pick[2].select_slider("Recorded step", steps, key="eq_step",
                                     value=max((s for s in steps if s <= wanted_step), default=steps[0]))
        record = reader.memory(step, level)
        scalars = reader.scalars(level=level, max_points=common.PLOT_POINTS)
except RunStoreError as e:
    st.error(str(e))
    st.stop()
st.query_params.update(run=name, level=str(level), step=str(step))

st.header("Eq 25: a gradient step is a write into an associative memory")
st.latex(r"W_{t+1} = W_t - \eta\, \nabla_W L = W_t - \eta\, \nabla_y L \otimes x, \qquad "
         r"\nabla_W L = \textstyle\sum_b u_b\, x_b^\top, \quad u = \nabla_y L")
st.markdown(
    f"Level {level}'s output layer W ({record.shape[0]} x {record.shape[1]}) at step {step}. Its input x and its "
    f"surprise u were recorded for the whole batch of {record.batch}; nlviz sums u x^T over that batch, and autograd "
    f"computed dL/dW in the same backward pass. The right-hand panel is their difference: Eq 25 holds exactly, up to "
    f"float32 rounding. (Showing the first {record.weight.shape[0]} x {record.weight.shape[1]} block.)")
st.plotly_chart(figures.eq25_figure(record), key="eq25")

st.header("Eq 26 and 27: two objectives for the same memory")
st.latex(r"\text{(26)}\quad W_{t+1} = \arg\min_W\; \langle W x, \nabla_y L\rangle + \tfrac{1}{2\eta}\lVert W - W_t\rVert^2")
st.latex(r"\text{(27)}\quad W_{t+1} = \arg\min_W\; \tfrac12 \lVert W x - v\rVert^2 + \tfrac{1}{2\eta}\lVert W - W_t\rVert^2,"
         r"\qquad v = -\nabla_y L")
st.info("**Sign note.** The camera-ready paper prints the Eq 27 target as v = +grad_y L. That is a sign slip: with it "
        "the update ascends the task loss and contradicts the paper's own Eq 28. nlviz uses the consistent target "
        "v = -grad_y L (arXiv version, Eq 56/113); the surprise objective keeps the printed sign only as a labelled "
        "option, so its effect can be shown.")
st.plotly_chart(figures.objectives_figure(scalars, level), key="objectives")

st.header("Eq 28-29: the delta rule erases before it writes")
st.latex(r"W_{t+1} = W_t - a\,(W_t x + \nabla_y L)\, x^\top = W_t\,(I - a\,x x^\top) - a\,\nabla_y L \otimes x, "
         r"\qquad a = \frac{\eta}{1 + \eta \lVert x\rVert^2}")
st.markdown("The same (x, u) as above, one example at a time. The Hebbian write of Eq 26 ignores what W already "
            "says about x; the delta rule first removes it (the erase term), so after a large step W x lands on the "
            "target -u instead of overshooting.")
ctl = st.columns(2)
lr = ctl[0].select_slider("Step size eta", [10.0**e for e in range(-4, 5)], value=1.0, key="eq_lr",
                          format_func=lambda v: f"{v:g}")
row = ctl[1].selectbox("Example", range(record.x.shape[0]), key="eq_row", format_func=lambda r: f"row {r + 1} of the batch")
st.plotly_chart(figures.hebbian_vs_delta_figure(record, lr, row=row), key="eq2829")
