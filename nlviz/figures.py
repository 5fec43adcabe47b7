"""Figures: pure functions from run-store data to plotly figures (shared by the app and notebooks).

Every builder takes what `nlviz.open_run(...)` accessors return (DataFrames from `scalars`,
`level_updates`, `tensor_stats`; arrays from `tensor`; a `MemoryRecord` from `memory`) or
plain values, and returns a `plotly.graph_objects.Figure`. Nothing here reads files, prints
or imports streamlit.

What each figure shows:
    loss_figure              the task loss L of the whole model (store level 0) against step t
    surprise_figure          ||u_l|| = ||dL/dy_l|| per level (Eq 25's local surprise), with each
                             level's update ticks (Eq 31) in a strip below
    level_clock_figure       Eq 31's clock from the recorded events: level l updates at
                             t = C(l), 2C(l), ...
    update_norm_figure       ||theta_after - theta_before|| of each Eq 31 update
    objectives_figure        Eq 26 <W x, u> and Eq 27 1/2 ||W x + u||^2 (target v = -u) of a
                             level's output layer
    eq25_figure              Eq 25 from data: sum_b u_b x_b^T beside autograd's dL/dW
    hebbian_vs_delta_figure  Eq 26 (Hebbian) vs Eq 27-29 (delta rule) for one recorded (x, u)
    heatmap_figure, histogram_figure, tensor_stats_figure, compare_figure: recorded tensors
                             and one series of two runs
Notebook experiments (pure functions of the arrays and tables a notebook computes):
    surprise_check_figure    captured u_l against autograd's dL/dy_l, entry by entry (04)
    seed_curves_figure       a curve per condition: mean over seeds and the seeds' range (04)
    seed_summary_figure      per group of runs: mean, standard deviation and each seed (04, 05)
    image_strip_figure       small images side by side, e.g. one digit per class (05)
    forgetting_curves_figure accuracy on each task as later tasks are trained (05)
    level_drift_figure       how far each level's parameters move during each task (05)

The decisions to know. Long runs are drawn from the series they are given: pass
`run.scalars(..., max_points=N)` (min/max decimated by the store) and the figures draw every
row, vectorised, with WebGL past GL_POINTS points; no builder loops over points in Python.
Chunk shading (`add_chunk_shading`) is limited to what stays readable: alternate chunks of
one level, the slowest with 2 to MAX_CHUNKS chunks in view, or none. The clock draws every
event as a mark up to BAND_EVENTS per level, and past that the level as one band whose hover
says how many events it stands for. Each level has one colour in every figure (LEVEL_COLOURS),
and levels are numbered from 1; level 0 is the whole model. Non-finite values (stored as
NULL) arrive as NaN and are drawn as gaps; a panel with no finite value, or a heatmap with
some, says so and why (a float16 sample overflows past 65504). Looks live in one place:
TEMPLATE writes numbers as powers of ten (never SI's "500p"), legends go in rows under the
plot (`legend_below`), and the figures with rows of panels are laid out in pixels, so that
each fits a full-width chart on a 1000 px screen (540 px) and a half-width one (260 px).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from .store import MemoryRecord

__all__ = [
    "LEVEL_COLOURS", "MODEL_COLOUR", "RULE_COLOURS", "SERIES_LABELS", "GL_POINTS", "BAND_EVENTS", "MAX_CHUNKS",
    "NO_DATA", "level_colour", "level_label", "periods_from_config", "add_chunk_shading", "loss_figure",
    "surprise_figure", "level_clock_figure", "update_norm_figure", "heatmap_figure", "histogram_figure",
    "objectives_figure", "eq25_figure", "MemoryUpdates", "memory_updates", "hebbian_vs_delta_figure",
    "compare_figure", "tensor_stats_figure", "steady", "legend_below", "wrap_title", "title_margin", "rgba",
    "RUN_COLOURS", "STEP_TICKS", "NARROW_TICKS",
    "CATEGORY_COLOURS", "surprise_check_figure", "seed_curves_figure", "seed_summary_figure", "image_strip_figure",
    "forgetting_curves_figure", "level_drift_figure", "multiscale_drift_figure",
]

# ---------------------------------------------------------------------------- one place for looks
# Okabe-Ito, colour-blind safe, without its yellow (unreadable on white) and black (the model).
LEVEL_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C564B", "#7F7F7F")
MODEL_COLOUR = "#333333"  # level 0: the whole model (the loss)
RULE_COLOURS = {"before": "#9E9E9E", "hebbian": "#E69F00", "delta": "#009E73", "target": "#222222"}
# ColorBrewer Dark2 (plotly.colors.qualitative.Dark2): categories that are not levels (tasks, conditions, runs).
CATEGORY_COLOURS = ("#1B9E77", "#D95F02", "#7570B3", "#E7298A", "#66A61E", "#E6AB02", "#A6761D", "#666666")
# compare_figure: first run, second run. Purple against orange stays apart for colour-blind
# readers, and the dash tells them apart in grey print too.
RUN_COLOURS = (CATEGORY_COLOURS[2], CATEGORY_COLOURS[1])
RUN_DASHES = ("solid", "dash")


def _template() -> go.layout.Template:
    """plotly_white with large and small numbers as powers of ten (5x10^-10): plotly's default
    SI suffixes ("500p", "20u") read as units to a learner."""
    template = go.layout.Template(pio.templates["plotly_white"])
    for axis in (template.layout.xaxis, template.layout.yaxis, template.layout.coloraxis.colorbar):
        axis.exponentformat = "power"
    for trace in template.data.heatmap:
        trace.colorbar.exponentformat = "power"
    return template


TEMPLATE = _template()
STEP_TICKS = dict(exponentformat="none", separatethousands=True)  # steps are counts: 20,000, not 2x10^4
# The step axis of a figure the dashboard draws in a half-width chart (162 px of plot at 1000 px):
# at most 3 intervals, so labels are >= 54 px apart and "150,000" (45 px) stays clear of its neighbours.
# Plotly's own choice never goes under 4 intervals (5 labels 40 px apart: "1,000" runs into "1,500").
NARROW_TICKS = 3
DIVERGING = "RdBu_r"  # RdBu with negative blue and positive red, always symmetric around 0
GL_POINTS = 5000  # a trace with more points is drawn with WebGL (Scattergl)
# A level with more update events is drawn as one band: past a few hundred the marks are under
# two pixels apart (unreadable), and thousands of SVG marks make a live page slow to redraw.
BAND_EVENTS = 150
MAX_MARKERS = 300  # a marker series with more points is drawn as a line (update sizes of fast levels)
MAX_CHUNKS = 60  # chunk shading only for a level with at most this many chunks in view
SHADE_OPACITY = 0.08
GAP_COLOUR = "#BDBDBD"  # a heatmap cell with no finite value (white would read as 0)
NO_DATA = "no data yet"
BLANK = "no finite values here:<br>every recorded value is NaN or infinite"  # the store keeps those as NULL
FLOAT16_MAX = 65504.0  # the largest float16: a sample of a run that blows up overflows past it
# px: one row of a horizontal legend of 11 px text (plotly: max(1.3 x 11, 16) + 3), and the legend's
# padding; exact, as plotly keeps an axis title above the legend it measures (see legend_below).
LEGEND_ROW = 19
LEGEND_PAD = 10
TITLE_LINE = 22  # px: one more line of a figure's title
TITLE_CHARS = 52  # characters of a title line that fit a full-width chart at 1000 px (540 px)
HALF_TITLE_CHARS = 26  # the same for a half-width chart at 1000 px (262 px), e.g. the heatmaps
NO_LEGEND = frozenset({"heatmap"})  # trace types plotly leaves out of the legend unless told

# Axis titles in words with the maths in them, one per recorded series.
SERIES_LABELS = {
    "loss": "loss L",
    "surprise_norm": "||u_l|| = ||dL/dy_l||",
    "activation_norm": "||y_l||",
    "dot_objective": "<W x, u> (Eq 26)",
    "l2_objective": "1/2 ||W x + u||^2 (Eq 27, v = -u)",
    "update_norm": "||theta_after - theta_before||",
}
LOG_SERIES = frozenset({"loss", "surprise_norm", "update_norm"})  # positive and spanning decades


def level_colour(level: int) -> str:
    """The colour of level `level` (from 1) in every figure; level 0 is the whole model."""
    return MODEL_COLOUR if level == 0 else LEVEL_COLOURS[(level - 1) % len(LEVEL_COLOURS)]


def level_label(level: int, periods: Sequence[int] | None = None) -> str:
    """'level 2 (C=8)', or 'level 2' when the periods are not known; level 0 is 'whole model'."""
    if level == 0:
        return "whole model"
    if periods is not None and 1 <= level <= len(periods):
        return f"level {level} (C={periods[level - 1]})"
    return f"level {level}"


def periods_from_config(config: dict[str, Any]) -> tuple[int, ...]:
    """C(l) of each level, from `run.config` (the stored TrainConfig dict)."""
    return tuple(int(lv["period"]) for lv in config["model"]["levels"])


# ---------------------------------------------------------------------------- shared pieces
def _empty(title: str, message: str = NO_DATA) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=16, color="#888888"), name="no-data")
    fig.update_layout(template=TEMPLATE, title=title)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _step_axis(fig: go.Figure, nticks: int | None = None, **where: Any) -> None:
    """Step ticks on every x axis (panels sharing x hide theirs), the title on the given one;
    nticks: at most this many intervals (NARROW_TICKS for a figure in a half-width chart)."""
    fig.update_xaxes(**STEP_TICKS, **({"nticks": nticks} if nticks else {}))
    fig.update_xaxes(title_text="step t", **where)


def _not_finite(values: np.ndarray, short: bool = False) -> str:
    """Why some of `values` are not finite, in words. An infinity in a float16 array is an
    overflow: the store keeps tensor samples as float16, whose largest value is 65504."""
    v = np.asarray(values)
    if np.isinf(v).any() and v.dtype == np.float16:
        return "float16 overflow" if short else f"the recorded float16 sample overflowed (|value| > {FLOAT16_MAX:.0f})"
    if np.isinf(v).any():
        return "infinite" if short else "the recorded values are infinite"
    return "NaN" if short else "the recorded values are NaN"


def _gaps(z: np.ndarray) -> np.ndarray:
    """A heatmap's values with each infinity as NaN: plotly draws NaN as a blank cell, but
    paints an infinity in the end colour of the scale, as if it were a value."""
    z = np.asarray(z)
    finite = np.isfinite(z)
    return z if finite.all() else np.where(finite, z, np.nan)


def _say_why_blank(fig: go.Figure, reason: str = BLANK) -> go.Figure:
    """Write `reason` across each panel whose traces hold values but not one finite value: an
    axis with nothing on it would look like a drawing that failed."""
    panels: dict[tuple[str, str], list[np.ndarray]] = {}
    for t in fig.data:
        data = t.z if t.type == "heatmap" else (t.x if getattr(t, "orientation", None) == "h" else t.y)
        if data is None:
            continue
        try:
            values = np.asarray(data, dtype=np.float64).ravel()
        except (TypeError, ValueError):  # None among the numbers: a NULL from the store
            values = pd.to_numeric(pd.Series(np.ravel(np.asarray(data, dtype=object))), errors="coerce").to_numpy(np.float64)
        panels.setdefault((t.xaxis or "x", t.yaxis or "y"), []).append(values)
    for (xa, ya), arrays in panels.items():
        values = np.concatenate(arrays)
        if values.size and not np.isfinite(values).any():
            x0, x1 = fig.layout["xaxis" + xa[1:]].domain or (0, 1)
            y0, y1 = fig.layout["yaxis" + ya[1:]].domain or (0, 1)
            fig.add_annotation(text=reason, x=(x0 + x1) / 2, y=(y0 + y1) / 2, xref="paper", yref="paper",
                               showarrow=False, font=dict(size=13, color="#888888"), name="not-finite")
    return fig


def _scatter_type(n: int) -> type:
    return go.Scattergl if n > GL_POINTS else go.Scatter


def rgba(colour: str, alpha: float) -> str:
    """'#RRGGBB' as an rgba() string with the given opacity (shading, interval bands)."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _power(v: float) -> str:
    """A finite tick label as the template writes numbers: 0.0052, or 5.2x10^-10 past 10^-3 and 10^4."""
    if v == 0:
        return "0"
    e = math.floor(math.log10(abs(v)))
    text = f"{v:.2g}" if -3 <= e < 4 else f"{v / 10.0 ** e:.2g}\u00d710<sup>{e}</sup>"
    return text.replace("-", "\u2212")  # plotly's own labels use the minus sign, not a hyphen


