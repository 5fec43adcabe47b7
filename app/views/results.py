"""Results: the latest result of each experiment (`python -m nlviz.experiments NAME`), table and figures.

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
    st.info(f"No results yet. Run `python -m nlviz.experiments NAME` (NAME one of {', '.join(EXPERIMENTS)}; "
            f"add `--quick` for a run of seconds) and they appear here.")
    st.stop()

st.dataframe(pd.DataFrame([{"experiment": r["experiment"], "quick": r["quick"], "seeds": len(r["seeds"]),
                            "wall time (s)": round(r["wall_s"], 1), "finished (UTC)": r["finished"],
                            "directory": str(path)} for path, r in found]),
             hide_index=True, key="results_table")

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
st.dataframe(table[shown], hide_index=True, key="results_summary")
st.caption("mean over seeds; ci95: half-width of the 95% interval from Student's t (empty with one seed).")

try:
    built = experiment_figures.build(result)
except (KeyError, TypeError, ValueError) as e:  # a result.json written by another version, or edited
    st.error(f"figures: {path / 'result.json'} does not hold what its figures need ({type(e).__name__}: {e})")
    st.stop()
for stem, fig in built.items():
    st.plotly_chart(fig, key=f"results_fig_{stem}")
