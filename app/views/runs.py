"""Runs: open any recorded run, replay it with one time cursor, and compare two runs.

The run, the comparison run, the step, the panels and the compared series and level live in
the URL (`st.query_params`), so a view can be shared and opens as it was."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import common
from nlviz import figures
from nlviz.store import RunStoreError

st.title("Runs")
st.caption(f"Every run recorded in `{common.runs_dir()}` by the dashboard or by `.venv/bin/python -m nlviz train --out ...`.")

runs = common.recorded_runs()
if not runs:
    st.info("No recorded run yet. Start one on the **Live run** page, or from a terminal with "
            "`.venv/bin/python -m nlviz train --out runs/NAME` (or `make demo`'s environment activated).")
    st.stop()

st.dataframe(
    pd.DataFrame([{"run": r.name, "status": r.shown_status, "steps": f"{r.last_step}/{r.total if r.total is not None else '?'}", "task": r.task,
                   "periods": ", ".join(map(str, r.periods)), "last seen": f"{r.age_s:.0f} s ago",
                   "message": r.message} for r in runs]),
    hide_index=True, key="runs_table")

readable = [r.name for r in runs if r.status != "unreadable"]
if not readable:
    st.stop()
wanted = st.query_params.get("run")
pick = st.columns(2)
name = pick[0].selectbox("Replay", readable, index=readable.index(wanted) if wanted in readable else 0, key="runs_run")
others = ["(none)"] + [n for n in readable if n != name]
wanted_other = st.query_params.get("compare")
other = pick[1].selectbox("Compare with", others, key="runs_compare",
                          index=others.index(wanted_other) if wanted_other in others else 0)
info = next(r for r in runs if r.name == name)
if info.status in ("diverged", "failed"):
    st.error(f"This run {info.status}: {info.message}. Its data up to there are kept below.")
if info.diverging and info.status != "diverged":
    st.warning(f"This run was flagged as {info.diverging}")

last = max(info.last_step, 1)
step = st.slider("Time cursor (step): moves every panel together", 1, last, key="runs_step",
                 value=min(max(common.query_int("step", last), 1), last))
panels = st.pills("Panels", ["time series", "heatmaps", "comparison"], selection_mode="multi", key="runs_panels",
                  default=[p for p in st.query_params.get("panels", "time series,heatmaps,comparison").split(",")
                           if p in ("time series", "heatmaps", "comparison")])
st.query_params.update(run=name, step=str(step), panels=",".join(panels))
if other != "(none)":
    st.query_params["compare"] = other
else:
    st.query_params.pop("compare", None)

try:
    with common.reading(info.path) as reader:
        if "time series" in panels:
            common.time_panels(reader, info.periods, key="replay", cursor=step)
        if "heatmaps" in panels:
            common.heatmap_panels(reader, info.periods, key="replay", cursor=step)
        comparing = "comparison" in panels and other != "(none)"
        if comparing:
            b = next(r for r in runs if r.name == other)
            with common.reading(b.path) as reader_b:
                st.subheader(f"{name} against {other}")
                names = list(figures.SERIES_LABELS)
                wanted_series = st.query_params.get("series")
                series = st.selectbox("Series", names, key="runs_series",
                                      format_func=lambda n: f"{n}: {figures.SERIES_LABELS[n]}",
                                      index=names.index(wanted_series) if wanted_series in names else 0)
                levels = list(range(1, max(len(info.periods), len(b.periods)) + 1))
                wanted_level = common.query_int("level", 1)
                level = 0 if series == "loss" else st.selectbox(
                    "Level", levels, key="runs_compare_level",
                    index=levels.index(wanted_level) if wanted_level in levels else 0)
                st.query_params.update(series=series, level=str(level))
                a_df = reader.scalars(series, level, max_points=common.PLOT_POINTS)
                b_df = reader_b.scalars(series, level, max_points=common.PLOT_POINTS)
                st.plotly_chart(figures.compare_figure(a_df, b_df, series, labels=(name, other), level=level,
                                                       cursor=step, periods=(info.periods, b.periods)),
                                key="runs_compare_fig")
        else:  # the URL names only what the page shows
            for key in ("series", "level"):
                st.query_params.pop(key, None)
except RunStoreError as e:
    st.error(str(e))