@dataclass(frozen=True)
class _Stack:
    """Rows of panels laid out in pixels: heights of the rows (top first), the gap between
    rows, and the figure's top and bottom margins. Axis titles, tick labels and colour bars
    need pixels, not fractions of a height, so the plan is made in pixels and converted."""

    rows: tuple[int, ...]
    gap: int
    top: int
    bottom: int

    @property
    def height(self) -> int:
        return self.top + sum(self.rows) + self.gap * (len(self.rows) - 1) + self.bottom

    @property
    def plot(self) -> int:
        return self.height - self.top - self.bottom

    def subplots(self, **kwargs: Any) -> go.Figure:
        return make_subplots(rows=len(self.rows), row_heights=list(self.rows), vertical_spacing=self.gap / self.plot,
                             **kwargs)

    def below(self, fig: go.Figure, axis: str, px: int) -> float:
        """The paper y `px` pixels below the bottom of the panel of y axis `axis` ('y', 'y3')."""
        name = "yaxis" + axis[1:]
        return fig.layout[name].domain[0] - px / self.plot


_PANEL_TITLE = 13  # px: subplot titles that fit a third of a 540 px chart
# Eq 25 in two rows: x and u (a few batch rows each) on top, the three (r, c) blocks below.
_EQ25 = _Stack(rows=(150, 340), gap=165, top=100, bottom=95)
# Eq 28-29: the three update blocks on top, with one colour bar under them; the readouts below.
_EQ2829 = _Stack(rows=(250, 220), gap=165, top=118, bottom=50)
# Eq 26 over Eq 27 on one step axis; room between them for a two-line panel title.
_OBJECTIVES = _Stack(rows=(170, 170), gap=50, top=100, bottom=60)


