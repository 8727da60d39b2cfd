"""minLSTM, one layer (Feng et al. 2024, "Were RNNs All We Needed?").

    f_t = sigmoid(f~_t),  i_t = sigmoid(i~_t)        f~, i~, h~ = split(W x_t + bias)
    f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)      (time-independent scale)
    h_t = f'_t * h_{t-1} + i'_t * g(h~_t)

With d = softplus(-f~) - softplus(-i~) = log(i / f), the normalised gates are f' = sigmoid(-d) and
i' = sigmoid(d) exactly; that is how both paths compute them (no division, no 1 - x):

* ``scan_impl="log"``: log f' = -softplus(d), log i' = -softplus(-d), solved by
  :func:`rlmin.nn.scan.scan_log_h0` (h0 carried in linear space: any h0, 0 included).
* ``"auto"`` / ``"sequential"`` on CPU (float32/float64, no autocast): the fused layer path of
  :func:`rlmin.nn.fused.layer_scan` (gates, g and scan in one Function, d = logsigmoid(i~) - logsigmoid(f~)),
  after the Linear as one GEMM (oneDNN for large float32 inputs).
* ``"reference"``: plain torch ops end to end (``nn.Linear``, the gates as ``step`` writes them,
  :func:`rlmin.nn.scan.scan_reference`): the judge, and what the traced acting path records.
* anything else: a = sigmoid(-d), b = sigmoid(d) * g(h~) (by :func:`rlmin.nn.fused.scan_coefficients`,
  fused, with d = logsigmoid(i~) - logsigmoid(f~)), solved by :func:`rlmin.nn.scan.scan`.

Inputs are checked as for minGRU (:func:`rlmin.nn.common.check_layer_input`), and dtypes follow it too:
bf16/fp16 pre-activations are upcast to float32 (gates, scan and state in float32), h comes back in
x's dtype. ``step`` is the plain recurrence.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlmin.checks import positive_int
from rlmin.nn.base import ScanLayer
from rlmin.nn.common import check_layer_input, check_scan_impl, g, log_g, preactivations, state_at
from rlmin.nn.fused import fused_scan_ok, layer_scan, scan_coefficients
from rlmin.nn.scan import scan, scan_log_h0, scan_reference


class MinLSTM(ScanLayer):
    """One minLSTM layer: ``forward(x[B,T,d_in], h0=None) -> (h[B,T,d_hidden], h_last[B,d_hidden])``.

    Parameters: one ``Linear(d_in, 3 * d_hidden)``, i.e. exactly ``3 * d_hidden * (d_in + 1)``.
    ``h0=None`` means a zero initial state. With a non-negative h0 every h_t is positive.
    Dtypes as :class:`rlmin.nn.mingru.MinGRU`'s: h in x's dtype, h_last and ``step``'s result in the scan's.
    """

    def __init__(self, d_in: int, d_hidden: int, scan_impl: str = "auto"):
        super().__init__()
        self.d_in = positive_int("d_in", d_in)
        self.d_hidden = positive_int("d_hidden", d_hidden)
        self.scan_impl = check_scan_impl(scan_impl)
        self.linear = nn.Linear(d_in, 3 * d_hidden)  # [f~ | i~ | h~]

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_hidden={self.d_hidden}, scan_impl={self.scan_impl!r}"

    def _gates(self, x: torch.Tensor, plain: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        f, i, cand = preactivations(self.linear, x, plain).chunk(3, dim=-1)
        d = F.softplus(-f) - F.softplus(-i)  # log(i / f)
        return d, cand

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B, T, d_hidden] and the state to carry: after step T, or, with ``lengths`` [B], after
        each row's first lengths[b] steps (0: h0), for right-padded rows."""
        check_layer_input(x, h0, self.d_in, self.d_hidden)
        if self.scan_impl == "reference":
            d, cand = self._gates(x, plain=True)
            h = scan_reference(torch.sigmoid(-d), torch.sigmoid(d) * g(cand), h0)
        elif self.scan_impl == "log":
            d, cand = self._gates(x)
            h = scan_log_h0(-F.softplus(d), -F.softplus(-d) + log_g(cand), h0)
        else:
            p = preactivations(self.linear, x)
            if fused_scan_ok(p, h0, self.scan_impl):  # CPU: gates and scan in one Function
                h = layer_scan(p, h0, lstm=True)
            else:  # a = sigmoid(-d), b = sigmoid(d) * g(h~), fused with a hand-written backward
                a, b = scan_coefficients(p, lstm=True)
                h = scan(a, b, h0, impl=self.scan_impl)
        # back to x's dtype: a bf16-cast model's next Linear is bf16
        return h.to(x.dtype), h[:, -1] if lengths is None else state_at(h, h0, lengths)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step of the recurrence: x [B, d_in], h [B, d_hidden] -> new h (in the scan's dtype)."""
        check_layer_input(x, h, self.d_in, self.d_hidden, step=True)
        d, cand = self._gates(x)
        return torch.sigmoid(-d) * h + torch.sigmoid(d) * g(cand)
