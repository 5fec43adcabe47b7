"""The Continuum Memory System (CMS) of Eq 30: a chain of MLP blocks, one per level.

Notation used in shape comments and names:
    l     level index (0-based in code, "level l+1" in prose and in the app)
    C(l)  the level's period: it updates every C(l) steps (Eq 31, see `nlviz.clock`)
    x     a level's input, y its output y_l, u = dL/dy_l its local surprise (Eq 25)
    B     batch size, d a level's width, h its hidden size

    y_t = MLP^(f_k)( MLP^(f_{k-1})( ... MLP^(f_1)(x_t) ) )               (Eq 30)

The decision to know: each level is a pre-norm residual block y = x + W2 gelu(W1 LN(x)),
with the residual and the LayerNorm switchable off to show the paper's bare chain. The
last operation of a block is the residual addition, so the surprise at the output
layer W2 is exactly the level's surprise u_l in every configuration. A stem and a head
(linear maps, trained every step) adapt the task's input and output widths. The
`independent` variant runs the levels side by side on the stem's output and combines
them with a learned weighted sum. The model never prints; it returns its internals only
when asked (`return_internals=True`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LevelSpec, ModelConfig

__all__ = ["CMS", "MLPLevel", "LSTMLevel", "LevelTrace"]


@dataclass
class LevelTrace:
    """What one level saw and produced in one forward pass (tensors still in the graph)."""

    x: Tensor  # (B, d_in) the level's input
    y: Tensor  # (B, d) the level's output y_l
    linear_inputs: tuple[Tensor, ...]  # input of each of level.linears, aligned with it
    # Output of each of level.linears (before activation), or None where that output's
    # gradient is the level's own output gradient (the output layer and the skip projection,
    # because the block ends in their sum).
    linear_outputs: tuple[Tensor | None, ...]


class MLPLevel(nn.Module):
    """One CMS level: y = skip(x) + W2 gelu(W1 LN(x)); skip is x, a projection, or absent."""

    def __init__(self, d_in: int, spec: LevelSpec, residual: bool = True, norm: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(d_in) if norm else nn.Identity()
        self.fc1 = nn.Linear(d_in, spec.hidden)
        self.fc2 = nn.Linear(spec.hidden, spec.width)
        self.skip: nn.Module | None = None
        if residual:
            self.skip = nn.Identity() if d_in == spec.width else nn.Linear(d_in, spec.width, bias=False)
        self.linears: tuple[nn.Linear, ...] = (self.fc1, self.fc2) + (
            (self.skip,) if isinstance(self.skip, nn.Linear) else ()
        )

    @property
    def output_layer(self) -> nn.Linear:
        """The linear map whose output gradient is u_l (Eq 25's W for this level)."""
        return self.fc2

    def forward(self, x: Tensor, trace: bool = False) -> tuple[Tensor, LevelTrace | None]:
        n = self.norm(x)  # (B, d_in)
        z = self.fc1(n)  # (B, h)
        a = F.gelu(z)  # (B, h)
        o = self.fc2(a)  # (B, d)
        s = self.skip(x) if self.skip is not None else None  # (B, d)
        y = o if s is None else o + s  # (B, d)
        if not trace:
            return y, None
        ins, outs = (n, a), (z, None)
        if isinstance(self.skip, nn.Linear):
            ins, outs = ins + (x,), outs + (None,)
        return y, LevelTrace(x=x, y=y, linear_inputs=ins, linear_outputs=outs)


class LSTMLevel(nn.Module):
    """An LSTM cell as the first level; its (h, c) state persists across training batches.

    The state is detached after every step, so gradients never flow into past batches
    (truncated BPTT of length 1). It is kept only in training mode and reset to zeros when
    the batch size changes; evaluation starts from zeros and leaves the training state
    alone. Each batch row is its own stream.
    """

    def __init__(self, d_in: int, spec: LevelSpec, residual: bool = True, norm: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(d_in) if norm else nn.Identity()
        self.cell = nn.LSTMCell(d_in, spec.width)
        self.skip: nn.Module | None = None
        if residual:
            self.skip = nn.Identity() if d_in == spec.width else nn.Linear(d_in, spec.width, bias=False)
        self.linears: tuple[nn.Linear, ...] = (self.skip,) if isinstance(self.skip, nn.Linear) else ()
        self.state: tuple[Tensor, Tensor] | None = None

    @property
    def output_layer(self) -> None:
        return None

    def reset_state(self) -> None:
        self.state = None

    def _step(self, n: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        return self.cell(n, state)

    def forward(self, x: Tensor, trace: bool = False) -> tuple[Tensor, LevelTrace | None]:
        n = self.norm(x)  # (B, d_in) or (B, T, d_in)
        state = self.state if self.training else None
        if state is not None and state[0].shape[0] != x.shape[0]:
            state = None
        if x.dim() == 3:  # token time: run the cell along T
            outs = []
            for t in range(x.shape[1]):
                state = self._step(n[:, t], state)
                outs.append(state[0])
            h = torch.stack(outs, dim=1)  # (B, T, d)
        else:
            state = self._step(n, state)
            h = state[0]  # (B, d)
        if self.training:
            self.state = (state[0].detach(), state[1].detach())
        s = self.skip(x) if self.skip is not None else None
        y = h if s is None else h + s
        if not trace:
            return y, None
        ins, outs = ((x,), (None,)) if isinstance(self.skip, nn.Linear) else ((), ())
        return y, LevelTrace(x=x, y=y, linear_inputs=ins, linear_outputs=outs)

    def get_extra_state(self) -> dict:
        if self.state is None:
            return {}
        return {"h": self.state[0].detach().clone(), "c": self.state[1].detach().clone()}

    def set_extra_state(self, state: dict) -> None:
        device = self.cell.weight_ih.device  # a checkpoint is loaded on the CPU first
        self.state = (state["h"].to(device), state["c"].to(device)) if state else None


class CMS(nn.Module):
    """Eq 30: stem -> level 1 -> ... -> level k -> head (or levels side by side, summed)."""

    def __init__(self, config: ModelConfig, d_in: int, d_out: int):
        super().__init__()
        self.config = config
        specs = config.levels
        d0 = specs[0].width
        self.stem = nn.Linear(d_in, d0)
        levels, d = [], d0
        for spec in specs:
            cls = LSTMLevel if spec.kind == "lstm" else MLPLevel
            levels.append(cls(d, spec, residual=config.residual, norm=config.norm))
            if config.variant == "sequential":
                d = spec.width
        self.levels = nn.ModuleList(levels)
        self.mix = None
        if config.variant == "independent":
            self.mix = nn.Parameter(torch.full((len(specs),), 1.0 / len(specs)))  # learned weights
        self.head = nn.Linear(d, d_out)

    @property
    def periods(self) -> tuple[int, ...]:
        return self.config.periods

    def io_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the levels (stem, head, mixing weights): trained every step."""
        params = list(self.stem.parameters()) + list(self.head.parameters())
        return params + ([self.mix] if self.mix is not None else [])

    def forward(self, x: Tensor, return_internals: bool = False):
        """x (B, d_in) -> prediction (B, d_out); with return_internals, also a LevelTrace per level."""
        h = self.stem(x)  # (B, d)
        traces: list[LevelTrace] = []
        if self.mix is None:
            for level in self.levels:
                h, tr = level(h, trace=return_internals)
                if tr is not None:
                    traces.append(tr)
        else:
            ys = []
            for level in self.levels:
                y, tr = level(h, trace=return_internals)
                ys.append(y)
                if tr is not None:
                    traces.append(tr)
            h = torch.einsum("k,k...->...", self.mix, torch.stack(ys))  # (B, d)
        out = self.head(h)  # (B, d_out)
        return (out, traces) if return_internals else out
