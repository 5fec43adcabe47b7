"""Figures of the experiments: pure functions from a result (the JSON dict) to plotly figures.

`build(result)` returns {file stem: Figure} for any experiment; the CLI writes them as HTML
(and PNG) and the dashboard's Results page draws them from result.json, so both always show
the same thing. Looks come from `nlviz.figures` (TEMPLATE, level colours and labels, the
Hebbian and delta colours). Means are drawn as lines or bars, 95% t intervals over seeds as
bands or error bars; nothing here reads files or computes a statistic. The one decision to
know: each figure knows the range of its quantity (an error is never below 0, an accuracy
lies in [0, 1]) and draws intervals clipped to it, saying so in its subtitle; result.json
keeps the unclipped interval.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import figures as looks

__all__ = ["build", "BUILDERS", "CONDITION_COLOURS"]

# Conditions that are not levels (models, rules, ablations) cycle through these, in order.
CONDITION_COLOURS = ("#333333",) + looks.LEVEL_COLOURS
LSQ_COLOUR = "#888888"


# What a quantity can be, as (lowest, highest): a 95% t interval over few seeds can reach past
# it (with 2 seeds its half-width is 12.7 standard errors), and is drawn clipped to it.
Bounds = tuple[float | None, float | None]
ERROR: Bounds = (0.0, None)  # recall errors and MSEs
FRACTION: Bounds = (0.0, 1.0)  # accuracies and shares of power
FORGETTING: Bounds = (-1.0, 1.0)  # best accuracy before minus now: negative when a task is recalled better later
ANY: Bounds = (None, None)  # regression coefficients


def _clip(v: float, bounds: Bounds) -> float:
    lo, hi = bounds
    v = v if lo is None else max(v, lo)
    return v if hi is None else min(v, hi)


def _bounds_note(bounds: Bounds) -> str:
    lo, hi = bounds
    if lo is None and hi is None:
        return ""
    return f", clipped at {lo:g}" if hi is None else f", clipped to [{lo:g}, {hi:g}]"


def _band(fig: go.Figure, x: Sequence, curve: dict[str, list], name: str, colour: str, dash: str = "solid",
          row: int | None = None, col: int | None = None, bounds: Bounds = ANY, floor: float | None = None) -> None:
    """A mean line with its interval as a shaded band, clipped to the quantity's bounds
    (skipped where the interval is unknown). floor: on a log axis, where a clipped interval
    reaches 0 its band runs down to this value, below the axis' range."""
    where = {} if row is None else {"row": row, "col": col}
    lo, hi = curve.get("lo"), curve.get("hi")
    if lo is not None and all(v is not None for v in lo + hi):
        lo, hi = [_clip(v, bounds) for v in lo], [_clip(v, bounds) for v in hi]
        if floor is not None:
            lo = [v if v > 0 else floor for v in lo]
        fig.add_trace(go.Scatter(x=list(x) + list(x)[::-1], y=list(hi) + list(lo)[::-1], fill="toself", mode="lines",
                                 fillcolor=looks.rgba(colour, 0.15), line=dict(width=0), hoverinfo="skip",
                                 showlegend=False, legendgroup=name, name=f"{name} 95% interval"), **where)
    fig.add_trace(go.Scatter(x=list(x), y=curve["mean"], mode="lines+markers", name=name, legendgroup=name,
                             line=dict(color=colour, dash=dash)), **where)


def _log_range(values: Sequence[float | None]) -> tuple[list[float] | None, float | None]:
    """A log axis' range (in log10 units) around the positive values, and a floor below it for
    the bands that reach 0 (which a log axis cannot show); (None, None) when none is positive."""
    positive = [v for v in values if v is not None and v > 0]
    if not positive:
        return None, None
    lo, hi = math.log10(min(positive)), math.log10(max(positive))
    pad = max(0.1 * (hi - lo), 0.15)
    return [lo - pad, hi + pad], 10.0 ** (lo - 2 * pad - 1)


def _title(result: dict[str, Any], text: str, bounds: Bounds = ANY, note: str | None = None) -> str:
    """The figure's title, and under it what is drawn: the seeds, the interval and how it is clipped."""
    seeds = len(result["seeds"])
    quick = ", --quick" if result.get("quick") else ""
    clipped = _bounds_note(bounds) if note is None else note
    return (f"{text}<br><sup>mean over {seeds} seed{'s' if seeds != 1 else ''} with 95% t interval"
            f"{clipped}{quick}</sup>")


