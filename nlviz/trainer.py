"""The training loop: Eq 31's level clock, per-level optimizers, surprise capture, events.

One step: draw a batch, run the model (with its internals when capturing), ask for the
surprises, one backward pass; subscribers get a `StepEvent` (before any parameter moves);
then every level whose chunk ends now takes an optimizer step on the gradients summed
since its last update and clears them, while the other levels keep accumulating, frozen.

The decision to know: nothing on the hot path reads values back to the host. Losses and
surprises travel in events as device tensors; the trainer itself reads the loss only
every `sync_every` steps (for the progress bar and the non-finite check). Subscribers
(telemetry, progress, the dashboard) decide their own cadence.

The trainer is model-agnostic: a model needs `levels` (modules, each with a `linears`
tuple of its nn.Linear layers), `io_parameters()`, and
`forward(x, return_internals=False)` returning the output, or (output, [LevelTrace]).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from .clock import LevelClock
from .cms import CMS, LevelTrace
from .config import ConfigError, TrainConfig
from .device import describe_device, resolve_device, seed_everything
from .diverging import DivergingEvent, DivergingWatch
from .optim import DGD, UpdateGroup, build_update_groups
from .surprise import SurpriseCapture
from .tasks import Task, make_task

__all__ = [
    "Trainer",
    "Subscriber",
    "StepEvent",
    "LevelUpdateEvent",
    "RunResult",
    "DivergenceError",
    "ProgressBar",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "nlviz-checkpoint-2"


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or surprise, or a diverging loss when
    `diverging_stop` asks to end there; `step` and `level` (from 1) say where."""

    def __init__(self, message: str, step: int, level: int | None):
        super().__init__(message)
        self.step = step
        self.level = level


@dataclass
class StepEvent:
    """What happened at one step. Tensors live on the training device; do not keep them."""

    step: int  # t, counted from 1
    loss: Tensor  # () task loss, on the device: reading it forces a host sync
    updated: tuple[int, ...]  # indices (0-based) of the levels whose chunk ends at t (they update next)
    traces: list[LevelTrace]  # per level: input x, output y (and linear inputs); [] without capture
    surprise: list[Tensor | None]  # per level: u_l = dL/dy_l, (B, d); [] without capture
    linear_grads: list[list[Tensor | None]]  # per level, per linear: gradient of its output (on linears_every steps)
    aux_losses: list[Tensor | None]  # per level: surprise objective value, None when off
    loss_value: float | None = None  # host copy of loss, only on sync steps


@dataclass
class LevelUpdateEvent:
    step: int
    level: int  # 0-based index
    update_norm: Tensor | None  # ||theta_after - theta_before||, on the device, if measured


class Subscriber:
    """Base class for trainer subscribers; override what you need."""

    def on_start(self, trainer: "Trainer") -> None: ...
    def on_step(self, event: StepEvent) -> None: ...
    def on_level_update(self, event: LevelUpdateEvent) -> None: ...
    def on_diverging(self, event: DivergingEvent) -> None:
        """The loss has just passed the diverging rule (nlviz.diverging); once per run."""

    def on_step_end(self, trainer: "Trainer", step: int) -> None:
        """The step is complete (parameters updated): a consistent point to checkpoint."""

    def on_end(self, trainer: "Trainer", status: str, error: BaseException | None = None) -> None: ...


class ProgressBar(Subscriber):
    """tqdm progress in the terminal; shows the loss whenever the trainer syncs."""

    def __init__(self, total: int, initial: int = 0, **tqdm_kwargs: Any):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, **tqdm_kwargs)

    def on_step(self, event: StepEvent) -> None:
        self.bar.update(1)
        if event.loss_value is not None:
            self.bar.set_postfix(loss=f"{event.loss_value:.4g}", refresh=False)

    def on_end(self, trainer, status, error=None) -> None:
        self.bar.close()


@dataclass
class RunResult:
    status: str  # finished | stopped
    steps: int  # steps done in total
    seconds: float  # wall time of this call
    final_loss: float | None  # loss of the last step
    metrics: dict[str, float] = field(default_factory=dict)  # the task's evaluation at the end


