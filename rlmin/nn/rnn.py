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

import torch
from torch import nn

from rlmin.nn.blocks import check_dropout
from rlmin.nn.mingru import check_size

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class RNNBackbone(nn.Module):
    """torch.nn.GRU or nn.LSTM with ``forward(x, state=None)``, ``step`` and ``initial_state``."""

    recurrent = True
    OPTIONS = {"dropout": 0.0}

    def __init__(self, cell: str, d_model: int, n_layers: int, dropout: float = 0.0):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}; got {cell!r}")
        self.cell = cell
        self.d_model = check_size("d_model", d_model)
        self.n_layers = check_size("n_layers", n_layers)
        dropout = check_dropout(dropout)
        self.rnn = CELLS[cell](d_model, d_model, n_layers, batch_first=True,
                               dropout=dropout if n_layers > 1 else 0.0)

    def initial_state(self, batch_size: int, device=None) -> tuple[torch.Tensor, ...]:
        w = self.rnn.weight_ih_l0
        device = w.device if device is None else device
        n = 2 if self.cell == "lstm" else 1
        return tuple(torch.zeros(batch_size, self.n_layers, self.d_model, device=device, dtype=w.dtype)
                     for _ in range(n))

    def forward(self, x: torch.Tensor, state=None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if state is None:
            hx = None
        else:
            n = 2 if self.cell == "lstm" else 1
            if not isinstance(state, (tuple, list)) or len(state) != n:
                raise ValueError(f"state must be a tuple of {n} tensor(s) [B, n_layers, d_model], "
                                 f"as made by initial_state")
            hx = tuple(s.transpose(0, 1).contiguous() for s in state)
            hx = hx if self.cell == "lstm" else hx[0]
        y, hn = self.rnn(x, hx)
        hn = hn if self.cell == "lstm" else (hn,)
        return y, tuple(h.transpose(0, 1) for h in hn)

    def step(self, x: torch.Tensor, state) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        y, state = self.forward(x.unsqueeze(1), state)
        return y[:, 0], state


class GRUBackbone(RNNBackbone):
    def __init__(self, d_model: int, n_layers: int, **options):
        super().__init__("gru", d_model, n_layers, **options)


class LSTMBackbone(RNNBackbone):
    def __init__(self, d_model: int, n_layers: int, **options):
        super().__init__("lstm", d_model, n_layers, **options)