def _error_bars(values: Sequence[dict[str, Any]], bounds: Bounds | Sequence[Bounds] = ANY) -> dict[str, Any]:
    """Error bars of the 95% interval, clipped to each value's bounds (one pair, or one per value)."""
    each = [bounds] * len(values) if not bounds or not isinstance(bounds[0], tuple) else list(bounds)
    up, down = [], []
    for v, (lo, hi) in zip(values, each):
        half, mean = v["ci95"] or 0, v["mean"]
        up.append(half if hi is None or mean is None else max(min(half, hi - mean), 0))
        down.append(half if lo is None or mean is None else max(min(half, mean - lo), 0))
    return dict(type="data", symmetric=False, array=up, arrayminus=down,
                visible=all(v["ci95"] is not None for v in values))


# ---------------------------------------------------------------------------- capacity
def capacity_figures(result: dict[str, Any]) -> dict[str, go.Figure]:
    data = result["data"]
    colours = {"hebbian": looks.RULE_COLOURS["hebbian"], "delta": looks.RULE_COLOURS["delta"],
               "least_squares": LSQ_COLOUR}
    names = {"hebbian": "Hebbian (Eq 26)", "delta": "delta rule (Eq 27-29)", "least_squares": "least squares (floor)"}
    y_title = "recall error  mean ||W k - v||^2 / mean ||v||^2"
    out = {}
    for key, x, x_title, text in (
        ("by_pairs", data["pairs"], f"pairs stored n (key width d = {data['width']})",
         f"Recall as the number of pairs passes the width d = {data['width']} (uncorrelated keys)"),
        ("by_correlation", data["correlations"], "pairwise key cosine (make_pairs correlation)",
         f"Recall of {data['pairs_for_correlation']} pairs as the keys grow correlated"),
    ):
        fig = go.Figure()
        for rule in ("hebbian", "delta", "least_squares"):
            _band(fig, x, data[key][rule], names[rule], colours[rule], "dot" if rule == "least_squares" else "solid",
                  bounds=ERROR)
        if key == "by_pairs":
            fig.add_vline(x=data["width"], line=dict(color="#888888", dash="dot"))
        fig.update_layout(template=looks.TEMPLATE, title=_title(result, text, ERROR), xaxis_title=x_title,
                          yaxis_title=y_title)
        out[f"recall_{key.removeprefix('by_')}"] = fig
    fig = go.Figure()
    sweeps = data["delta_by_sweeps"]
    y_range, floor = _log_range(sweeps["mean"] + (sweeps.get("lo") or []) + (sweeps.get("hi") or []))
    _band(fig, data["long_sweeps"], sweeps, names["delta"], colours["delta"], bounds=ERROR, floor=floor)
    fig.update_layout(template=looks.TEMPLATE, yaxis=dict(type="log", title=y_title + " (log)", range=y_range),
                      xaxis=dict(type="log", title="passes over the pairs (log)"),
                      title=_title(result, f"The delta rule at n = d = {data['width']} pairs: error against passes",
                                   note=", clipped at 0<br>(a band that reaches 0 runs off the log axis)"))
    out["delta_sweeps"] = fig
    return out


# ---------------------------------------------------------------------------- continual
def _per_task(result: dict[str, Any], key: str, y_title: str, text: str, bounds: Bounds) -> go.Figure:
    data = result["data"]
    fig = go.Figure()
    for i, name in enumerate(data["models"]):
        curve = data["curves"][name][key]
        keep = [j for j, m in enumerate(curve["mean"]) if m is not None]  # forgetting starts after task 2
        part = {k: [curve[k][j] for j in keep] if curve[k] is not None else None for k in ("mean", "lo", "hi")}
        _band(fig, [data["tasks"][j] for j in keep], part, name, CONDITION_COLOURS[i % len(CONDITION_COLOURS)],
              bounds=bounds)
    fig.update_layout(template=looks.TEMPLATE, title=_title(result, text, bounds),
                      yaxis=dict(title=y_title, range=[-0.03, 1.03] if bounds == FRACTION else None),
                      xaxis=dict(title="tasks trained so far", dtick=1))
    return fig