def _series(df: pd.DataFrame | None, name: str, level: int | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{level: (steps, values)} of one named scalar, sorted by step, NaN where the store had NULL."""
    if df is None or len(df) == 0:
        return {}
    rows = df[df["name"] == name]
    if level is not None:
        rows = rows[rows["level"] == level]
    out = {}
    for lv, g in rows.groupby("level", sort=True):  # one group per level, never per point
        g = g.sort_values("step", kind="stable")
        out[int(lv)] = (g["step"].to_numpy(np.int64), pd.to_numeric(g["value"], errors="coerce").to_numpy(np.float64))
    return out


def _line(x: np.ndarray, y: np.ndarray, name: str, colour: str, value_label: str, mode: str = "lines",
          group: str | None = None, **kwargs: Any) -> go.Scatter:
    style: dict[str, Any] = dict(line=dict(color=colour, width=1.5)) if "lines" in mode else {}
    if "markers" in mode:
        style["marker"] = dict(color=colour, size=6)
    style.update(kwargs)  # a caller's line or marker style wins
    return _scatter_type(len(x))(
        x=x, y=y, name=name, mode=mode, legendgroup=group or name, connectgaps=False,
        hovertemplate=f"{name}<br>step %{{x}}<br>{value_label} = %{{y:.4g}}<extra></extra>", **style)


def _symmetric(z: np.ndarray, mid: float = 0.0) -> float:
    """Half-width of a colour range symmetric around `mid` holding every finite value."""
    finite = np.abs(z[np.isfinite(z)] - mid)
    m = float(finite.max()) if finite.size else 0.0
    return m if m > 0 else 1.0  # an all-zero (or all-NaN) panel still gets a valid range


def _add_cursor(fig: go.Figure, cursor: int | float | None) -> None:
    """The selected step: one line over every panel (panels here share their x axis)."""
    if cursor is not None:
        fig.add_shape(type="line", x0=cursor, x1=cursor, xref="x", y0=0, y1=1, yref="paper", name="cursor",
                      line=dict(color="#444444", width=1, dash="dot"))


def _x_range(*arrays: np.ndarray) -> tuple[float, float] | None:
    steps = [a for a in arrays if len(a)]
    if not steps:
        return None
    return float(min(a.min() for a in steps)), float(max(a.max() for a in steps))


def add_chunk_shading(fig: go.Figure, periods: Sequence[int] | None, x_range: tuple[float, float] | None,
                      max_chunks: int = MAX_CHUNKS) -> go.Figure:
    """Shade alternate Eq 31 chunks of one level, below the traces, and name the level.

    Chunk k of a level with period C spans steps (kC, (k+1)C] and ends with its update at
    t = (k+1)C, so rectangle edges fall on multiples of C (clipped to x_range). The level is
    the slowest with 2..max_chunks chunks in view: one chunk has no boundary to show, and
    more than max_chunks stripes are no longer readable. Nothing is added when none qualifies.
    """
    if not periods or x_range is None:
        return fig
    lo, hi = x_range
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return fig
    chosen = None
    for level in sorted(range(1, len(periods) + 1), key=lambda l: (-periods[l - 1], l)):  # slowest first
        C = periods[level - 1]
        first, last = math.floor(lo / C), math.ceil(hi / C)  # chunk indices k in view: first .. last - 1
        if 2 <= last - first <= max_chunks:
            chosen = level, C, first, last
            break
    if chosen is None:
        return fig
    level, C, first, last = chosen
    colour = level_colour(level)
    shapes = [dict(type="rect", xref="x", yref="paper", x0=max(k * C, lo), x1=min((k + 1) * C, hi), y0=0, y1=1,
                   fillcolor=colour, opacity=SHADE_OPACITY, line=dict(width=0), layer="below", name="chunk")
              for k in range(first, last) if k % 2 == 0]  # at most max_chunks / 2 shapes
    fig.update_layout(shapes=list(fig.layout.shapes) + shapes)
    label = level_label(level, periods)
    # Short enough for a half-width chart; the rest is in its hover.
    fig.add_annotation(text=f"shaded: alternate chunks of {label}", hovertext=f"{label} updates at each edge of a chunk",
                       x=0, y=1, xref="paper", yref="paper", xanchor="left", yanchor="bottom", showarrow=False,
                       font=dict(size=10, color=colour), name="chunk-note")
    return fig


# Levels whose update events were too many to fetch one by one: level -> (count, first, last).
Busy = Mapping[int, tuple[int, int, int]]


def _levels(updates: pd.DataFrame | None, periods: Sequence[int] | None, busy: Busy | None = None) -> list[int]:
    known = set(range(1, len(periods) + 1)) if periods else set()
    if updates is not None and len(updates):
        known |= {int(l) for l in updates["level"].unique()}
    known |= set(busy or ())
    return sorted(l for l in known if l >= 1)


def _band(level: int, count: int, first: int, last: int, regular: bool, periods: Sequence[int] | None,
          show_legend: bool, suffix: str) -> go.Bar:
    """A level too busy to draw mark by mark: one bar from its first to its last update."""
    label, colour = level_label(level, periods), level_colour(level)
    C = periods[level - 1] if periods and level <= len(periods) else None
    every = f"every C={C} steps" if regular else "not evenly spaced"
    text = (f"{label}: {count} updates, steps {first}..{last}, {every}<br>"
            f"drawn as a band: more than {BAND_EVENTS} marks would not be readable")
    return go.Bar(x=[max(int(last - first), 1)], base=[int(first)], y=[level], orientation="h", width=0.5,
                  name=label + suffix, legendgroup=label, showlegend=show_legend,
                  marker=dict(color=colour, opacity=0.45, line=dict(width=0)), hovertemplate=text + "<extra></extra>")


def _clock_traces(updates: pd.DataFrame | None, periods: Sequence[int] | None, size: int = 14,
                  show_legend: bool = True, suffix: str = "", busy: Busy | None = None) -> list[go.BaseTraceType]:
    """One trace per level (named label + suffix, grouped with the level's other traces): a
    mark at each update event, or one band past BAND_EVENTS events (or for a `busy` level)."""
    traces: list[go.BaseTraceType] = []
    for level in _levels(updates, periods, busy):
        C = periods[level - 1] if periods and level <= len(periods) else None
        if busy and level in busy:
            count, first, last = busy[level]
            regular = C is not None and count == (last - first) // C + 1 and first % C == 0 and last % C == 0
            traces.append(_band(level, count, first, last, regular, periods, show_legend, suffix))
            continue
        if updates is None:
            continue
        steps = np.sort(updates.loc[updates["level"] == level, "step"].to_numpy(np.int64))
        if not len(steps):
            continue
        if len(steps) > BAND_EVENTS:
            regular = C is not None and bool(np.all(np.diff(steps) == C))
            traces.append(_band(level, len(steps), int(steps[0]), int(steps[-1]), regular, periods, show_legend, suffix))
            continue
        label, colour = level_label(level, periods), level_colour(level)
        first = np.maximum(steps - (C or 1) + 1, 1)  # the chunk whose gradients this update sums
        hover = (f"{label} updates at t = %{{x}}<br>sums the gradients of steps %{{customdata}}..%{{x}}<extra></extra>"
                 if C else f"{label} updates at t = %{{x}}<extra></extra>")
        traces.append(_scatter_type(len(steps))(
            x=steps, y=np.full(len(steps), level), customdata=first, mode="markers", name=label + suffix,
            legendgroup=label,
            showlegend=show_legend, hovertemplate=hover,
            marker=dict(symbol="line-ns-open", size=size, color=colour, line=dict(width=2, color=colour))))
    return traces


def _level_axis(levels: list[int], periods: Sequence[int] | None, short: bool = False) -> dict[str, Any]:
    text = [f"level {l}" if short else level_label(l, periods) for l in levels]
    return dict(tickmode="array", tickvals=levels, ticktext=text, range=[min(levels) - 0.6, max(levels) + 0.6],
                zeroline=False, showgrid=False)


def _timeline(series: dict[int, tuple[np.ndarray, np.ndarray]], title: str, y_title: str, value_label: str,
              updates: pd.DataFrame | None, periods: Sequence[int] | None, cursor: int | float | None,
              log_y: bool, mode: str = "lines", busy: Busy | None = None, nticks: int | None = None) -> go.Figure:
    """Per-level series on one panel, with an update strip below when `updates` is given;
    nticks: at most this many step intervals (`_step_axis`)."""
    has_updates = (updates is not None and len(updates) > 0) or bool(busy)
    if not any(len(x) for x, _ in series.values()) and not has_updates:
        return _empty(title)
    strip = has_updates and len(_levels(updates, periods, busy)) > 0
    if strip:
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.82, 0.18], vertical_spacing=0.03)
    else:
        fig = go.Figure()
    where = dict(row=1, col=1) if strip else {}
    for level, (x, y) in series.items():
        label = "loss (whole model)" if level == 0 else level_label(level, periods)
        # Past MAX_MARKERS points, marks merge into a line anyway, and cost a redraw far more.
        shown = "lines" if mode == "markers" and len(x) > MAX_MARKERS else mode
        fig.add_trace(_line(x, y, label, level_colour(level), value_label, mode=shown,
                            group=level_label(level, periods)), **where)
    if strip:
        for trace in _clock_traces(updates, periods, size=9, show_legend=False, suffix=" updates", busy=busy):
            fig.add_trace(trace, row=2, col=1)
        fig.update_yaxes(title_text="updates", row=2, col=1,
                         **_level_axis(_levels(updates, periods, busy), periods, short=True))
        _step_axis(fig, nticks, row=2, col=1)
        fig.update_yaxes(title_text=y_title, type="log" if log_y else "linear", row=1, col=1)
        fig.update_layout(barmode="overlay")
    else:
        _step_axis(fig, nticks)
        fig.update_yaxes(title_text=y_title, type="log" if log_y else "linear")
    steps = [x for x, _ in series.values()] + ([updates["step"].to_numpy()] if updates is not None and len(updates) else [])
    steps += [np.array([first, last]) for _, first, last in (busy or {}).values()]
    add_chunk_shading(fig, periods, _x_range(*steps))
    _add_cursor(fig, cursor)
    fig.update_layout(template=TEMPLATE, title=title, legend_title_text="level", hovermode="closest")
    return _say_why_blank(fig)


def wrap_title(text: str, width: int = TITLE_CHARS) -> str:
    """A title's first line broken into lines of at most `width` characters (plotly never
    wraps a title; a long one runs off a narrow chart). What follows its first <br> is kept."""
    head, sep, rest = text.partition("<br>")
    return "<br>".join(textwrap.wrap(head, width)) + sep + rest if len(head) > width else text


def title_margin(title: str, one_line: int = 60) -> int:
    """The top margin (px) that holds a title of this many lines (each <br> starts one)."""
    return one_line + TITLE_LINE * title.count("<br>")


def _legend_entries(fig: go.Figure) -> int:
    """How many entries plotly's legend will show. Plotly draws a legend once two traces could
    be in it, counting those told not to show (a band under its line) but not heatmaps."""
    capable = [t for t in fig.data if t.showlegend or t.type not in NO_LEGEND]
    entries = sum(1 for t in capable if t.showlegend is not False)
    if fig.layout.showlegend is False or not entries or (len(capable) < 2 and fig.layout.showlegend is not True):
        return 0
    return entries


def _legend_height(entries: int, per_row: int) -> int:
    return LEGEND_ROW * math.ceil(entries / per_row) + LEGEND_PAD if entries else 0


def legend_below(fig: go.Figure, per_row: int = 1) -> int:
    """Put the legend in rows at the bottom of the figure; return the pixels those rows take.

    A legend at the side takes its widest entry's width from the plot, which leaves a
    half-width chart nearly no plot; in rows under the x axis it takes height instead. The
    rows are counted for `per_row` entries a row (what the narrowest chart holds: one in a
    half-width chart at 1000 px, two in a full-width one), so the margin is known before drawing.

    The count must not fall short: plotly keeps an x axis title above a legend anchored to the
    container, so with fixed margins (`steady`) a legend taller than its rows pushes the title
    up onto the tick labels. Hence no gap between legend groups (plotly's 10 px tracegroupgap
    would make each row of a one-level-per-group legend 29 px, not LEGEND_ROW)."""
    entries = _legend_entries(fig)
    if entries:
        # Its title ("level") would take a place in the first row; the entries name their levels.
        fig.update_layout(legend=dict(orientation="h", xref="container", x=0, xanchor="left", yref="container", y=0,
                                      yanchor="bottom", font=dict(size=11), title_text="", tracegroupgap=0))
    return _legend_height(entries, per_row)


def steady(fig: go.Figure, left: int = 70, right: int = 30, top: int = 60, bottom: int = 50) -> go.Figure:
    """Fixed margins for a figure that is redrawn several times a second (the live page).

    By default plotly measures legends, colour bars and tick labels after drawing and, if
    they do not fit, grows the margins and draws again; profiling the live page in chromium
    put a third of its drawing time in those passes. With fixed margins each redraw is one
    pass. The margins are worked out from the figure, never measured: `top` holds a one-line
    title and grows by a line for each further one (each `<br>`), `bottom` holds the x axis
    and grows by the legend's rows, which go under the plot (`legend_below`) so that a
    half-width chart keeps its width; `right` holds a colour bar when the caller gives it one."""
    title = fig.layout.title.text or ""
    fig.update_layout(margin=dict(l=left, r=right, t=title_margin(title, top),
                                  b=bottom + legend_below(fig), autoexpand=False))
    return fig


# ---------------------------------------------------------------------------- time series
def loss_figure(scalars: pd.DataFrame | None, updates: pd.DataFrame | None = None,
                periods: Sequence[int] | None = None, cursor: int | float | None = None,
                log_y: bool = True, busy: Busy | None = None) -> go.Figure:
    """The whole model's task loss L (store level 0, name 'loss') against step t; with
    `updates`, each level's Eq 31 update ticks below; with `periods`, chunk shading.
    busy: levels whose events were too many to fetch, as (count, first, last): drawn as bands."""
    series = _series(scalars, "loss", level=0)
    return _timeline(series, "Task loss L of the whole model", "loss L" + (" (log scale)" if log_y else ""),
                     "L", updates, periods, cursor, log_y, busy=busy)


def surprise_figure(scalars: pd.DataFrame | None, updates: pd.DataFrame | None, periods: Sequence[int] | None,
                    cursor: int | float | None = None, busy: Busy | None = None) -> go.Figure:
    """Each level's local surprise ||u_l|| = ||dL/dy_l|| (Eq 25) on a log axis, its Eq 31
    update ticks in a strip below, chunk boundaries shaded."""
    series = {l: s for l, s in _series(scalars, "surprise_norm").items() if l >= 1}
    return _timeline(series, "Local surprise per level (Eq 25)<br><sup>||u_l|| = ||dL/dy_l||, update ticks below</sup>",
                     "||u_l|| = ||dL/dy_l|| (log scale)", "||u_l||", updates, periods, cursor, log_y=True, busy=busy,
                     nticks=NARROW_TICKS)


def update_norm_figure(scalars: pd.DataFrame | None, periods: Sequence[int] | None = None,
                       cursor: int | float | None = None) -> go.Figure:
    """The size ||theta_after - theta_before|| of each level's Eq 31 updates, as markers."""
    series = {l: s for l, s in _series(scalars, "update_norm").items() if l >= 1}
    return _timeline(series, "Update size per level (Eq 31)<br><sup>||theta_after - theta_before||</sup>",
                     "||theta_after - theta_before|| (log scale)", "||delta theta||", None, periods, cursor,
                     log_y=True, mode="markers", nticks=NARROW_TICKS)


def level_clock_figure(updates: pd.DataFrame | None, periods: Sequence[int] | None,
                       steps: int | tuple[int, int] | None = None, cursor: int | float | None = None,
                       busy: Busy | None = None) -> go.Figure:
    """Eq 31's clock as recorded: a mark at each (step, level) update event given, level 1 at
    the bottom. A level with more than BAND_EVENTS events is one band (its hover says so).
    steps: the x range to show, the run's length or (first, last); default the events'.
    busy: levels whose events were too many to fetch, as (count, first, last): drawn as bands."""
    title = "Level clock (Eq 31)<br><sup>level l updates at t = C(l), 2C(l), ...</sup>"
    if (updates is None or len(updates) == 0) and not busy:
        return _empty(title)
    fig = go.Figure(_clock_traces(updates, periods, busy=busy))
    levels = _levels(updates, periods, busy)
    fig.update_yaxes(title_text="level (period C)", **_level_axis(levels, periods))
    _step_axis(fig, nticks=NARROW_TICKS - 1)  # its tick labels leave 92 px of plot in a half-width chart
    if steps is not None:
        lo, hi = (1, steps) if isinstance(steps, (int, np.integer)) else steps
        fig.update_xaxes(range=[lo - 0.5, hi + 0.5])
    _add_cursor(fig, cursor)
    # No legend: the tick labels name each level beside its marks, in its colour.
    fig.update_layout(template=TEMPLATE, title=title, barmode="overlay", showlegend=False,
                      height=max(300, 120 + 60 * len(levels)))
    return fig


def objectives_figure(scalars: pd.DataFrame | None, level: int, periods: Sequence[int] | None = None,
                      cursor: int | float | None = None) -> go.Figure:
    """Level `level`'s output layer read as a memory over time: Eq 26's dot objective <W x, u>
    (top) and Eq 27's L2 objective 1/2 ||W x + u||^2 with target v = -u (bottom)."""
    label = level_label(level, periods)
    title = f"{label}: its output layer's Eq 26 and Eq 27 objectives<br><sup>each summed over the batch</sup>"
    dot = _series(scalars, "dot_objective", level).get(level)
    l2 = _series(scalars, "l2_objective", level).get(level)
    if dot is None and l2 is None:
        return _empty(title)
    fig = _OBJECTIVES.subplots(cols=1, shared_xaxes=True, subplot_titles=(
        "Eq 26: dot objective <W x, u>",
        "Eq 27: L2 objective 1/2 ||W x + u||^2<br>target v = -u (the printed +u is a sign slip)"))
    fig.update_annotations(font_size=_PANEL_TITLE)
    colour = level_colour(level)
    if dot is not None:
        fig.add_trace(_line(*dot, f"{label} <W x, u>", colour, "<W x, u>", group="dot"), row=1, col=1)
    if l2 is not None:
        fig.add_trace(_line(*l2, f"{label} 1/2 ||W x + u||^2", colour, "1/2 ||W x + u||^2", group="l2",
                            line=dict(color=colour, width=1.5, dash="dash")), row=2, col=1)
    fig.update_yaxes(title_text="<W x, u>", row=1, col=1)
    fig.update_yaxes(title_text="1/2 ||W x + u||^2", row=2, col=1)
    _step_axis(fig, row=2, col=1)
    _add_cursor(fig, cursor)
    # No legend: each panel holds one series, named by its title.
    fig.update_layout(template=TEMPLATE, title=title, hovermode="closest", showlegend=False, height=_OBJECTIVES.height,
                      margin=dict(t=_OBJECTIVES.top, b=_OBJECTIVES.bottom, r=30))
    return _say_why_blank(fig)


def compare_figure(a: pd.DataFrame | None, b: pd.DataFrame | None, name: str, labels: tuple[str, str] = ("A", "B"),
                   level: int | None = None, cursor: int | float | None = None,
                   periods: tuple[Sequence[int] | None, Sequence[int] | None] = (None, None)) -> go.Figure:
    """One scalar series `name` of two runs: the first run solid in RUN_COLOURS[0], the second
    dashed in RUN_COLOURS[1], named in the legend. level None draws every level the runs
    recorded, one panel per level (colour says which run, so it cannot also say which level)."""
    value_label = SERIES_LABELS.get(name, name)
    shared = periods[0] if periods[0] == periods[1] else None  # a period in a title only where both runs agree
    of = f" of {level_label(level, shared)}" if level else ""
    title = f"{value_label}{of}: {labels[0]} (solid) vs {labels[1]} (dashed)"
    runs = [(_series(df, name, level), run_label, colour, dash, run_periods)
            for df, run_label, colour, dash, run_periods in zip((a, b), labels, RUN_COLOURS, RUN_DASHES, periods)]
    levels = sorted({lv for series, *_ in runs for lv in series})
    if not levels:
        return _empty(title)
    log = "log" if name in LOG_SERIES else "linear"
    if len(levels) > 1:
        fig = make_subplots(rows=len(levels), cols=1, shared_xaxes=True, vertical_spacing=0.3 / len(levels),
                            subplot_titles=["loss (whole model)" if lv == 0 else level_label(lv, shared) for lv in levels])
        fig.update_layout(height=150 + 170 * len(levels))
    else:
        fig = go.Figure()
    for series, run_label, colour, dash, run_periods in runs:
        for lv, (x, y) in series.items():
            label = f"{run_label}: {'loss (whole model)' if lv == 0 else level_label(lv, run_periods)}"
            where = dict(row=levels.index(lv) + 1, col=1) if len(levels) > 1 else {}
            fig.add_trace(_line(x, y, label, colour, name, group=label, line=dict(color=colour, width=1.5, dash=dash)),
                          **where)
    _step_axis(fig, **(dict(row=len(levels), col=1) if len(levels) > 1 else {}))
    fig.update_yaxes(type=log)
    fig.update_yaxes(title_text=value_label, **(dict(row=1, col=1) if len(levels) > 1 else {}))
    _add_cursor(fig, cursor)
    fig.update_layout(template=TEMPLATE, title=title, hovermode="closest")
    fig.update_layout(margin=dict(r=30, b=50 + legend_below(fig, per_row=2)))
    return _say_why_blank(fig)


def tensor_stats_figure(stats: pd.DataFrame | None, kind: str, periods: Sequence[int] | None = None,
                        cursor: int | float | None = None) -> go.Figure:
    """Per level, the mean +- std band and the min and max of a recorded tensor kind
    ('activation' y_l, 'surprise' u_l, 'input' x of the output layer) over time."""
    names = {"activation": "activation y_l", "surprise": "surprise u_l = dL/dy_l", "input": "input x of the output layer"}
    title = f"{names.get(kind, kind)}<br><sup>mean +- std (band), min and max (dotted) per level</sup>"
    rows = stats[stats["kind"] == kind] if stats is not None and len(stats) else None
    if rows is None or not len(rows):
        return _empty(title)
    fig = go.Figure()
    for level, g in rows.groupby("level", sort=True):
        g = g.sort_values("step", kind="stable")
        x = g["step"].to_numpy(np.int64)
        v = {k: pd.to_numeric(g[k], errors="coerce").to_numpy(np.float64) for k in ("mean", "std", "min", "max")}
        label, colour, group = level_label(int(level), periods), level_colour(int(level)), f"level {level}"
        cls = _scatter_type(len(x))
        fig.add_trace(cls(x=x, y=v["mean"] + v["std"], mode="lines", line=dict(width=0, color=colour),
                          legendgroup=group, showlegend=False, name=f"{label} mean + std", hoverinfo="skip"))
        fig.add_trace(cls(x=x, y=v["mean"] - v["std"], mode="lines", line=dict(width=0, color=colour),
                          fill="tonexty", fillcolor=rgba(colour, 0.2), legendgroup=group, showlegend=False,
                          name=f"{label} mean - std", hoverinfo="skip"))
        fig.add_trace(cls(x=x, y=v["mean"], customdata=v["std"], mode="lines", line=dict(color=colour, width=1.5),
                          legendgroup=group, name=label, connectgaps=False,
                          hovertemplate=f"{label}<br>step %{{x}}<br>mean = %{{y:.4g}} +- %{{customdata:.3g}}<extra></extra>"))
        for k in ("min", "max"):
            fig.add_trace(_line(x, v[k], f"{label} {k}", colour, k, group=group, showlegend=False,
                                line=dict(color=colour, width=1, dash="dot")))
    _step_axis(fig)
    fig.update_yaxes(title_text=f"{kind} value")
    _add_cursor(fig, cursor)
    fig.update_layout(template=TEMPLATE, title=title, legend_title_text="level", hovermode="closest")
    return _say_why_blank(fig)


# ---------------------------------------------------------------------------- recorded tensors
def _last_clause_below(title: str, width: int = HALF_TITLE_CHARS) -> str:
    """A title longer than `width` characters with its last ", " clause on a second line:
    "level 1: surprise u_l = dL/dy_l,<br>step 2180" (plotly never wraps a title). With "<br>"
    read as a space it is the title given."""
    head, sep, tail = title.rpartition(", ")
    return f"{head},<br>{tail}" if len(title) > width and sep and "<br>" not in title else title


def heatmap_figure(sample: np.ndarray | None, title: str, zmid: float = 0.0) -> go.Figure:
    """A (rows, cols) sample, e.g. `run.tensor(step, level, kind)[1]`, as a diverging heatmap
    symmetric around zmid: rows are examples of the batch, columns units. Non-finite cells are
    grey, and the figure says how many and why (a float16 sample overflows past 65504).
    A title longer than a half-width chart holds (the dashboard's heatmaps sit side by side)
    has its last clause, e.g. "step 2180", on a second line."""
    name, title = title, _last_clause_below(title)
    if sample is None or np.size(sample) == 0:
        return _empty(title)
    z = np.asarray(sample, dtype=np.float32)  # float16 is not a plotly-friendly dtype
    bad = ~np.isfinite(z)
    if bad.all():
        return _empty(title, "no finite values:<br>" + _not_finite(sample).replace(" (", "<br>("))
    m = _symmetric(z, zmid)
    fig = go.Figure(go.Heatmap(z=_gaps(z), zmin=zmid - m, zmax=zmid + m, colorscale=DIVERGING, name=name,
                               colorbar=dict(thickness=12),  # leaves its tick labels room in a 90 px margin
                               hovertemplate="example %{y}, unit %{x}<br>value = %{z:.4g}<extra></extra>"))
    if bad.any():  # the blank cells show the background: grey, so they are not read as 0 (white)
        fig.update_layout(plot_bgcolor=GAP_COLOUR)
        fig.add_annotation(text=f"{int(bad.sum())} of {bad.size} grey: {_not_finite(sample, short=True)}",
                           hovertext=_not_finite(sample), x=0, y=1, xref="paper", yref="paper", xanchor="left",
                           yanchor="bottom", showarrow=False, font=dict(size=10, color="#888888"), name="not-finite")
    fig.update_xaxes(title_text="unit")
    fig.update_yaxes(title_text="example (row of the batch)", autorange="reversed", dtick=1 if len(z) <= 16 else None)
    fig.update_layout(template=TEMPLATE, title=title)
    return fig


def histogram_figure(hist: np.ndarray | None, lo: float | None, hi: float | None, title: str) -> go.Figure:
    """The recorded fixed-bin histogram: len(hist) equal bins over [lo, hi] = [min, max]."""
    if hist is None or len(hist) == 0:
        return _empty(title)
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return _empty(title, "no finite range recorded (the tensor had non-finite values)")
    counts = np.asarray(hist, dtype=np.int64)
    n = len(counts)
    width = (hi - lo) / n if hi > lo else 1.0 / n  # a constant tensor lands in the first bin
    left = lo + width * np.arange(n)
    fig = go.Figure(go.Bar(x=left + width / 2, y=counts, width=width, customdata=np.stack([left, left + width], 1),
                           marker=dict(color="#5A7FA8", line=dict(width=0)), name=title,
                           hovertemplate="[%{customdata[0]:.4g}, %{customdata[1]:.4g}): %{y}<extra></extra>"))
    fig.update_xaxes(title_text=f"value ({n} bins over [min, max])")
    fig.update_yaxes(title_text="count")
    fig.update_layout(template=TEMPLATE, title=title, bargap=0)
    return fig


def _colourbar(fig: go.Figure, axis: str, name: str, span: float, panels: Sequence[int], y: float) -> None:
    """A horizontal colour bar under the given panels (x axis numbers), symmetric around 0,
    its top at paper y; ticks at -span, 0 and span so that they fit a narrow panel."""
    lo = fig.layout[f"xaxis{panels[0] if panels[0] > 1 else ''}"].domain[0]
    hi = fig.layout[f"xaxis{panels[-1] if panels[-1] > 1 else ''}"].domain[1]
    fig.layout[axis] = dict(colorscale=DIVERGING, cmin=-span, cmax=span, colorbar=dict(
        orientation="h", x=(lo + hi) / 2, xanchor="center", len=(hi - lo) * 0.8, y=y, yanchor="top", thickness=10,
        tickvals=[-span, 0, span], ticktext=[_power(-span), "0", _power(span)], tickfont=dict(size=10),
        title=dict(text=name, side="bottom", font=dict(size=11))))




def eq25_figure(record: MemoryRecord | None) -> go.Figure:
    """Eq 25 from data: the recorded input rows x and surprise rows u, the outer-product sum
    sum_b u_b x_b^T over the batch (nlviz), autograd's dL/dW of that step, and their
    difference, with its max |.| in the title. Outer and grad share one colour scale."""
    title = "Eq 25 from data: dL/dW = sum_b u_b x_b^T"
    if record is None or record.outer.size == 0:
        return _empty(title)
    diff = record.outer - record.grad
    finite = np.abs(diff[np.isfinite(diff)])
    max_diff = float(finite.max()) if finite.size else float("nan")
    rows, (r, c) = len(record.x), record.outer.shape
    plan = _EQ25
    fig = plan.subplots(cols=6, horizontal_spacing=0.07, specs=[
        [{"colspan": 3}, None, None, {"colspan": 3}, None, None],
        [{"colspan": 2}, None, {"colspan": 2}, None, {"colspan": 2}, None]], subplot_titles=(
        f"x: inputs ({rows} of B={record.batch} rows)", f"u = dL/dy ({rows} rows)",
        f"sum_b u_b x_b^T<br>(nlviz, all B={record.batch})", "dL/dW<br>(autograd)",
        f"outer - grad<br>max |.| = {max_diff:.2e}"))
    fig.update_annotations(font_size=_PANEL_TITLE)
    panels = (("x", record.x, "coloraxis", 1, 1), ("u", record.u, "coloraxis2", 1, 4),
              ("outer", record.outer, "coloraxis3", 2, 1), ("grad", record.grad, "coloraxis3", 2, 3),
              ("difference", diff, "coloraxis4", 2, 5))
    for name, z, axis, row, col in panels:
        fig.add_trace(go.Heatmap(z=_gaps(z), coloraxis=axis, name=name,
                                 hovertemplate=f"{name}[%{{y}}, %{{x}}] = %{{z:.4g}}<extra></extra>"), row=row, col=col)
    top, low = plan.below(fig, "y", 52), plan.below(fig, "y3", 52)  # under each row's tick labels and axis titles
    _colourbar(fig, "coloraxis", "x", _symmetric(record.x), [1], top)
    _colourbar(fig, "coloraxis2", "u", _symmetric(record.u), [2], top)
    _colourbar(fig, "coloraxis3", "sum u x^T and dL/dW (one scale)",
               max(_symmetric(record.outer), _symmetric(record.grad)), [3, 4], low)
    _colourbar(fig, "coloraxis4", "difference", _symmetric(diff), [5], low)
    # One y title per row: the panels of a row share their rows (examples b, or output units i),
    # and a title on each would run into the panel to its left.
    for name, xt, yt, row, col in (("x", "input unit j", "example b", 1, 1), ("u", "output unit i", None, 1, 4),
                                   ("outer", "input unit j", "output unit i", 2, 1), ("grad", "input unit j", None, 2, 3),
                                   ("difference", "input unit j", None, 2, 5)):
        fig.update_xaxes(title_text=xt, title_standoff=4, row=row, col=col)
        fig.update_yaxes(title_text=yt, autorange="reversed", dtick=1 if row == 1 else None, row=row, col=col)
    d_out, d_in = record.shape
    fig.update_layout(template=TEMPLATE, height=plan.height, margin=dict(t=plan.top, b=plan.bottom, l=60, r=20),
                      title=(f"{title}<br><sup>level {record.level}, step {record.step}; "
                             f"block {r}x{c} of W's {d_out}x{d_in}</sup>"))
    return _say_why_blank(fig)


@dataclass(frozen=True)
class MemoryUpdates:
    """Eq 26 vs Eq 27-29 for one recorded (x, u): blocks (r, c) of the weight changes and the
    readouts (r,) after each; float64."""

    a: float  # the delta rule's step lr / (1 + lr ||x||^2)
    hebbian: np.ndarray  # -lr u x^T (Eq 25/26)
    delta: np.ndarray  # -a (W x + u) x^T (Eq 28-29)
    erase: np.ndarray  # -a (W x) x^T: the part of the delta update the Hebbian one lacks
    readout_hebbian: np.ndarray  # W' x = W x - lr ||x||^2 u
    readout_delta: np.ndarray  # W' x = W x - a ||x||^2 (W x + u)
    target: np.ndarray  # -u, Eq 27's target (v = -u)


def memory_updates(record: MemoryRecord, lr: float, row: int = 0) -> MemoryUpdates:
    """Hebbian and delta-rule updates of row `row`'s (x, u). record.wx and record.x_sq are over
    the whole input, so the update blocks and the readouts are exact, not truncated."""
    if not 0 <= row < len(record.x):
        raise ValueError(f"row: must be in 0..{len(record.x) - 1}, got {row}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr: must be a finite number >= 0, got {lr!r}")
    x, u = record.x[row].astype(np.float64), record.u[row].astype(np.float64)  # (c,), (r,)
    wx, x_sq = record.wx[row].astype(np.float64), float(record.x_sq[row])  # (r,), ||x||^2 over all d_in
    a = lr / (1.0 + lr * x_sq)
    return MemoryUpdates(
        a=a, hebbian=-lr * np.outer(u, x), delta=-a * np.outer(wx + u, x), erase=-a * np.outer(wx, x),
        readout_hebbian=wx - lr * x_sq * u, readout_delta=wx - a * x_sq * (wx + u), target=-u)


def hebbian_vs_delta_figure(record: MemoryRecord | None, lr: float, row: int = 0) -> go.Figure:
    """Eq 26 vs Eq 27-29 for the same (x, u): the Hebbian update -lr u x^T, the delta-rule
    update -a (W x + u) x^T and its erase term -a (W x) x^T on one colour scale; below, what
    the memory reads out at x after each update against the target -u."""
    title = "Hebbian (Eq 26) vs delta rule (Eq 27-29) for one (x, u)"
    if record is None or record.x.size == 0:
        return _empty(title)
    m = memory_updates(record, lr, row)
    err_h = float(np.linalg.norm(m.readout_hebbian - m.target))
    err_d = float(np.linalg.norm(m.readout_delta - m.target))
    plan = replace(_EQ2829, bottom=_EQ2829.bottom + _legend_height(4, per_row=2))  # four bars in the legend
    fig = plan.subplots(cols=3, specs=[[{}, {}, {}], [{"colspan": 3}, None, None]], horizontal_spacing=0.07,
                        subplot_titles=(
                            "Hebbian dW<br>-lr u x^T", "delta rule dW<br>-a (W x + u) x^T", "its erase term<br>-a (W x) x^T",
                            f"readout W'x after each update vs the target -u<br>error ||W'x + u||: "
                            f"Hebbian {err_h:.3g}, delta {err_d:.3g}"))
    fig.update_annotations(font_size=_PANEL_TITLE)
    for col, (name, z) in enumerate((("hebbian", m.hebbian), ("delta", m.delta), ("erase", m.erase)), start=1):
        fig.add_trace(go.Heatmap(z=_gaps(z), coloraxis="coloraxis", name=name,
                                 hovertemplate=f"{name} dW[%{{y}}, %{{x}}] = %{{z:.4g}}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="input unit j", title_standoff=4, row=1, col=col)
        # the three blocks share their rows: one y title, which would otherwise run into the panel to its left
        fig.update_yaxes(title_text="output unit i" if col == 1 else None, autorange="reversed", row=1, col=col)
    span = max(_symmetric(m.hebbian), _symmetric(m.delta), _symmetric(m.erase))
    _colourbar(fig, "coloraxis", "dW, one scale for the three", span, [1, 3], plan.below(fig, "y", 52))
    units = np.arange(len(m.target))
    for key, name, y in (("before", "W x (before)", record.wx[row].astype(np.float64)),
                         ("hebbian", "Hebbian: W x - lr ||x||^2 u", m.readout_hebbian),
                         ("delta", "delta: W x - a ||x||^2 (W x + u)", m.readout_delta),
                         ("target", "target -u", m.target)):
        fig.add_trace(go.Bar(x=units, y=y, name=name, marker=dict(color=RULE_COLOURS[key]),
                             hovertemplate=f"{name}<br>unit %{{x}}: %{{y:.4g}}<extra></extra>"), row=2, col=1)
    fig.update_xaxes(title_text="output unit i", title_standoff=4, row=2, col=1)
    fig.update_yaxes(title_text="readout at x", row=2, col=1)
    fig.update_layout(template=TEMPLATE, barmode="group", height=plan.height, title=(
        f"{title}<br><sup>level {record.level}, step {record.step}, row {row}; lr = {lr:.3g}, ||x||^2 = "
        f"{float(record.x_sq[row]):.3g}, a = lr / (1 + lr ||x||^2) = {m.a:.3g}</sup>"))
    legend_below(fig, per_row=2)
    fig.update_layout(margin=dict(t=plan.top, b=plan.bottom, l=60, r=20))
    return _say_why_blank(fig)


# ---------------------------------------------------------------------------- notebook experiments
# Figures of the notebooks' small experiments (03 CMS, 04 surprise, 05 continual learning): pure
# functions of arrays and tables the notebooks compute, so the notebooks hold no figure code.

def _category_colour(i: int, name: str, colours: Mapping[str, str] | None) -> str:
    if colours is not None and name in colours:
        return colours[name]
    return CATEGORY_COLOURS[i % len(CATEGORY_COLOURS)]


def surprise_check_figure(reference: Sequence[Any], captured: Sequence[Any],
                          periods: Sequence[int] | None = None) -> go.Figure:
    """Captured surprise u_l against a reference (autograd's dL/dy_l), every entry of every
    level as one point: on the diagonal when they agree. The title gives the largest |difference|."""
    if len(reference) != len(captured):
        raise ValueError(f"captured: must hold one tensor per level ({len(reference)}), got {len(captured)}")
    title = "Captured u_l = dL/dy_l against autograd"
    if not reference:
        return _empty(title)
    ref = [np.asarray(getattr(r, "detach", lambda: r)(), dtype=np.float64).ravel() for r in reference]
    cap = [np.asarray(getattr(c, "detach", lambda: c)(), dtype=np.float64).ravel() for c in captured]
    for l, (r, c) in enumerate(zip(ref, cap), start=1):
        if r.shape != c.shape:
            raise ValueError(f"captured[{l - 1}]: shape {c.shape} differs from the reference's {r.shape}")
    max_diff = max(float(np.max(np.abs(r - c))) if r.size else 0.0 for r, c in zip(ref, cap))
    fig = go.Figure()
    for l, (r, c) in enumerate(zip(ref, cap), start=1):
        label = level_label(l, periods)
        fig.add_trace(go.Scatter(x=r, y=c, mode="markers", name=label, marker=dict(color=level_colour(l), size=6),
                                 hovertemplate=f"{label}<br>autograd %{{x:.4g}}<br>captured %{{y:.4g}}<extra></extra>"))
    lo, hi = min(float(r.min()) for r in ref if r.size), max(float(r.max()) for r in ref if r.size)
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="captured = autograd",
                             line=dict(color="#888888", dash="dot", width=1), hoverinfo="skip"))
    fig.update_xaxes(title_text="torch.autograd.grad(L, y_l), each entry")
    fig.update_yaxes(title_text="u_l captured by nlviz, same entry")
    fig.update_layout(template=TEMPLATE, title=f"{title}: max |difference| = {max_diff:.1e}", legend_title_text="level")
    return fig


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean over the last `window` columns, for each column from window - 1 on: (S, T - window + 1)."""
    c = np.cumsum(np.pad(values, ((0, 0), (1, 0))), axis=1)
    return (c[:, window:] - c[:, :-window]) / window


def seed_curves_figure(curves: Mapping[str, Any], x: Sequence[float] | None = None, window: int = 1,
                       title: str = "Mean over seeds (line) and their range (band)", y_title: str = "value",
                       x_title: str = "step t", log_y: bool = False,
                       colours: Mapping[str, str] | None = None) -> go.Figure:
    """One curve per condition, each given as an array (seeds, T): the mean over seeds as a
    line and the band from the lowest to the highest seed. window > 1 first takes a trailing
    mean over that many points (the first window - 1 points are dropped, not padded)."""
    if not (isinstance(window, int) and window >= 1):
        raise ValueError(f"window: must be an integer >= 1, got {window!r}")
    if not curves:
        return _empty(title)
    fig = go.Figure()
    for i, (name, values) in enumerate(curves.items()):
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 2:
            raise ValueError(f"curves[{name!r}]: must be an array (seeds, T), got shape {v.shape}")
        steps = np.arange(1, v.shape[1] + 1) if x is None else np.asarray(x)
        if len(steps) != v.shape[1]:
            raise ValueError(f"x: must have one value per column ({v.shape[1]}), got {len(steps)}")
        if window > v.shape[1]:
            raise ValueError(f"window: {window} is longer than curves[{name!r}] ({v.shape[1]} points)")
        if window > 1:
            v, steps = _trailing_mean(v, window), steps[window - 1:]
        colour, n = _category_colour(i, name, colours), len(v)
        fig.add_trace(go.Scatter(x=steps, y=v.max(0), mode="lines", line=dict(width=0, color=colour), legendgroup=name,
                                 showlegend=False, name=f"{name} highest seed", hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=steps, y=v.min(0), mode="lines", line=dict(width=0, color=colour), fill="tonexty",
                                 fillcolor=rgba(colour, 0.18), legendgroup=name, showlegend=False,
                                 name=f"{name} lowest seed", hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=steps, y=v.mean(0), mode="lines", line=dict(color=colour, width=1.8), legendgroup=name,
                                 name=f"{name} ({n} seeds)",
                                 hovertemplate=f"{name}<br>{x_title} %{{x}}<br>mean %{{y:.4g}}<extra></extra>"))
    note = f" (trailing mean over {window} points)" if window > 1 else ""
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title + note, type="log" if log_y else "linear")
    fig.update_layout(template=TEMPLATE, title=title, hovermode="closest")
    return fig


def seed_summary_figure(table: pd.DataFrame, by: str, metrics: Mapping[str, str] | Sequence[str], seed: str = "seed",
                        title: str = "Mean over seeds (bar), standard deviation (error bar) and each seed (dot)",
                        y_title: str | None = None, log_y: bool = False, y_range: Sequence[float] | None = None,
                        colours: Mapping[str, str] | None = None) -> go.Figure:
    """One panel per metric (a column of `table`, one row per run): for each group of `by`,
    in the table's order, a bar at the mean over its rows, an error bar of their standard
    deviation (pandas' std, n - 1; none for a single row) and one dot per run (hover: its seed)."""
    labels = dict(metrics) if isinstance(metrics, Mapping) else {m: m for m in metrics}
    missing = [c for c in [by, seed, *labels] if c not in table.columns]
    if missing:
        raise ValueError(f"table: has no column {missing[0]!r}; columns: {', '.join(map(str, table.columns))}")
    if not len(table) or not labels:
        return _empty(title)
    groups = list(pd.unique(table[by]))
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=list(labels.values()), horizontal_spacing=0.08)
    for col, metric in enumerate(labels, start=1):
        for i, g in enumerate(groups):
            rows = table[table[by] == g]
            values = pd.to_numeric(rows[metric], errors="coerce").to_numpy(np.float64)
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            colour, name = _category_colour(i, str(g), colours), str(g)
            fig.add_trace(go.Bar(x=[name], y=[float(np.mean(values))], error_y=dict(type="data", array=[std]),
                                 name=name, legendgroup=name, showlegend=col == 1, marker=dict(color=rgba(colour, 0.55)),
                                 hovertemplate=f"{name}<br>mean %{{y:.4g}} +- {std:.3g}<extra></extra>"), row=1, col=col)
            fig.add_trace(go.Scatter(x=[name] * len(values), y=values, customdata=rows[seed].to_numpy(), mode="markers",
                                     name=f"{name} seeds", legendgroup=name, showlegend=False,
                                     marker=dict(color=colour, size=7, line=dict(color="white", width=1)),
                                     hovertemplate=f"{name}<br>seed %{{customdata}}: %{{y:.4g}}<extra></extra>"),
                          row=1, col=col)
        fig.update_yaxes(type="log" if log_y else "linear", row=1, col=col,
                         **({"range": list(y_range)} if y_range is not None else {}))
    if y_title:
        fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_layout(template=TEMPLATE, title=title, barmode="overlay", hovermode="closest")
    return fig


def image_strip_figure(images: Sequence[Any], labels: Sequence[str], title: str = "",
                       colorscale: str = "gray_r", height: int = 220) -> go.Figure:
    """Small images side by side, row 0 at the top, each with its label above it."""
    if len(images) != len(labels):
        raise ValueError(f"labels: must name each of the {len(images)} images, got {len(labels)}")
    if not len(images):
        return _empty(title)
    fig = make_subplots(rows=1, cols=len(images), horizontal_spacing=0.01, subplot_titles=list(labels))
    for c, (img, label) in enumerate(zip(images, labels), start=1):
        fig.add_trace(go.Heatmap(z=np.asarray(img, dtype=np.float64), colorscale=colorscale, showscale=False, name=label,
                                 hovertemplate=f"{label}<br>row %{{y}}, column %{{x}}: %{{z:.3g}}<extra></extra>"),
                      row=1, col=c)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{c if c > 1 else ''}", row=1, col=c)
    fig.update_xaxes(visible=False).update_yaxes(visible=False)
    fig.update_layout(template=TEMPLATE, height=height, title=title)
    return fig


def forgetting_curves_figure(acc_by_model: Mapping[str, Any], task_labels: Sequence[str],
                             title: str = "Forgetting curves: accuracy on each task as later tasks are trained"
                             ) -> go.Figure:
    """One panel per model. acc[k, i] is the accuracy on task i after training task k (K, K),
    defined for i <= k; task i's curve runs from k = i (just learned) to the last task."""
    if not acc_by_model:
        return _empty(title)
    fig = make_subplots(rows=1, cols=len(acc_by_model), shared_yaxes=True, subplot_titles=list(acc_by_model),
                        horizontal_spacing=0.05)
    for col, (model, acc) in enumerate(acc_by_model.items(), start=1):
        a = np.asarray(acc, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] != len(task_labels):
            raise ValueError(f"acc_by_model[{model!r}]: must be ({len(task_labels)}, {len(task_labels)}), got {a.shape}")
        n = len(a)
        for i, label in enumerate(task_labels):
            colour = CATEGORY_COLOURS[i % len(CATEGORY_COLOURS)]
            fig.add_trace(go.Scatter(x=np.arange(i + 1, n + 1), y=a[i:, i], mode="lines+markers", name=label,
                                     legendgroup=str(i), showlegend=col == 1, line=dict(color=colour),
                                     hovertemplate=f"{model}<br>{label}<br>after task %{{x}}: %{{y:.3g}}<extra></extra>"),
                          row=1, col=col)
    fig.update_xaxes(title_text="tasks trained so far", dtick=1).update_yaxes(range=[-0.03, 1.03])
    fig.update_yaxes(title_text="test accuracy on the task", row=1, col=1)
    fig.update_layout(template=TEMPLATE, title=title, hovermode="closest")
    return fig


def level_drift_figure(drift: Any, periods: Sequence[int], task_labels: Sequence[str] | None = None,
                       log_y: bool = True,
                       title: str = "How far each level's parameters move during each task") -> go.Figure:
    """drift[k, l] = ||theta_l at the end of task k - theta_l at its start|| (K, L): one bar
    per level and task, grouped by task, in the level's colour."""
    d = np.asarray(drift, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != len(periods):
        raise ValueError(f"drift: must be (tasks, {len(periods)} levels), got shape {d.shape}")
    labels = list(task_labels) if task_labels is not None else [f"task {k + 1}" for k in range(len(d))]
    if len(labels) != len(d):
        raise ValueError(f"task_labels: must name each of the {len(d)} tasks, got {len(labels)}")
    if not d.size:
        return _empty(title)
    fig = go.Figure()
    for l in range(d.shape[1]):
        name = level_label(l + 1, periods)
        fig.add_trace(go.Bar(x=labels, y=d[:, l], name=name, marker_color=level_colour(l + 1),
                             hovertemplate=f"{name}<br>%{{x}}: %{{y:.4g}}<extra></extra>"))
    log = " (log)" if log_y else ""
    fig.update_yaxes(title_text=f"||theta_end - theta_start||{log}", type="log" if log_y else "linear")
    fig.update_xaxes(title_text="task trained")
    fig.update_layout(template=TEMPLATE, barmode="group", title=title, legend_title_text="level")
    return fig


def multiscale_drift_figure(task: Any, steps: Sequence[int], entry: tuple[int, int] = (0, 0),
                            title: str = "The two drifting maps (one entry each)") -> go.Figure:
    """One entry of a `MultiscaleTask`'s slow and fast maps, A_slow(t) and A_fast(t), at the
    given steps: the two speeds the CMS levels are meant to track."""
    i, j = entry
    t = np.asarray(steps, dtype=np.int64)
    maps = [task.components(int(s)) for s in t]
    c = task.config
    fig = go.Figure()
    for k, (name, period, dash) in enumerate((("A_slow", c.slow_period, "solid"), ("A_fast", c.fast_period, "dot"))):
        y = np.array([float(m[k][i, j]) for m in maps])
        fig.add_trace(go.Scatter(x=t, y=np.round(y, 6), name=f"{name}(t)[{i}, {j}], period {period}", mode="lines",
                                 line=dict(color=CATEGORY_COLOURS[k], dash=dash),
                                 hovertemplate=f"{name}: step %{{x}}, %{{y:.4g}}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, height=320, title=title, xaxis_title="step t", yaxis_title="entry")
    fig.update_xaxes(**STEP_TICKS)
    return fig
