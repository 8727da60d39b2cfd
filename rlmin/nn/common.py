"""Helpers every minRNN layer and recurrent backbone shares: the paper's activation g, the
one input check of each path, the state of right-padded rows and the pre-activations."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlmin.nn.fused import _onednn_ok, cpu_linear

SCAN_IMPLS = ("auto", "reference", "log", "sequential", "triton")


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation: x + 0.5 for x >= 0, sigmoid(x) otherwise."""
    # relu(x) + sigmoid(min(x, 0)): the same values, without a select (cheaper in ONNX Runtime)
    return F.relu(x) + torch.sigmoid(x.clamp(max=0))


def state_at(h: torch.Tensor, h0: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
    """h[b, lengths[b] - 1] per row of h [B, T, H]; h0 (None: zeros) where lengths[b] == 0."""
    check_lengths(lengths, *h.shape[:2])
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
    last = h.gather(1, index)[:, 0]  # not h[arange(B), index]: one node in an ONNX graph, not ten
    start = torch.zeros_like(last) if h0 is None else h0.to(last.dtype)
    return torch.where((lengths > 0)[:, None], last, start)


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), computed without forming g: log(relu(x) + 0.5) for x >= 0, -softplus(-x) otherwise."""
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))


def check_scan_impl(scan_impl: str) -> str:
    if scan_impl not in SCAN_IMPLS:
        raise ValueError(f"scan_impl must be one of {', '.join(SCAN_IMPLS)}; got {scan_impl!r}")
    return scan_impl


def check_layer_input(x: torch.Tensor, h: torch.Tensor | None, d_in: int, d_hidden: int,
                      step: bool = False) -> None:
    """The one input check of every path of a minRNN layer (so none of them broadcasts or fails later).

    forward: x [B, T, d_in] with T >= 1, h (h0) None or exactly [B, d_hidden]; step: x [B, d_in], h [B, d_hidden].
    """
    if step:
        ok, want = x.dim() == 2 and x.shape[-1] == d_in, f"[B, {d_in}]"
    else:
        ok, want = x.dim() == 3 and x.shape[-1] == d_in and x.shape[1] > 0, f"[B, T, {d_in}] with T >= 1"
    if not ok:
        raise ValueError(f"x must be {want}; got shape {tuple(x.shape)}")
    if h is not None and h.shape != (x.shape[0], d_hidden):
        raise ValueError(f"{'h' if step else 'h0'} must be [B, d_hidden] = {(x.shape[0], d_hidden)} "
                         f"(no broadcasting); got shape {tuple(h.shape)}")


def check_lengths(lengths: torch.Tensor, batch: int, steps: int) -> None:
    """``lengths`` of right-padded rows: [B] integers in 0..T (every recurrent path checks the same)."""
    if lengths.shape != (batch,) or lengths.is_floating_point() \
            or not bool(((lengths >= 0) & (lengths <= steps)).all()):
        raise ValueError(f"lengths must be [B] = [{batch}] integers in 0..T = 0..{steps}; "
                         f"got {lengths.tolist()}")


def preactivations(linear: nn.Linear, x: torch.Tensor, plain: bool = False) -> torch.Tensor:
    """linear(x), upcast from float16/bfloat16 (autocast, or a model cast to bf16) to float32: gates and
    the scan run in >= float32.

    Large float32 CPU inputs go through :func:`rlmin.nn.fused.cpu_linear` (oneDNN; the same values to
    float32 rounding) unless ``plain``.
    """
    if not plain and _onednn_ok(x, linear.weight):
        return cpu_linear(x, linear.weight, linear.bias)
    out = linear(x)
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
