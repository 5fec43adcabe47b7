"""The level clock of Eq 31: which level updates when.

Time counts from 1. Level l (0-based here, "level l+1" in prose) with period C(l)
updates at t = C(l), 2 C(l), ... and is frozen in between, so every gradient of its
chunk is taken at the same parameters. The clock knows nothing about what a tick is:
the trainer ticks it once per optimizer step, and a sequence model can tick it once per
token (the in-context reading of Eq 31 used by HOPE). `unit` only names the reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LevelClock"]


@dataclass
class LevelClock:
    periods: tuple[int, ...]  # C(l) for each level, fastest first by convention
    unit: str = "step"  # "step" (optimizer steps) or "token" (positions in a sequence)
    t: int = 0  # ticks so far; the next tick is t + 1
    _by_period: dict[int, tuple[int, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.periods = tuple(self.periods)
        if not self.periods or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in self.periods):
            raise ValueError(f"periods: must be integers >= 1, got {self.periods}")
        groups: dict[int, list[int]] = {}
        for level, p in enumerate(self.periods):
            groups.setdefault(p, []).append(level)
        self._by_period = {p: tuple(ls) for p, ls in groups.items()}

    def due(self, t: int) -> tuple[int, ...]:
        """Levels whose chunk ends at time t (t >= 1), in level order."""
        if len(self._by_period) == 1:  # common case, and the hot path of a one-period model
            (p, levels), = self._by_period.items()
            return levels if t % p == 0 else ()
        return tuple(sorted(lv for p, ls in self._by_period.items() if t % p == 0 for lv in ls))

    def tick(self) -> tuple[int, tuple[int, ...]]:
        """Advance one unit of time; return (t, levels that update at t)."""
        self.t += 1
        return self.t, self.due(self.t)

    def chunk_position(self, level: int, t: int | None = None) -> int:
        """How many ticks of level's current chunk have passed at time t (1..C(l))."""
        t = self.t if t is None else t
        return (t - 1) % self.periods[level] + 1

    def updates_between(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Every (t, level) update event with start <= t <= stop, in time order."""
        events = []
        for level, p in enumerate(self.periods):
            first = ((max(start, 1) + p - 1) // p) * p
            events.extend((t, level) for t in range(first, stop + 1, p))
        return sorted(events)

    def state_dict(self) -> dict:
        return {"periods": list(self.periods), "unit": self.unit, "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["periods"]) != self.periods:
            raise ValueError(f"periods: checkpoint has {tuple(state['periods'])}, this clock {self.periods}")
        self.unit = state["unit"]
        self.t = int(state["t"])
