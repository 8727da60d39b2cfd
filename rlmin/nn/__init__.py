"""Sequence backbones for rlmin: minGRU, minLSTM (Feng et al. 2024), a causal transformer (DT) and
torch's GRU / LSTM, all behind one contract.

Build one with :func:`build_backbone` (``name`` in mingru | minlstm | transformer | gru | lstm).
Every backbone is an ``nn.Module`` with

* ``forward(x[B, T, d_model], state=None) -> (y[B, T, d_model], state)``: the parallel path;
  ``state=None`` means ``initial_state(B)``; the returned state continues the sequence, so a forward
  on chunks with the state carried equals one forward (the transformer: within its context);
  a recurrent backbone's ``forward(x, state, lengths=L[B])`` returns instead each row's state after
  its first ``L[b]`` steps (``L[b] = 0``: the start state), for right-padded rows (burn-in prefixes),
  and with ``last=True`` only each row's last output y[B, d_model] (at ``L[b] - 1``, or ``T - 1``:
  what acting reads; the minRNN stacks skip the last block's other outputs);
* ``step(x[B, d_model], state) -> (y[B, d_model], state)``: one time step; T steps equal forward;
* ``initial_state(batch_size, device=None)``: the state before the first input;
* ``recurrent`` (True for all but the transformer) and, for the transformer, ``context``.

A state is a tuple of tensors, every one with the batch as dim 0 (torch's GRU/LSTM ``[layers, B, H]``
is transposed to ``[B, layers, H]``). So individual rows (finished episodes) can be reset without
touching the others: ``torch.where(mask.view(-1, 1, ...), fresh, old)`` per tensor, which
:func:`reset_rows` does for a whole state.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from rlmin.nn.blocks import MinGRUBackbone, MinLSTMBackbone, MinRNNBackbone
from rlmin.nn.mingru import MinGRU, check_size
from rlmin.nn.minlstm import MinLSTM
from rlmin.nn.rnn import GRUBackbone, LSTMBackbone, RNNBackbone
from rlmin.nn.transformer import TransformerBackbone

BACKBONES: dict[str, type[nn.Module]] = {
    "mingru": MinGRUBackbone,
    "minlstm": MinLSTMBackbone,
    "transformer": TransformerBackbone,
    "gru": GRUBackbone,
    "lstm": LSTMBackbone,
}


def backbone_options(name: str) -> dict:
    """The options a backbone accepts, with their defaults."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    return dict(BACKBONES[name].OPTIONS)


def is_recurrent(name: str) -> bool:
    """Whether backbone ``name`` carries a state from step to step (the transformer re-runs a window)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    return bool(getattr(BACKBONES[name], "recurrent", True))


def build_backbone(name: str, d_model: int, n_layers: int, **options) -> nn.Module:
    """Build the backbone ``name`` with width ``d_model`` and ``n_layers`` layers.

    ``options`` are the backbone's own (see :func:`backbone_options`): an unknown name or option, or a
    bad value, raises ValueError saying which ones are valid.
    """
    defaults = backbone_options(name)
    check_size("d_model", d_model)
    check_size("n_layers", n_layers)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for backbone {name!r}; "
                         f"valid options (with defaults): {valid}")
    return BACKBONES[name](d_model=d_model, n_layers=n_layers, **options)


def reset_rows(state: tuple[torch.Tensor, ...], mask: torch.Tensor,
               fresh: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Where ``mask[b]`` is True, take row b of ``fresh`` (e.g. ``initial_state(B)``), else of ``state``."""
    mask = mask.to(torch.bool)
    return tuple(torch.where(mask.view(-1, *[1] * (old.dim() - 1)), new.to(old.dtype), old)
                 for old, new in zip(state, fresh))


@contextlib.contextmanager
def reference_scans(module: nn.Module):
    """Every minRNN layer in ``module`` on ``scan_impl="reference"`` (plain torch ops) for the
    duration, e.g. while a trace records it; restored afterwards."""
    layers = [m for m in module.modules() if isinstance(m, (MinGRU, MinLSTM))]
    before = [m.scan_impl for m in layers]
    try:
        for m in layers:
            m.scan_impl = "reference"
        yield module
    finally:
        for m, impl in zip(layers, before):
            m.scan_impl = impl


__all__ = [
    "BACKBONES", "backbone_options", "build_backbone", "is_recurrent", "reference_scans", "reset_rows",
    "MinGRU", "MinLSTM", "MinRNNBackbone", "MinGRUBackbone", "MinLSTMBackbone",
    "TransformerBackbone", "RNNBackbone", "GRUBackbone", "LSTMBackbone",
]

