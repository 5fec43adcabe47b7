"""A CMS that trains inside a Jupyter kernel and draws itself into a live plotly FigureWidget.

`LiveCMS(config)` wraps a `Trainer` on the multi-timescale task (`nlviz.MultiscaleTask`).
Each call to `advance(n)` trains n more steps, records what notebook 03 plots, and redraws:

    row 1  the task loss L of every step
    row 2  each level's local surprise ||u_l|| = ||dL/dy_l|| (Eq 25), every step
    row 3  which level carries which drift: on a fixed probe batch x, the regression
           coefficient of a part of the prediction on the slow target A_slow(t) x and on
           the fast target A_fast(t) x (1 = it reproduces that component, 0 = none of it)

In row 3 a "part" is one level's contribution when the levels are separable: the
`independent` variant without the residual path sums mix_l * y_l before a linear head, so
level l contributes c_l = mix_l * W_head y_l and the c_l add up to the prediction less the
head's bias. For any other model the row shows the whole model's coefficients only.

The decisions to know. Play is an `ipywidgets.Play`: the browser ticks and every tick
trains `steps_per_tick` steps in the kernel, so nothing trains in a background thread and
the notebook stays responsive between ticks. A learning-rate change applies at once to that
level's parameter group (optimizer state kept); a period change restarts the run, because
Eq 31's clock and every chunk's sum start over. The history is kept whole (a few floats per
step) and drawn with at most `max_points` points per trace, every k-th step. The widget
callbacks (`on_play`, `on_step`, `on_period`, `on_lr`, `on_reset`) are plain methods so
pytest can call them; nbval never clicks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from .config import ConfigError, TrainConfig
from .figures import TEMPLATE, level_colour, level_label
from .trainer import DivergenceError, StepEvent, Subscriber, Trainer

__all__ = ["LiveCMS", "History", "level_contributions", "tracking_coefficients", "live_figure", "trace_data"]

FAST_DASH = "dot"  # row 3: the fast component is dotted, the slow one solid


@dataclass
class History:
    """What LiveCMS has recorded so far (host floats)."""

    n_levels: int
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    surprise: list[list[float]] = field(default_factory=list)  # per level, aligned with steps
    probe_steps: list[int] = field(default_factory=list)
    slow: list[list[float]] = field(default_factory=list)  # per part (levels, or the whole model)
    fast: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.surprise = self.surprise or [[] for _ in range(self.n_levels)]


def separable(model: torch.nn.Module) -> bool:
    """Whether the prediction splits into one additive part per level (see the module docstring)."""
    config = getattr(model, "config", None)
    return config is not None and config.variant == "independent" and not config.residual


@torch.no_grad()
def level_contributions(model: torch.nn.Module, x: Tensor) -> list[Tensor]:
    """Each level's part c_l = mix_l * W_head y_l of the prediction (independent variant, no
    residual): sum_l c_l + b_head equals model(x)."""
    if not separable(model):
        raise ConfigError("model: level contributions need variant 'independent' with residual false")
    h = model.stem(x)  # (B, d)
    parts = []
    for mix, level in zip(model.mix, model.levels):
        y, _ = level(h)  # (B, d)
        parts.append((mix * y) @ model.head.weight.T)  # (B, d_out)
    return parts


def tracking_coefficients(part: Tensor, target: Tensor) -> float:
    """Least-squares coefficient a in part ~ a * target: 1 when part reproduces target."""
    return float((part * target).sum() / (target * target).sum().clamp_min(1e-12))


def _stride(n: int, max_points: int) -> int:
    return max(1, math.ceil(n / max_points))


def live_figure(n_levels: int, periods: tuple[int, ...], by_level: bool, height: int = 720) -> go.Figure:
    """The three rows with empty traces in a fixed order (see `trace_data`)."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("Task loss L", "Local surprise ||u_l|| = ||dL/dy_l|| (Eq 25)",
                                        "Who carries which drift: coefficient on A_slow x (solid), A_fast x (dotted)"))
    fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name="loss", line=dict(color=level_colour(0), width=1),
                             showlegend=False), row=1, col=1)
    for l in range(1, n_levels + 1):
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name=level_label(l, periods), legendgroup=str(l),
                                 line=dict(color=level_colour(l), width=1)), row=2, col=1)
    parts = range(1, n_levels + 1) if by_level else [0]
    for l in parts:
        name = level_label(l, periods)
        for kind, dash in (("slow", "solid"), ("fast", FAST_DASH)):
            fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name=f"{name}: {kind}", legendgroup=str(l),
                                     showlegend=False, line=dict(color=level_colour(l), dash=dash, width=2)),
                          row=3, col=1)
    fig.update_yaxes(type="log", title_text="L (log)", row=1, col=1)
    fig.update_yaxes(type="log", title_text="||u_l|| (log)", row=2, col=1)
    fig.update_yaxes(title_text="coefficient", range=[-0.2, 1.2], row=3, col=1)
    fig.update_xaxes(title_text="step t", row=3, col=1)
    fig.update_layout(template=TEMPLATE, height=height, margin=dict(t=60, b=40), legend_title_text="level",
                      title="A CMS training live on the multi-timescale task")
    return fig


