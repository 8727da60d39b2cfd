"""The linear recurrence h_t = a_t * h_{t-1} + b_t, with one plain reference.

PLACEHOLDER: the reference path and the public API only; faster paths are being added.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def scan_reference(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Plain loop; the judge of every other path. a, b: [B, T, D]; h0: [B, D] or None (zeros)."""
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    out = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        h = a_t * h + b_t
        out.append(h)
    return torch.stack(out, dim=1)


def scan_log(log_a: torch.Tensor, log_b: torch.Tensor, log_h0: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's log-space scan (Heinsen): needs b > 0 and h0 > 0. Returns h (not log h)."""
    if log_h0 is not None:
        log_a = F.pad(log_a, (0, 0, 1, 0))
        log_b = torch.cat([log_h0.unsqueeze(1), log_b], dim=1)
    a_star = log_a.cumsum(dim=1)
    log_h = a_star + torch.logcumsumexp(log_b - a_star, dim=1)
    h = log_h.exp()
    return h[:, 1:] if log_h0 is not None else h


def scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t over dim 1. impl: auto | reference | ..."""
    return scan_reference(a, b, h0)
