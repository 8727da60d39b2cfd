"""minGRU, one layer (Feng et al. 2024, "Were RNNs All We Needed?").

    z_t  = sigmoid(k_t)                 k_t, h~_t = split(W x_t + bias)
    h_t  = (1 - z_t) * h_{t-1} + z_t * g(h~_t)
    g(x) = x + 0.5 if x >= 0 else sigmoid(x)       (so g > 0 and h stays positive)

The gate depends on the input only, so the recurrence is the linear scan
h_t = a_t * h_{t-1} + b_t with a_t = 1 - z_t, b_t = z_t * g(h~_t), solved in parallel over time.

Two parallel paths, same result to float tolerance:

* ``scan_impl="log"``: the paper's log-space form, log(1 - z) = -softplus(k), log z = -softplus(-k),
  log g as in :func:`log_g`, solved by :func:`rlmin.nn.scan.scan_log`. It needs h0 >= 0; an h0 of
  exactly 0 is clamped to the smallest normal float so that its log (and its gradient) stay finite.
* anything else (``"auto"``, ``"reference"``, ``"sequential"``, ``"triton"``): a and b in linear space,
  computed stably (``a = sigmoid(-k)``, not ``1 - sigmoid(k)``), solved by :func:`rlmin.nn.scan.scan`.

``step`` is the plain recurrence, one time step at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlmin.nn.scan import scan, scan_log

SCAN_IMPLS = ("auto", "reference", "log", "sequential", "triton")


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation: x + 0.5 for x >= 0, sigmoid(x) otherwise."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), computed without forming g: log(relu(x) + 0.5) for x >= 0, -softplus(-x) otherwise."""
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))


def check_scan_impl(scan_impl: str) -> str:
    if scan_impl not in SCAN_IMPLS:
        raise ValueError(f"scan_impl must be one of {', '.join(SCAN_IMPLS)}; got {scan_impl!r}")
    return scan_impl


def check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def log_state(h0: torch.Tensor | None) -> torch.Tensor | None:
    """log h0 for the log-space scan; zeros (a fresh state) are clamped to the smallest normal float."""
    if h0 is None:
        return None
    return h0.clamp_min(torch.finfo(h0.dtype).tiny).log()


class MinGRU(nn.Module):
    """One minGRU layer: ``forward(x[B,T,d_in], h0=None) -> (h[B,T,d_hidden], h_last[B,d_hidden])``.

    Parameters: one ``Linear(d_in, 2 * d_hidden)``, i.e. exactly ``2 * d_hidden * (d_in + 1)``.
    ``h0=None`` means a zero initial state. With a non-negative h0 every h_t is positive.
    """

    def __init__(self, d_in: int, d_hidden: int, scan_impl: str = "auto"):
        super().__init__()
        self.d_in = check_size("d_in", d_in)
        self.d_hidden = check_size("d_hidden", d_hidden)
        self.scan_impl = check_scan_impl(scan_impl)
        self.linear = nn.Linear(d_in, 2 * d_hidden)  # [k (gate) | h~ (candidate)]

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_hidden={self.d_hidden}, scan_impl={self.scan_impl!r}"

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        k, cand = self.linear(x).chunk(2, dim=-1)
        if self.scan_impl == "log":
            log_a = -F.softplus(k)  # log(1 - z)
            log_b = -F.softplus(-k) + log_g(cand)  # log z + log g(h~)
            h = scan_log(log_a, log_b, log_state(h0))
        else:
            a = torch.sigmoid(-k)
            b = torch.sigmoid(k) * g(cand)
            h = scan(a, b, h0, impl=self.scan_impl)
        return h, h[:, -1]

    def step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step of the recurrence: x [B, d_in], h [B, d_hidden] -> new h."""
        k, cand = self.linear(x).chunk(2, dim=-1)
        return torch.sigmoid(-k) * h + torch.sigmoid(k) * g(cand)
