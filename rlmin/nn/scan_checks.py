"""Input checks and the torch.compile wrapper shared by rlmin/nn/scan.py and rlmin/nn/scan_triton.py
(below both, so that scan_triton need not import scan)."""
from __future__ import annotations

import torch


def _check(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, names=("a", "b", "h0")) -> None:
    """Raise ValueError unless a, b are same-shape [B, T, D] and h0 is None or [B, D]."""
    na, nb, nh = names
    if a.dim() != 3:
        raise ValueError(f"{na} must be [B, T, D]; got shape {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(
            f"{na} and {nb} must have the same shape [B, T, D] (no broadcasting); "
            f"got {na}: {tuple(a.shape)} and {nb}: {tuple(b.shape)}"
        )
    if h0 is not None and h0.shape != (a.shape[0], a.shape[2]):
        raise ValueError(
            f"{nh} must be [B, D] = {(a.shape[0], a.shape[2])} for {na}, {nb} of shape "
            f"{tuple(a.shape)}; got {nh}: {tuple(h0.shape)}"
        )
    if a.device != b.device or (h0 is not None and h0.device != a.device):
        devs = f"{na}: {a.device}, {nb}: {b.device}" + ("" if h0 is None else f", {nh}: {h0.device}")
        raise ValueError(f"scan inputs must be on one device; got {devs}")


_OPAQUE: dict = {}


def _apply_opaque(fn: torch.autograd.Function, *args):
    """fn.apply(*args), run eagerly (a graph break) when torch.compile is tracing.

    Tracing these Functions would unroll the T loop (sequential) or trace kernel launches
    (Triton). The disabled wrapper is made on first use while compiling, because
    ``torch.compiler.disable`` imports torch._dynamo (and with it triton, ~2 s), which plain eager
    users should not pay for.
    """
    if not torch.compiler.is_compiling():
        return fn.apply(*args)
    wrapped = _OPAQUE.get(fn)
    if wrapped is None:
        wrapped = _OPAQUE[fn] = torch.compiler.disable(fn.apply)
    return wrapped(*args)