class Trainer:
    """Trains a levelled model on a task under a TrainConfig; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        subscribers: Iterable[Subscriber] = (),
        *,
        model: nn.Module | None = None,
        task: Task | None = None,
        measure_updates: int = 0,
    ):
        self.config = config
        self.device = resolve_device(config.device)
        self.device_name = describe_device(self.device)
        seed_everything(config.seed)
        self.task = task if task is not None else make_task(config.task, config.task_options, self.device, config.seed)
        if model is None:
            model = CMS(config.model, self.task.input_dim, self.task.output_dim)
        self.model = model.to(self.device).train()
        self.n_levels = len(self.model.levels)
        if self.n_levels != len(config.model.levels):
            raise ConfigError(f"model: has {self.n_levels} levels but config.model.levels lists {len(config.model.levels)}")
        self.clock = LevelClock(config.model.periods)
        self.groups: list[UpdateGroup] = build_update_groups(self.model, config)
        self.capture = SurpriseCapture(self.n_levels, config.surprise) if config.capture else None
        self.subscribers: list[Subscriber] = list(subscribers)
        # Measure ||theta_after - theta_before|| at steps divisible by this (0 = never), and at
        # every update of a level whose period is at least this (those are rare anyway).
        self.measure_updates = int(measure_updates)
        self.sync_every = config.sync_every or (1 if self.device.type == "cpu" else 50)
        # The forward pass's context, built once: bf16 autocast, or nothing at all on the hot path.
        self._forward_context = (functools.partial(torch.autocast, self.device.type, dtype=torch.bfloat16)
                                 if config.autocast == "bf16" else contextlib.nullcontext)
        # Device-side record of the first non-finite step (used when sync_every > 1).
        self._first_bad = torch.zeros((), dtype=torch.long, device=self.device)
        self._bad_loss = torch.zeros((), dtype=torch.bool, device=self.device)
        self._bad_u = torch.zeros(self.n_levels, dtype=torch.bool, device=self.device)
        self._bad_y = torch.zeros(self.n_levels, dtype=torch.bool, device=self.device)
        self._zero = torch.zeros((), device=self.device)
        self._started = False
        self._stop = False
        self.last_loss: Tensor | None = None
        self.watch = DivergingWatch(config.diverging_factor)  # fed the losses read at sync steps

    # ------------------------------------------------------------------ stepping
    def step(self) -> StepEvent:
        """One optimizer step (Eq 31 for every level whose chunk ends now); returns its event."""
        return self._step(keep=True)

    def _step(self, keep: bool) -> StepEvent | None:
        if not self._started:
            self._started = True
            for s in self.subscribers:
                s.on_start(self)
        t, due = self.clock.tick()
        x, target = self.task.batch(t, self.config.batch_size)
        cap = self.capture
        with self._forward_context():
            if cap is not None:
                out, traces = self.model(x, return_internals=True)
                every = self.config.linears_every
                if not every or t % every:  # drop the linear records so their tensors can be freed early
                    traces = [dataclasses.replace(tr, linear_inputs=(), linear_outputs=()) for tr in traces]
            else:
                out, traces = self.model(x), []
            loss = self.task.loss(out, target)
        if cap is not None:
            cap.attach(traces, t)
        loss.backward()
        if cap is not None:
            cap.collect(traces)
        self.last_loss = loss.detach()

        # Vitals: the loss and each level's largest |u_l| (a max cannot overflow where a
        # norm would), one small device tensor; no host read here.
        if cap is not None:
            us = [u if u is not None else self._zero for u in cap.surprise]  # None: level not in the graph
            vitals = torch.stack([self.last_loss, *torch._foreach_norm(us, math.inf)])  # (1 + k,)
        else:
            vitals = self.last_loss.reshape(1)  # (1,)
        if self.sync_every > 1:
            self._track(t, vitals, traces)
        loss_value, healthy, flag = None, True, None
        if t % self.sync_every == 0 or t == self.config.steps:
            values = vitals.tolist()  # the one host read, at the sync cadence
            loss_value, healthy = values[0], all(map(math.isfinite, values))
            flag = self.watch.observe(t, values[0], values[1:])

        # Subscribers see the step before the parameters move: activations and surprises
        # belong to the parameters that produced them, and `updated` says who moves next.
        event = StepEvent(
            step=t,
            loss=self.last_loss,
            updated=due,
            traces=traces,
            surprise=cap.surprise if cap else [],
            linear_grads=cap.linear_grads if cap else [],
            aux_losses=cap.aux_losses if cap else [],
            loss_value=loss_value,
        )
        for s in self.subscribers:
            s.on_step(event)  # a non-finite step is recorded too, then training stops
        if not healthy:
            self._diverged(t, traces, vitals)
        if t % self.sync_every == 0:
            self.check_health()
        if flag is not None:
            for s in self.subscribers:
                s.on_diverging(flag)
            if self.config.diverging_stop:
                raise DivergenceError(f"{flag.message}; stopped there (diverging_stop)", t, flag.level)
        if not keep:  # free the activations before the optimizer allocates its temporaries
            del event, traces, out, x
            if cap is not None:
                cap.release()
            event = None
        self._update(t)
        for s in self.subscribers:
            s.on_step_end(self, t)
        return event

    def _update(self, t: int) -> None:
        for g in self.groups:
            if t % g.period:
                continue
            if self.config.accumulate == "mean" and g.period > 1:
                grads = [p.grad for p in g.params if p.grad is not None]
                torch._foreach_mul_(grads, 1.0 / g.period)
                if isinstance(g.optimizer, DGD):
                    g.optimizer.scale_(1.0 / g.period)
            every = self.measure_updates
            measure = every > 0 and (t % every == 0 or g.period >= every)
            before = [p.detach().clone() for p in g.params] if measure else None
            g.optimizer.step()
            g.zero_grad()
            if self.subscribers:
                norms = self._update_norms(g, before) if before is not None else {}
                for lv in g.levels:
                    if lv < 0:
                        continue
                    ev = LevelUpdateEvent(step=t, level=lv, update_norm=norms.get(lv))
                    for s in self.subscribers:
                        s.on_level_update(ev)

    def _update_norms(self, g: UpdateGroup, before: list[Tensor]) -> dict[int, Tensor]:
        # One fused difference and norm over the whole group, then a root-sum-square per level.
        diffs = torch._foreach_sub([p.detach() for p in g.params], before)
        size = dict(zip(map(id, g.params), torch._foreach_norm(diffs)))
        return {lv: torch.stack([size[id(p)] for p in params]).norm() for lv, params in g.level_params.items()}

    def _track(self, t: int, vitals: Tensor, traces: list[LevelTrace]) -> None:
        """Remember, on the device, the first step whose loss or surprise was non-finite."""
        bad = ~torch.isfinite(vitals)  # (1 + k,)
        newly = bad.any() & (self._first_bad == 0)
        self._first_bad = torch.where(newly, self._first_bad.new_full((), t), self._first_bad)
        self._bad_loss = torch.where(newly, bad[0], self._bad_loss)
        if traces:
            act = torch.stack(torch._foreach_norm([tr.y.detach() for tr in traces], math.inf))  # (k,)
            self._bad_u = torch.where(newly, bad[1:], self._bad_u)
            self._bad_y = torch.where(newly, ~torch.isfinite(act), self._bad_y)

    def check_health(self) -> None:
        """Raise DivergenceError if a step since the last check was non-finite (a host read).

        With sync_every > 1 the per-step check lives on the device; this reads it. Called at
        every sync, before a checkpoint is written and when `run` returns."""
        if self.sync_every > 1 and int(self._first_bad):
            self._diverged(self.clock.t, [], None)

    def _diverged(self, t: int, traces: list[LevelTrace], vitals: Tensor | None) -> None:
        if self.sync_every > 1:
            first, bad_loss = int(self._first_bad), bool(self._bad_loss)
            bad_u, bad_y = self._bad_u.tolist(), self._bad_y.tolist()
        else:
            first, bad = t, (~torch.isfinite(vitals)).tolist()
            bad_loss, bad_u = bad[0], bad[1:]
            bad_y = [not torch.isfinite(tr.y).all() for tr in traces]
        what = "loss became non-finite" if bad_loss else "surprise became non-finite (the loss was still finite)"
        seen = f" (detected at step {t})" if first != t else ""
        levels = [l + 1 for l, b in enumerate(bad_u) if b]
        if self.capture is None:
            level, where = None, "surprise not captured (capture=False)"
        elif not levels:
            level, where = None, "no level's surprise was non-finite"
        elif self.config.model.variant == "independent":  # side by side: no order between levels
            level, where = levels[0], f"non-finite surprise at level(s) {', '.join(map(str, levels))}"
        else:
            # Backprop computes u_k first and u_1 last: the first non-finite one is the highest.
            level, where = levels[-1], f"first non-finite surprise, in backprop order, at level {levels[-1]}"
        act = next((l + 1 for l, b in enumerate(bad_y) if b), None)
        if act is not None:
            where += f"; activations first non-finite at level {act}"
        raise DivergenceError(f"{what} at step {first}{seen}; {where}", first, level)

    @property
    def diverging(self) -> DivergingEvent | None:
        """Where the run began to diverge (nlviz.diverging), also from before a resume; else None."""
        return self.watch.event

    # ------------------------------------------------------------------ running
    def request_stop(self) -> None:
        """Ask `run` to return after the current step, or at once if it has not started.

        Safe from another thread or a signal handler: it only sets a flag."""
        self._stop = True

    def run(self, steps: int | None = None, progress: bool = False) -> RunResult:
        """Train up to `steps` more steps (default: to config.steps); end subscribers when done."""
        total = self.config.steps
        stop_at = total if steps is None else min(total, self.clock.t + steps)
        bar = ProgressBar(total=total, initial=self.clock.t) if progress else None
        if bar is not None:
            self.subscribers.append(bar)
        start = time.perf_counter()
        try:
            while self.clock.t < stop_at and not self._stop:
                self._step(keep=False)
            self.check_health()
        except DivergenceError as e:
            self.end("diverged", e)
            raise
        except KeyboardInterrupt as e:
            self.end("interrupted", e)
            raise
        except BaseException as e:
            self.end("failed", e)
            raise
        finally:
            self._stop = False  # a stop asked before this call still counts; it is used up here
            if bar is not None:
                bar.bar.close()
                self.subscribers.remove(bar)
        seconds = time.perf_counter() - start
        finished = self.clock.t >= total
        metrics = self.task.evaluate(self.model, self.clock.t) if finished else {}
        if finished:
            self.end("finished")
        final = float(self.last_loss) if self.last_loss is not None else None
        return RunResult("finished" if finished else "stopped", self.clock.t, seconds, final, metrics)

    def close(self) -> None:
        """Detach the trainer's hooks from the model (DGD's input sums), e.g. before reusing it."""
        for g in self.groups:
            if isinstance(g.optimizer, DGD):
                g.optimizer.close()

    def end(self, status: str, error: BaseException | None = None) -> None:
        for s in self.subscribers:
            s.on_end(self, status, error)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: model, optimizers, the grads of open
        chunks, clock, task stream and RNG states. Only tensors and plain Python values,
        so it loads with torch.load(weights_only=True)."""
        grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}
        np_state = np.random.get_state()
        rng = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "device_type": self.device.type,
            "config": json.dumps(self.config.to_dict()),
            "model": self.model.state_dict(),
            "optimizers": [g.optimizer.state_dict() for g in self.groups],
            "grads": grads,
            "clock": self.clock.state_dict(),
            "task": self.task.state_dict(),
            "rng": rng,
            "diverging": self.watch.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint: format {state.get('format')!r} is not {CHECKPOINT_FORMAT!r}")
        if state.get("device_type") != self.device.type:
            # The task stream's generator state is device-specific (CPU and CUDA RNGs differ).
            raise ValueError(
                f"checkpoint: written on {state['device_type']}, so it resumes on {state['device_type']} only, not {self.device.type}"
            )
        self.model.load_state_dict(state["model"])
        for g, s in zip(self.groups, state["optimizers"], strict=True):
            g.optimizer.load_state_dict(s)
        params = dict(self.model.named_parameters())
        for p in params.values():
            p.grad = None
        for n, grad in state["grads"].items():
            params[n].grad = grad.to(params[n].device)
        self.clock.load_state_dict(state["clock"])
        self.task.load_state_dict(state["task"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["python"]))
        name, keys, *rest = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if "diverging" in state:  # checkpoints written before the rule existed start it afresh
            self.watch.load_state_dict(state["diverging"])
        self._started = False

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint atomically (a temporary file, then a rename)."""
        self.check_health()  # never write a state that has already gone non-finite
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, subscribers: Iterable[Subscriber] = (), device: str | None = None, **kwargs: Any
    ) -> "Trainer":
        """Rebuild a trainer from a checkpoint (loaded with weights_only=True) and continue."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint: {path} is not an nlviz checkpoint")
        config = TrainConfig.from_dict(json.loads(state["config"]))
        if device is not None:
            config = TrainConfig.from_dict({**config.to_dict(), "device": device})
        trainer = cls(config, subscribers, **kwargs)
        trainer.load_state_dict(state)
        return trainer
