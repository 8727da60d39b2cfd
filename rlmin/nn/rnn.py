"""GRU and LSTM baselines: torch.nn.GRU / nn.LSTM (batch_first; cuDNN on GPU) behind the backbone contract.

``n_layers`` stacked layers, hidden size = d_model, ``dropout`` (0.0) between layers (torch applies
none after the last layer, so it is ignored for a single layer). The output is the top layer's
hidden sequence, as torch returns it.

State: ``(h,)`` for the GRU and ``(h, c)`` for the LSTM, each ``[B, n_layers, d_model]``, i.e.
torch's ``[n_layers, B, H]`` transposed so that the batch is dim 0 like every other backbone's state;
a caller resets rows with ``torch.where(mask[:, None, None], fresh, old)`` (or
:func:`rlmin.nn.reset_rows`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from rlmin.checks import probability
from rlmin.nn.base import Backbone
from rlmin.nn.common import check_lengths

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class RNNBackbone(Backbone):
    """torch.nn.GRU or nn.LSTM with ``forward(x, state=None)``, ``step`` and ``initial_state``."""

    cell = ""  # "gru" | "lstm": set by the subclass

    @dataclass
    class Options:
        dropout: Optional[float] = None  # between layers; None: the owner's (an agent's), 0 alone

        def __post_init__(self):
            if self.dropout is not None:
                probability("dropout", self.dropout)

    def __init__(self, d_model: int, n_layers: int, options: "RNNBackbone.Options | None" = None):
        super().__init__(d_model, n_layers, options)
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}; got {self.cell!r}")
        dropout = 0.0 if self.options.dropout is None else float(self.options.dropout)
        self.rnn = CELLS[self.cell](d_model, d_model, n_layers, batch_first=True,
                                    dropout=dropout if n_layers > 1 else 0.0)

    def initial_state(self, batch_size: int, device=None) -> tuple[torch.Tensor, ...]:
        w = self.rnn.weight_ih_l0
        device = w.device if device is None else device
        n = 2 if self.cell == "lstm" else 1
        return tuple(torch.zeros(batch_size, self.n_layers, self.d_model, device=device, dtype=w.dtype)
                     for _ in range(n))

    def forward(self, x: torch.Tensor, state=None, lengths: torch.Tensor | None = None,
                last: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``lengths`` [B]: the returned state is each row's after its first lengths[b] steps (0: the
        initial state), for right-padded rows; y past a row's length is then zero. ``last``: y is
        only each row's last output [B, d_model] (at lengths - 1, or T - 1)."""
        n = 2 if self.cell == "lstm" else 1
        if state is not None and (not isinstance(state, (tuple, list)) or len(state) != n):
            raise ValueError(f"state must be a tuple of {n} tensor(s) [B, n_layers, d_model], "
                             f"as made by initial_state")
        hx = None if state is None else tuple(s.transpose(0, 1).contiguous() for s in state)
        hx = hx if hx is None or self.cell == "lstm" else hx[0]
        # On CPU the recurrence runs in float32 under autocast: oneDNN has no bf16 LSTM primitive
        # on CPUs without native bf16 (AVX2 only: "could not create a primitive descriptor").
        cpu_autocast = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        with torch.autocast("cpu", enabled=False) if cpu_autocast else contextlib.nullcontext():
            if cpu_autocast:
                x = x.float()
                hx = None if hx is None else (tuple(h.float() for h in hx)
                                              if isinstance(hx, tuple) else hx.float())
            if lengths is None:
                y, hn = self.rnn(x, hx)
            else:
                check_lengths(lengths, *x.shape[:2])
                packed = nn.utils.rnn.pack_padded_sequence(  # rows of length 0 get their start state below
                    x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
                y, hn = self.rnn(packed, hx)
                y = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])[0]
        hn = tuple(h.transpose(0, 1) for h in (hn if self.cell == "lstm" else (hn,)))
        if lengths is not None:
            start = self.initial_state(x.shape[0], x.device) if state is None else tuple(state)
            empty = (lengths == 0).to(x.device)[:, None, None]
            hn = tuple(torch.where(empty, s0, h) for s0, h in zip(start, hn))
        if last:
            y = y[:, -1] if lengths is None else y[torch.arange(y.shape[0]), (lengths - 1).clamp(min=0)]
        return y, hn

    def step(self, x: torch.Tensor, state) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        y, state = self.forward(x.unsqueeze(1), state)
        return y[:, 0], state


class GRUBackbone(RNNBackbone):
    cell = "gru"


class LSTMBackbone(RNNBackbone):
    cell = "lstm"
