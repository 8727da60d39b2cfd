"""minGRU, one layer (Feng et al. 2024, "Were RNNs All We Needed?").

    z_t  = sigmoid(k_t)                 k_t, h~_t = split(W x_t + bias)
    h_t  = (1 - z_t) * h_{t-1} + z_t * g(h~_t)
    g(x) = x + 0.5 if x >= 0 else sigmoid(x)       (so g > 0 and h stays positive)

The gate depends on the input only, so the recurrence is the linear scan
h_t = a_t * h_{t-1} + b_t with a_t = 1 - z_t, b_t = z_t * g(h~_t), solved in parallel over time.

Four parallel paths, the same result to float tolerance (the fused kernels are in :mod:`rlmin.nn.fused`):

* ``scan_impl="log"``: the paper's log-space form, log(1 - z) = -softplus(k), log z = -softplus(-k),
  log g as in :func:`log_g`, solved by :func:`rlmin.nn.scan.scan_log_h0` (h0 is carried in linear
  space, so any h0 works, 0 included, with its true gradient).
* ``"auto"`` / ``"sequential"`` on CPU (float32/float64, no autocast): the fused path. The Linear is one
  [B*T, d_in] @ [d_in, 2*d_hidden] GEMM forward and one each for dX and dW backward (through oneDNN for
  large float32 inputs, :func:`rlmin.nn.fused.cpu_linear`), then gates, g and the sequential scan run in
  one autograd Function with a hand-written backward (:func:`rlmin.nn.fused.layer_scan`).
* ``"reference"``: plain torch ops end to end (``nn.Linear``, the gates as ``step`` writes them, the
  loop of :func:`rlmin.nn.scan.scan_reference`): the judge of the other paths, and what the traced
  acting path records (the fused paths are opaque autograd Functions to a tracer).
* anything else (``"triton"``, CUDA, autocast, a model cast to bf16): a and b in linear
  space, computed stably (``a = sigmoid(-k)``, not ``1 - sigmoid(k)``) by
  :func:`rlmin.nn.fused.scan_coefficients`, solved by :func:`rlmin.nn.scan.scan`.

Every path checks its inputs the same way (:func:`check_layer_input`). ``step`` is the plain recurrence,
one time step at a time. The pre-activations of a float16/bfloat16 input (autocast, or a model cast
with ``.to(torch.bfloat16)``) are upcast to float32, so the gates, the scan and the state are float32;
the output h is returned in the input's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlmin.checks import positive_int
from rlmin.nn.base import ScanLayer
from rlmin.nn.common import SCAN_IMPLS, check_layer_input, check_scan_impl, g, log_g, preactivations, state_at
from rlmin.nn.fused import fused_scan_ok, layer_scan, scan_coefficients
from rlmin.nn.scan import scan, scan_log_h0, scan_reference

__all__ = ["MinGRU", "SCAN_IMPLS", "g", "log_g"]  # g and log_g: the paper's, shared with minLSTM


class MinGRU(ScanLayer):
    """One minGRU layer: ``forward(x[B,T,d_in], h0=None) -> (h[B,T,d_hidden], h_last[B,d_hidden])``.

    Parameters: one ``Linear(d_in, 2 * d_hidden)``, i.e. exactly ``2 * d_hidden * (d_in + 1)``.
    ``h0=None`` means a zero initial state. With a non-negative h0 every h_t is positive.
    h has x's dtype; h_last (the state to carry) has the scan's (float32 for a bf16/fp16 x), as does
    ``step``'s result, so a carried state is not rounded to bf16 at every chunk or step.
    """

    def __init__(self, d_in: int, d_hidden: int, scan_impl: str = "auto"):
        super().__init__()
        self.d_in = positive_int("d_in", d_in)
        self.d_hidden = positive_int("d_hidden", d_hidden)
        self.scan_impl = check_scan_impl(scan_impl)
        self.linear = nn.Linear(d_in, 2 * d_hidden)  # [k (gate) | h~ (candidate)]

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_hidden={self.d_hidden}, scan_impl={self.scan_impl!r}"

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B, T, d_hidden] and the state to carry: after step T, or, with ``lengths`` [B], after
        each row's first lengths[b] steps (0: h0), for right-padded rows."""
        check_layer_input(x, h0, self.d_in, self.d_hidden)
        p = preactivations(self.linear, x, plain=self.scan_impl == "reference")
        if self.scan_impl == "reference":
            k, cand = p.chunk(2, dim=-1)
            h = scan_reference(torch.sigmoid(-k), torch.sigmoid(k) * g(cand), h0)
        elif self.scan_impl == "log":
            k, cand = p.chunk(2, dim=-1)
            h = scan_log_h0(-F.softplus(k), -F.softplus(-k) + log_g(cand), h0)  # log(1 - z), log z + log g(h~)
        elif fused_scan_ok(p, h0, self.scan_impl):  # CPU: gates and scan in one Function
            h = layer_scan(p, h0, lstm=False)
        else:
            a, b = scan_coefficients(p, lstm=False)  # a = sigmoid(-k), b = sigmoid(k) * g(h~)
            h = scan(a, b, h0, impl=self.scan_impl)
        # back to x's dtype: a bf16-cast model's next Linear is bf16
        return h.to(x.dtype), h[:, -1] if lengths is None else state_at(h, h0, lengths)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step of the recurrence: x [B, d_in], h [B, d_hidden] -> new h (in the scan's dtype)."""
        check_layer_input(x, h, self.d_in, self.d_hidden, step=True)
        k, cand = preactivations(self.linear, x).chunk(2, dim=-1)
        return torch.sigmoid(-k) * h + torch.sigmoid(k) * g(cand)
