"""Results: the latest result of each experiment (`make experiment NAME=...`), table and figures.

Layout only: results are read by `nlviz.experiments.list_results` from $NLVIZ_RESULTS (else
./results), and every figure is rebuilt from result.json by `nlviz.experiments.figures`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from nlviz.experiments import EXPERIMENTS, list_results, results_dir
from nlviz.experiments import figures as experiment_figures

st.title("Results")
parent = results_dir()
st.caption(f"Experiments found in `{parent}`: the paper's claims in miniature, with their spread over seeds.")

found = list_results(parent)
if not found:
    st.info(f"No results yet. Run `make experiment NAME=capacity` in a terminal, in the project's folder (NAME one "
            f"of {', '.join(EXPERIMENTS)}; add `ARGS=--quick` for a run of seconds; the same as `.venv/bin/python -m "
            f"nlviz.experiments NAME`), and they appear here.")
    st.stop()

cfg = st.column_config


def fitting(column: pd.Series) -> int:
    """A column width (px) that shows its longest entry whole, up to a third of a wide page."""
    return min(24 + 7 * int(column.astype(str).str.len().max()), 320)


listing = pd.DataFrame([{"experiment": r["experiment"], "quick": r["quick"], "seeds": len(r["seeds"]),
                         "wall time (s)": round(r["wall_s"], 1), "finished (UTC)": r["finished"],
                         "directory": str(path)} for path, r in found])
st.dataframe(listing, hide_index=True, key="results_table", column_config={
    name: cfg.TextColumn(width=fitting(listing[name])) for name in ("experiment", "finished (UTC)", "directory")})

# One option per result directory (an experiment may have several, e.g. one written with --out).
names = [r["experiment"] for _, r in found]
wanted = st.query_params.get("experiment")
choice = st.selectbox("Experiment", range(len(found)), index=names.index(wanted) if wanted in names else 0,
                      format_func=lambda i: f"{names[i]} ({found[i][0]})", key="results_experiment")
path, result = found[choice]
st.query_params["experiment"] = result["experiment"]

st.subheader(result["title"])
st.markdown(f"**Question.** {result['question']}")
mode = "quick run (--quick): sizes for tests, not for conclusions" if result["quick"] else "full run"
m = result["machine"]
st.caption(f"{mode}; seeds {', '.join(map(str, result['seeds']))}; {result['wall_s']:.1f} s on {m['processor']} "
           f"({m['cores']} cores, torch {m['torch']}, {m['device']}); {result['png_note']}.")
st.markdown("**Findings** (computed from the numbers below)\n" + "\n".join(f"- {line}" for line in result["findings"]))

table = pd.DataFrame(result["summary"])
shown = [c for c in ("condition", "metric", "mean", "ci95", "std", "n", "parameters", "diverged_seeds") if c in table]
# Names get the width their longest entry needs, and the condition stays in view while the
# numbers scroll past on a narrow screen; numbers get 4 significant digits, so a mean of
# 2.9e-15 reads as that rather than as a row of zeros cut off by its column.
number = cfg.NumberColumn(format="%.4g", width="small")
st.dataframe(table[shown], hide_index=True, key="results_summary", column_config={
    "condition": cfg.TextColumn(width=fitting(table["condition"]), pinned=True),
    "metric": cfg.TextColumn(width=fitting(table["metric"])),
    "mean": number, "ci95": number, "std": number, "n": cfg.NumberColumn(width="small"),
    "parameters": cfg.NumberColumn(format="%d", width="small"),
    "diverged_seeds": cfg.NumberColumn("diverged seeds", width="small")})
st.caption("mean over seeds; ci95: half-width of the 95% interval from Student's t (empty with one seed). The "
           "figures draw that interval clipped to what the quantity can be (an error is never below 0, an "
           "accuracy lies in [0, 1]), as each figure's subtitle says.")

try:
    built = experiment_figures.build(result)
except (KeyError, TypeError, ValueError) as e:  # a result.json written by another version, or edited
    st.error(f"figures: {path / 'result.json'} does not hold what its figures need ({type(e).__name__}: {e})")
    st.stop()
for stem, fig in built.items():
    st.plotly_chart(fig, key=f"results_fig_{stem}")