def _final_bars(result: dict[str, Any], metrics: dict[str, Bounds], text: str) -> go.Figure:
    """Grouped bars: one group per metric (with its bounds), one bar per condition, 95% intervals
    as error bars clipped to the bounds, which the subtitle names metric by metric."""
    rows = result["summary"]
    conditions = list(dict.fromkeys(r["condition"] for r in rows if r["metric"] in metrics))
    fig = go.Figure()
    for i, name in enumerate(conditions):
        values = [next(r for r in rows if r["condition"] == name and r["metric"] == m) for m in metrics]
        fig.add_trace(go.Bar(x=list(metrics), y=[v["mean"] for v in values], name=name,
                             error_y=_error_bars(values, list(metrics.values())),
                             marker_color=CONDITION_COLOURS[i % len(CONDITION_COLOURS)]))
    # ", clipped to [0, 1] (accuracy) and [-1, 1] (forgetting)": each bound once, named by its metric's last word
    parts = [f"{_bounds_note(b).removeprefix(', clipped to ').removeprefix(', clipped at ')} ({m.split()[-1]})"
             for m, b in metrics.items() if _bounds_note(b)]
    note = f", clipped to {' and '.join(parts)}" if parts else ""
    fig.update_layout(template=looks.TEMPLATE, barmode="group", title=_title(result, text, note=note))
    return fig


def continual_figures(result: dict[str, Any]) -> dict[str, go.Figure]:
    return {
        "average_accuracy": _per_task(result, "average_accuracy", "average accuracy over the tasks seen",
                                      "Class-incremental digits: average accuracy after each task", FRACTION),
        "forgetting": _per_task(result, "forgetting", "average forgetting (best before - now)",
                                "Class-incremental digits: average forgetting after each task", FORGETTING),
        "final": _final_bars(result, {"final average accuracy": FRACTION, "final average forgetting": FORGETTING},
                             "After the last task: average accuracy and forgetting"),
    }


# ---------------------------------------------------------------------------- levels
def _levels_metric(result: dict[str, Any], metric: str, log: bool, bounds: Bounds) -> go.Figure:
    """The metric against the number of levels, one line per lowest period P (one level starts every line)."""
    rows = {r["condition"]: r for r in result["summary"] if r["metric"] == result["data"]["metrics"][metric]}
    conds = result["data"]["conditions"]
    one = [c for c in conds if c["levels"] == 1]
    fig = go.Figure()
    for i, lowest in enumerate(sorted({c["lowest_period"] for c in conds if c["levels"] > 1})):
        line = one + [c for c in conds if c["lowest_period"] == lowest and c["levels"] > 1]
        values = [rows[c["label"]] for c in line]
        fig.add_trace(go.Scatter(x=[c["levels"] for c in line], y=[v["mean"] for v in values], mode="lines+markers",
                                 name=f"slowest period P = {lowest}", error_y=_error_bars(values, bounds),
                                 line=dict(color=looks.LEVEL_COLOURS[i % len(looks.LEVEL_COLOURS)]),
                                 text=[c["label"] for c in line], hovertemplate="%{text}: %{y:.4g}<extra></extra>"))
    label = result["data"]["metrics"][metric]
    fig.update_layout(template=looks.TEMPLATE, title=_title(result, f"{label} against the number of levels", bounds),
                      xaxis=dict(title="levels k (same parameter count)", dtick=1),
                      yaxis=dict(title=label + (" (log)" if log else ""), type="log" if log else "linear"))
    return fig


def levels_figures(result: dict[str, Any]) -> dict[str, go.Figure]:
    return {
        "multiscale_mse": _levels_metric(result, "mse", log=True, bounds=ERROR),
        "multiscale_mse_vs_slow": _levels_metric(result, "mse_vs_slow_only", log=True, bounds=ERROR),
        "digits_accuracy": _levels_metric(result, "average_accuracy", log=False, bounds=FRACTION),
        "digits_forgetting": _levels_metric(result, "forgetting", log=False, bounds=FORGETTING),
    }


# ---------------------------------------------------------------------------- ablation
def ablation_figures(result: dict[str, Any]) -> dict[str, go.Figure]:
    rows = [r for r in result["summary"] if r["metric"] == "multiscale MSE (2nd half)"]
    fig = go.Figure(go.Bar(x=[r["mean"] for r in rows], y=[r["condition"] for r in rows], orientation="h",
                           error_x=_error_bars(rows, ERROR),
                           marker_color=[CONDITION_COLOURS[0]] + [looks.LEVEL_COLOURS[0]] * (len(rows) - 1)))
    full = rows[0]["mean"]
    if full is not None:
        fig.add_vline(x=full, line=dict(color="#888888", dash="dot"))
    fig.update_layout(template=looks.TEMPLATE, title=_title(result, "Ablations: multiscale MSE over the second half",
                                                            ERROR),
                      xaxis_title="MSE (lower is better; dotted: the full model)", yaxis=dict(autorange="reversed"),
                      height=120 + 40 * len(rows))
    return {"ablation_mse": fig}