def trace_data(history: History, max_points: int = 1500) -> list[tuple[np.ndarray, np.ndarray]]:
    """(x, y) of every trace of `live_figure`, in its order, every k-th point past max_points."""
    k = _stride(len(history.steps), max_points)
    steps = np.asarray(history.steps[::k], dtype=np.int64)
    out = [(steps, np.asarray(history.loss[::k]))]
    out += [(steps, np.asarray(s[::k])) for s in history.surprise]
    kp = _stride(len(history.probe_steps), max_points)
    probe_steps = np.asarray(history.probe_steps[::kp], dtype=np.int64)
    for slow, fast in zip(history.slow, history.fast):
        out += [(probe_steps, np.asarray(slow[::kp])), (probe_steps, np.asarray(fast[::kp]))]
    return out


class _Recorder(Subscriber):
    """Loss and ||u_l|| of every step, read to the host (a notebook on a CPU can afford it)."""

    def __init__(self, history: History):
        self.history = history

    def on_step(self, event: StepEvent) -> None:
        norms = [u.norm() if u is not None else torch.full((), math.nan) for u in event.surprise]
        values = torch.stack([event.loss.detach(), *norms]).tolist()
        h = self.history
        h.steps.append(event.step)
        h.loss.append(values[0])
        for l, v in enumerate(values[1:]):
            h.surprise[l].append(v)


