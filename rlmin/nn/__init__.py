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
* the class declares the rest (:class:`rlmin.nn.base.Backbone`): its typed ``Options``, built as
  ``cls(d_model, n_layers, options)``; ``recurrent`` (True for all but the transformer); and
  ``for_owner``, which fills the options an agent decides (its dropout, a windowed backbone's
  context). Adding a backbone: a subclass in its own file, one entry in :data:`BACKBONES` (or
  :func:`register_backbone` from outside), a YAML under configs/backbones/.

A state is a tuple of tensors, every one with the batch as dim 0 (torch's GRU/LSTM ``[layers, B, H]``
is transposed to ``[B, layers, H]``). So individual rows (finished episodes) can be reset without
touching the others: ``torch.where(mask.view(-1, 1, ...), fresh, old)`` per tensor, which
:func:`reset_rows` does for a whole state.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from rlmin import registry
from rlmin.nn.base import Backbone, ScanLayer
from rlmin.nn.blocks import MinGRUBackbone, MinLSTMBackbone, MinRNNBackbone
from rlmin.nn.mingru import MinGRU
from rlmin.nn.minlstm import MinLSTM
from rlmin.nn.rnn import GRUBackbone, LSTMBackbone, RNNBackbone
from rlmin.nn.transformer import TransformerBackbone
from rlmin.options import typed

BACKBONES: dict[str, type[Backbone]] = {
    "mingru": MinGRUBackbone,
    "minlstm": MinLSTMBackbone,
    "transformer": TransformerBackbone,
    "gru": GRUBackbone,
    "lstm": LSTMBackbone,
}


BACKBONE_GROUP = "rlmin.backbones"  # entry points (and register_backbone) add backbones beside these


def backbone_names() -> list[str]:
    return [*BACKBONES, *(n for n in registry.names(BACKBONE_GROUP) if n not in BACKBONES)]


def backbone_class(name: str) -> type[Backbone]:
    """The backbone ``name``: a built-in one, else one a package declares under the
    ``rlmin.backbones`` entry point (or :func:`register_backbone` added); ValueError listing them."""
    if name in BACKBONES:
        return BACKBONES[name]
    try:
        cls = registry.get(BACKBONE_GROUP, name)
    except registry.RegistryError:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(backbone_names())}") from None
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise ValueError(f"backbone {name!r} ({cls!r}) is not a subclass of rlmin.nn.base.Backbone")
    return cls


def register_backbone(name: str, cls: type[Backbone]) -> type[Backbone]:
    """Make ``cls`` (a :class:`Backbone` subclass) buildable as ``name`` in this process, e.g. as
    ``agent.backbone=name``; a package does the same with an ``rlmin.backbones`` entry point."""
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise TypeError(f"backbone {name!r} must be a subclass of rlmin.nn.base.Backbone, got {cls!r}")
    if name in BACKBONES:
        raise ValueError(f"backbone {name!r} is built in; register yours under another name")
    return registry.register(BACKBONE_GROUP, name, cls, overwrite=True)


def backbone_options(name: str) -> dict:
    """The options a backbone accepts, with their defaults (None: left to the owning agent)."""
    return dataclasses.asdict(backbone_class(name).Options())


def is_recurrent(name: str) -> bool:
    """Whether backbone ``name`` carries a state from step to step (the transformer re-runs a window)."""
    return backbone_class(name).recurrent


def build_backbone(name: str, d_model: int, n_layers: int, options=None, **values) -> Backbone:
    """Build the backbone ``name`` with width ``d_model`` and ``n_layers`` layers, from its
    ``options`` (its ``Options``, or a mapping) or keyword ``values``: an unknown name or option,
    or a bad value, raises ValueError saying which ones are valid."""
    cls = backbone_class(name)
    if options is None or values or not isinstance(options, cls.Options):
        given = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options or {})
        options = typed(cls.Options, {**given, **values}, owner=f"backbone {name!r}", convert=False)
    return cls(d_model, n_layers, options)


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
    layers = [m for m in module.modules() if isinstance(m, ScanLayer)]
    before = [m.scan_impl for m in layers]
    try:
        for m in layers:
            m.scan_impl = "reference"
        yield module
    finally:
        for m, impl in zip(layers, before):
            m.scan_impl = impl


__all__ = [
    "BACKBONES", "Backbone", "ScanLayer", "backbone_class", "backbone_options", "build_backbone",
    "is_recurrent", "reference_scans", "register_backbone", "reset_rows",
    "MinGRU", "MinLSTM", "MinRNNBackbone", "MinGRUBackbone", "MinLSTMBackbone",
    "TransformerBackbone", "RNNBackbone", "GRUBackbone", "LSTMBackbone",
]

