"""What every backbone and scan layer declares, beside the forward/step/initial_state contract
(stated in :mod:`rlmin.nn`): its typed options, whether it carries a state, and the options its
owner fills in. A new backbone subclasses :class:`Backbone` and is registered in one place."""
from __future__ import annotations

import dataclasses

from torch import nn

from rlmin.checks import positive_int


class Backbone(nn.Module):
    """Base of every backbone: built as ``cls(d_model, n_layers, options)``.

    ``Options`` is the backbone's own dataclass (every default written there once, values checked
    in its ``__post_init__``). An option left ``None`` there is one its owner decides: see
    :meth:`for_owner`.
    """

    @dataclasses.dataclass
    class Options:
        pass

    #: True: ``step`` carries a state from step to step; False: it re-runs a window (the transformer).
    recurrent: bool = True

    def __init__(self, d_model: int, n_layers: int, options=None):
        super().__init__()
        options = self.Options() if options is None else options
        if not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} takes a {type(self).__name__}.Options, got "
                            f"{type(options).__name__}")
        self.check_shape(d_model, n_layers, options)
        self.d_model, self.n_layers, self.options = d_model, n_layers, options

    @classmethod
    def check_shape(cls, d_model: int, n_layers: int, options) -> None:
        """ValueError unless the sizes suit these options (e.g. heads that divide d_model)."""
        positive_int("d_model", d_model)
        positive_int("n_layers", n_layers)

    @classmethod
    def for_owner(cls, options, dropout: float, window_tokens: int):
        """``options`` with what they leave to the owner (an agent) filled in: ``dropout`` where
        it is None, and for a windowed backbone a context of the owner's ``window_tokens``."""
        if getattr(options, "dropout", 0.0) is None:
            options = dataclasses.replace(options, dropout=float(dropout))
        return options


class ScanLayer(nn.Module):
    """A layer whose recurrence runs through a selectable scan (``scan_impl``), one of which,
    ``"reference"``, is plain torch ops: what a tracer (TorchScript, ONNX) can record.
    :func:`rlmin.nn.reference_scans` switches every such layer of a module to it."""

    scan_impl: str = "reference"