class LiveCMS:
    """A CMS on the multiscale task that trains on demand and redraws a live figure."""

    def __init__(self, config: TrainConfig, probe_every: int = 25, probe_size: int = 256,
                 steps_per_tick: int = 50, max_points: int = 1500):
        if config.task != "multiscale":
            raise ConfigError(f"task: LiveCMS draws the multiscale task's slow and fast drift; got {config.task!r}")
        if not config.capture:
            raise ConfigError("capture: LiveCMS plots each level's surprise, so capture must be true")
        for name, value in (("probe_every", probe_every), ("probe_size", probe_size),
                            ("steps_per_tick", steps_per_tick), ("max_points", max_points)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: must be an integer >= 1, got {value!r}")
        # Train without an end: Play and Step decide how far.
        self.config = dataclasses.replace(config, steps=10**9)
        self.probe_every, self.probe_size = probe_every, probe_size
        self.steps_per_tick, self.max_points = steps_per_tick, max_points
        self.message = ""
        self._figure: go.FigureWidget | None = None
        self._controls: dict[str, Any] | None = None
        self._start()

    # ------------------------------------------------------------------ training
    def _start(self) -> None:
        k = len(self.config.model.levels)
        self.history = History(k)
        self.trainer = Trainer(self.config, [_Recorder(self.history)])
        g = torch.Generator(device="cpu").manual_seed(self.config.seed + 777)
        dim = self.trainer.task.input_dim
        self.probe = torch.randn(self.probe_size, dim, generator=g).to(self.trainer.device)  # (P, d)
        self.by_level = separable(self.trainer.model)
        self.diverged: DivergenceError | None = None
        self._probe()

    @property
    def step(self) -> int:
        return self.trainer.clock.t

    @property
    def periods(self) -> tuple[int, ...]:
        return self.config.model.periods

    def _probe(self) -> None:
        """Row 3 at the current step: each part's coefficients on the slow and fast targets."""
        model, x = self.trainer.model, self.probe
        slow_map, fast_map = self.trainer.task.components(self.step)
        slow_y, fast_y = x @ slow_map.T, x @ fast_map.T  # (P, d)
        with torch.no_grad():
            model.eval()
            try:
                parts = level_contributions(model, x) if self.by_level else [model(x) - model.head.bias]
            finally:
                model.train()
        h = self.history
        if not h.slow:
            h.slow, h.fast = [[] for _ in parts], [[] for _ in parts]
        h.probe_steps.append(self.step)
        for i, part in enumerate(parts):
            h.slow[i].append(tracking_coefficients(part, slow_y))
            h.fast[i].append(tracking_coefficients(part, fast_y))

    def advance(self, steps: int) -> int:
        """Train `steps` more steps (probing every probe_every), redraw; returns the step reached."""
        if self.diverged is not None:
            return self.step
        target = self.step + steps
        try:
            while self.step < target:
                chunk = min(target, (self.step // self.probe_every + 1) * self.probe_every) - self.step
                self.trainer.run(steps=chunk)
                if self.step % self.probe_every == 0:
                    self._probe()
            self.message = ""
        except DivergenceError as e:
            self.diverged = e
            self.message = f"diverged: {e}. Lower a learning rate, then Reset."
        self.redraw()
        return self.step

    def set_lr(self, level: int, lr: float) -> None:
        """Level `level` (from 1) uses learning rate lr from its next update on."""
        if not 1 <= level <= len(self.periods):
            raise ConfigError(f"level: must be between 1 and {len(self.periods)}, got {level!r}")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0 or not math.isfinite(lr):
            raise ConfigError(f"lr: must be a positive number, got {lr!r}")
        i = level - 1
        for g in self.trainer.groups:
            if i not in g.level_params:
                continue
            own = {id(p) for p in g.level_params[i]}
            groups = g.optimizer.param_groups
            shared = next(pg for pg in groups if any(id(p) in own for p in pg["params"]))
            if all(id(p) in own for p in shared["params"]):
                shared["lr"] = float(lr)
            else:  # shared with another level at the same lr: give this level its own group
                shared["params"] = [p for p in shared["params"] if id(p) not in own]
                g.optimizer.add_param_group({"params": list(g.level_params[i]), "lr": float(lr)})
        levels = list(self.config.model.levels)
        levels[i] = dataclasses.replace(levels[i], lr=float(lr))
        self.config = dataclasses.replace(self.config, model=dataclasses.replace(self.config.model, levels=tuple(levels)))

    def restart(self, periods: tuple[int, ...] | None = None) -> None:
        """Start again from step 0 (same seed), with new periods if given."""
        if periods is not None:
            if len(periods) != len(self.periods):
                raise ConfigError(f"periods: need {len(self.periods)} values, one per level, got {len(periods)}")
            levels = tuple(dataclasses.replace(lv, period=int(p)) for lv, p in zip(self.config.model.levels, periods))
            self.config = dataclasses.replace(self.config, model=dataclasses.replace(self.config.model, levels=levels))
        self.trainer.close()
        self._start()
        if self._figure is not None:  # the periods are in the trace names
            self._rename()
        self.redraw()

    # ------------------------------------------------------------------ drawing
    def snapshot(self) -> go.Figure:
        """A static copy of the live figure as it stands (for fig.show() and saved notebooks)."""
        fig = live_figure(len(self.periods), self.periods, self.by_level)
        for trace, (x, y) in zip(fig.data, trace_data(self.history, self.max_points)):
            trace.x, trace.y = x, np.round(y, 6)
        fig.update_layout(title=self._title())
        return fig

    def _title(self) -> str:
        text = f"A CMS training live on the multi-timescale task: step {self.step}"
        return text + (f" - {self.message}" if self.message else "")

    @property
    def figure(self) -> go.FigureWidget:
        """The live figure (needs anywidget, as plotly's FigureWidget does)."""
        if self._figure is None:
            self._figure = go.FigureWidget(self.snapshot())
        return self._figure

    def _rename(self) -> None:
        fresh = live_figure(len(self.periods), self.periods, self.by_level)
        with self._figure.batch_update():
            for old, new in zip(self._figure.data, fresh.data):
                old.name = new.name

    def redraw(self) -> None:
        if self._figure is not None:
            with self._figure.batch_update():
                for trace, (x, y) in zip(self._figure.data, trace_data(self.history, self.max_points)):
                    trace.x, trace.y = x, y
                self._figure.layout.title.text = self._title()
        if self._controls is not None:
            self._controls["status"].value = self._status()

    def _status(self) -> str:
        loss = f"{self.history.loss[-1]:.4g}" if self.history.loss else "-"
        text = f"step <b>{self.step}</b> &middot; loss {loss} &middot; periods {self.periods}"
        return text + (f" &middot; <span style='color:#b00'>{self.message}</span>" if self.message else "")

    # ------------------------------------------------------------------ widgets
    @property
    def controls(self) -> dict[str, Any]:
        """The ipywidgets, by name: play, step, steps, periods[l], lrs[l], reset, status."""
        if self._controls is None:
            import ipywidgets as w

            play = w.Play(value=0, min=0, max=10**9, step=1, interval=250, description="Play")
            play.observe(self.on_play, names="value")
            step = w.Button(description="Step", tooltip="train the number of steps beside it", icon="step-forward")
            step.on_click(self.on_step)
            steps = w.BoundedIntText(value=self.steps_per_tick, min=1, max=100_000, description="steps",
                                     tooltip="steps trained per Step click and per Play tick",
                                     layout=w.Layout(width="160px"))
            reset = w.Button(description="Reset", tooltip="start again from step 0", icon="undo")
            reset.on_click(self.on_reset)
            periods, lrs = [], []
            for l, spec in enumerate(self.config.model.levels, start=1):
                p = w.BoundedIntText(value=spec.period, min=1, max=4096, description=f"C({l})",
                                     layout=w.Layout(width="150px"))
                p.observe(self.on_period, names="value")
                r = w.FloatLogSlider(value=spec.lr, base=10, min=-5, max=0.5, step=0.1, readout_format=".1e",
                                     description=f"lr level {l}", continuous_update=False)
                r.observe(lambda change, level=l: self.on_lr(level, change), names="value")
                periods.append(p)
                lrs.append(r)
            status = w.HTML(self._status())
            self._controls = dict(play=play, step=step, steps=steps, reset=reset, periods=periods, lrs=lrs,
                                  status=status)
        return self._controls

    @property
    def widget(self):
        """Controls above the live figure, ready to display."""
        import ipywidgets as w

        c = self.controls
        return w.VBox([
            w.HBox([c["play"], c["step"], c["steps"], c["reset"]]),
            w.HBox(c["periods"]),
            w.HBox(c["lrs"], layout=w.Layout(flex_flow="row wrap")),
            c["status"],
            self.figure,
        ])

    def on_play(self, change: dict) -> None:
        """A tick of the Play widget: train `steps` steps (stop playing on divergence)."""
        self.advance(self._steps())
        if self.diverged is not None and self._controls is not None:
            self._controls["play"].playing = False

    def on_step(self, _button=None) -> None:
        """The Step button: train `steps` steps."""
        self.advance(self._steps())

    def _steps(self) -> int:
        return self._controls["steps"].value if self._controls is not None else self.steps_per_tick

    def on_period(self, _change=None) -> None:
        self.restart(tuple(p.value for p in self.controls["periods"]))

    def on_lr(self, level: int, change: dict) -> None:
        self.set_lr(level, change["new"])
        self.redraw()

    def on_reset(self, _button=None) -> None:
        self.restart()