# ---------------------------------------------------------------------------- co2
def co2_figures(result: dict[str, Any]) -> dict[str, go.Figure]:
    data = result["data"]
    names = data["models"]
    seed = data["seed_shown"]
    contrib = make_subplots(rows=len(names), cols=1, shared_xaxes=True, subplot_titles=names, vertical_spacing=0.08)
    spectra = make_subplots(rows=1, cols=len(names), shared_yaxes=True, subplot_titles=names)
    for i, name in enumerate(names, start=1):
        periods = data["periods"][name]
        contrib.add_trace(go.Scatter(x=data["dates"], y=data["target"], name="CO2 (standardised)", legendgroup="target",
                                     showlegend=i == 1, line=dict(color=looks.MODEL_COLOUR, width=1)), row=i, col=1)
        for l, values in enumerate(data["contributions"][name], start=1):
            label = f"{looks.level_label(l, periods)} contribution"
            contrib.add_trace(go.Scatter(x=data["dates"], y=values, name=label, legendgroup=f"{name}{l}",
                                         line=dict(color=looks.level_colour(l), width=1)), row=i, col=1)
            spectra.add_trace(go.Scatter(x=data["spectra"][name]["freq"], y=data["spectra"][name]["power"][l - 1],
                                         name=f"{name}: {looks.level_label(l, periods)}", mode="lines",
                                         line=dict(color=looks.level_colour(l), dash="solid" if i == 1 else "dot")),
                              row=1, col=i)
        for f in (1, 2):
            spectra.add_vline(x=f, line=dict(color="#888888", dash="dot"), row=1, col=i)
    contrib.update_layout(template=looks.TEMPLATE, height=300 * len(names),
                          title=f"Each level's contribution to the prediction during the last pass (seed {seed})")
    spectra.update_yaxes(type="log", title_text="share of the contribution's power", row=1, col=1)
    spectra.update_xaxes(title_text="cycles per year")
    spectra.update_layout(template=looks.TEMPLATE,
                          title=f"Frequency content of each level's contribution (seed {seed})")
    rows = [r for r in result["summary"] if "share" in r["metric"]]
    shares = go.Figure()
    for i, metric in enumerate(("seasonal share of power", "low-frequency share of power")):
        part = [r for r in rows if r["metric"] == metric]
        shares.add_trace(go.Bar(x=[r["condition"] for r in part], y=[r["mean"] for r in part], name=metric,
                                error_y=_error_bars(part, FRACTION), marker_color=looks.LEVEL_COLOURS[i + 4]))
    shares.add_hline(y=data["target_shares"]["seasonal"], line=dict(color=looks.LEVEL_COLOURS[4], dash="dot"))
    shares.add_hline(y=data["target_shares"]["low"], line=dict(color=looks.LEVEL_COLOURS[5], dash="dot"))
    shares.update_layout(template=looks.TEMPLATE, barmode="group", yaxis=dict(title="share of power", range=[0, 1]),
                         title=_title(result, "Seasonal and low-frequency shares per level (dotted: the CO2 series)",
                                      FRACTION))
    carried = go.Figure()
    for i, metric in enumerate(("share of the trend carried", "share of the season carried")):
        part = [r for r in result["summary"] if r["metric"] == metric]
        carried.add_trace(go.Bar(x=[r["condition"] for r in part], y=[r["mean"] for r in part], name=metric,
                                 error_y=_error_bars(part), marker_color=looks.LEVEL_COLOURS[i]))
    carried.update_layout(template=looks.TEMPLATE, barmode="group", yaxis_title="least-squares coefficient",
                          title=_title(result, "What each level carries: its contribution regressed on STL trend "
                                               "and season"))
    return {"contributions": contrib, "spectra": spectra, "shares": shares, "carried": carried}


BUILDERS: dict[str, Callable[[dict[str, Any]], dict[str, go.Figure]]] = {
    "capacity": capacity_figures,
    "continual": continual_figures,
    "levels": levels_figures,
    "ablation": ablation_figures,
    "co2": co2_figures,
}


def build(result: dict[str, Any]) -> dict[str, go.Figure]:
    """Every figure of a result, by file stem, each with its legend under the plot (at the side
    it would take a third of a chart on a 1000 px screen) and its title in lines that fit."""
    figures = BUILDERS[result["experiment"]](result)
    for fig in figures.values():
        title = looks.wrap_title(fig.layout.title.text or "")
        fig.update_layout(title_text=title, margin=dict(t=looks.title_margin(title),
                                                        b=80 + looks.legend_below(fig, per_row=2)))
    return figures
