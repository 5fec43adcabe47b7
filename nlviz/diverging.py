"""Diverging runs: a finite loss that has grown by orders of magnitude, flagged while it trains.

A non-finite loss or surprise stops a run as *diverged* (`trainer.DivergenceError`). A
finite loss can blow up long before that - learning rate 100 on two levels of the default
CMS takes the multi-timescale loss to about 1e18 - and a run that goes on like that has
nothing left to teach. The rule, stated here once (the trainer, the run store, the command
line and the dashboard all use it):

    m = the smallest loss the trainer read during the run's first EARLY_STEPS steps
        (its *early minimum*; the trainer reads the loss at its sync steps: every step on
        the CPU, every 50th on a GPU by default; with sync_every > EARLY_STEPS, the first
        loss it read);
    the run is *diverging* from the first step t at which loss_t > factor * m, with
    factor = TrainConfig.diverging_factor (default 1e4; 0 turns the rule off).

Where: the level whose surprise grew most, max|u_l| at step t divided by the smallest
max|u_l| read in the same early window (needs `capture`; otherwise no level is named).
The flag is raised once per run, at the first crossing; the run goes on unless
`TrainConfig.diverging_stop` asks the trainer to end it there (status "diverged"). A task
whose loss can reach 0 or go below it has no scale to grow from: an early minimum <= 0 turns
the rule off for that run.

The decision to know: the reference is the *early* minimum, not the running one. A loss
that falls to 1e-7 and then rises to 1e-3 has grown 1e4-fold from its running minimum yet
is still far below where it started; measuring against the first steps only flags losses
that have grown far past where training began.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

__all__ = ["DivergingWatch", "DivergingEvent", "EARLY_STEPS", "rule"]

EARLY_STEPS = 100  # the early window: the first this-many steps of a run give its reference loss


def rule(factor: float | str) -> str:
    """The rule in one line, for messages and help texts (factor: a number, or a name for it)."""
    shown = f"{factor:g}" if isinstance(factor, (int, float)) else factor
    return f"loss above {shown} x the smallest loss of the first {EARLY_STEPS} steps"


@dataclass(frozen=True)
class DivergingEvent:
    """The first step at which a run's loss crossed the rule (see the module docstring)."""

    step: int  # t, from 1
    loss: float  # the loss at t
    reference: float  # the early minimum m
    reference_step: int  # the step that gave m
    factor: float  # the rule's factor
    level: int | None  # the level (from 1) whose surprise grew most, or None without capture
    growth: float | None  # that level's max|u_l| at t over its early minimum
    message: str  # one line saying all of the above

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DivergingWatch:
    """Applies the rule to the values the trainer reads at its sync steps; see the module docstring.

    `observe(step, loss, surprise_max)` returns a DivergingEvent at the first crossing (kept
    as `event`) and None otherwise. Its state (the early minima, the event) is plain numbers
    and strings, so it travels in a checkpoint and a resumed run keeps its reference and flag."""

    def __init__(self, factor: float):
        """factor: TrainConfig.diverging_factor (validated there: 0 or a number > 1)."""
        self.factor = float(factor)
        self.reference: float | None = None  # the early minimum of the loss
        self.reference_step = 0
        self.surprise_floor: list[float] = []  # per level, the early minimum of max|u_l|
        self.event: DivergingEvent | None = None  # the flag, once raised

    def observe(self, step: int, loss: float, surprise_max: Sequence[float] = ()) -> DivergingEvent | None:
        if not self.factor or self.event is not None or not math.isfinite(loss):
            return None  # a non-finite loss is the trainer's DivergenceError, not a warning
        if step <= EARLY_STEPS or self.reference is None:  # no sync step inside the window: the first read
            if self.reference is None or loss < self.reference:
                self.reference, self.reference_step = loss, step
            if not self.surprise_floor:
                self.surprise_floor = [math.inf] * len(surprise_max)
            self.surprise_floor = [min(f, u) if math.isfinite(u) else f
                                   for f, u in zip(self.surprise_floor, surprise_max)]
        if self.reference is None or self.reference <= 0 or loss <= self.factor * self.reference:
            return None
        level, growth = self._grown_most(surprise_max)
        where = (f"surprise grew most at level {level} (max |u_l| x{growth:.3g} since the first {EARLY_STEPS} steps)"
                 if level is not None else "surprise not captured, so no level is named")
        message = (f"diverging at step {step}: loss {loss:.3g} is {loss / self.reference:.3g} x its early minimum "
                   f"{self.reference:.3g} (step {self.reference_step}); {where}. Rule: {rule(self.factor)}")
        self.event = DivergingEvent(step, loss, self.reference, self.reference_step, self.factor, level, growth, message)
        return self.event

    def _grown_most(self, surprise_max: Sequence[float]) -> tuple[int | None, float | None]:
        best, level = -math.inf, None
        for l, (floor, now) in enumerate(zip(self.surprise_floor, surprise_max), start=1):
            if floor > 0 and math.isfinite(floor) and math.isfinite(now) and now / floor > best:
                best, level = now / floor, l
        return (level, best) if level is not None else (None, None)

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "reference_step": self.reference_step,
                "surprise_floor": list(self.surprise_floor),
                "event": self.event.to_dict() if self.event is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = state["reference"]
        self.reference_step = int(state["reference_step"])
        self.surprise_floor = [float(f) for f in state["surprise_floor"]]
        self.event = DivergingEvent(**state["event"]) if state["event"] is not None else None
