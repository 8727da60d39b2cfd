"""The stacked minGRU / minLSTM backbone: residual blocks around one minimal-RNN layer each.

One block (pre-norm residual; ``conv_layout`` says where the optional conv sits)::

    x = x + conv(x)                          # conv_layout="official" (and conv_kernel > 0) only
    u = norm1(x)
    u = causal_depthwise_conv(u)             # conv_layout="branch" (and conv_kernel > 0) only
    h = minRNN(u)                            # d_model -> d_hidden = round(expansion * d_model)
    x = x + dropout(Linear(d_hidden, d_model)(h))
    x = x + MLP(norm2(x))                    # Linear(d, 4d) -> GELU -> Linear(4d, d) -> dropout

and one final norm after the last block. Without a conv (the default) both layouts are the same block.

Options (:class:`MinRNNBackbone.Options`, every one with a default):

``expansion`` (1.5)
    hidden width of each minRNN as a multiple of d_model. 1.5 is the default of the widely used
    minGRU implementation (lucidrains/minGRU-pytorch, which the official code builds on), and it makes a
    minGRU block about as large as a Decision-Transformer block of the same d_model: the mixer holds
    2*1.5*d^2 (gates) + 1.5*d^2 (projection back) = 4.5 d^2 weights against attention's 4 d^2, so
    comparisons with the DT baseline at equal d_model are roughly parameter-matched.
    The projection back to d_model is always a Linear, even at expansion 1: h is strictly positive
    (g > 0), so without it the residual branch could only ever add positive values.
``dropout`` (None: the owning agent's dropout; 0.0 for a backbone built alone)
    on the minRNN branch (after the projection) and at the end of the MLP.
``conv_kernel`` (0)
    0 = off; k > 0 = a causal Conv1d of width k before the minRNN (where: ``conv_layout``). Its last
    k - 1 inputs are part of the step state.
``conv_layout`` ("branch")
    "branch": a depthwise conv inside the minRNN branch, after norm1, with no residual of its own.
    "official": the official code's ``x = conv(x) + x`` before norm1, the conv depthwise (width k) then
    pointwise (1x1, mixing channels), as BorealisAI/minRNNs and lucidrains' CausalDepthWiseConv1d.
``learn_h0`` (False)
    False: the initial hidden state is zero. True: a learnable initial state per layer, h0 = g(p) with
    g the paper's positive activation (so h stays positive, as with a zero h0); p starts at 0, i.e.
    h0 = 0.5.
``scan_impl`` ("auto")
    passed to the minRNN layers: "log" for the paper's log-space scan, or a linear-space
    implementation of :func:`rlmin.nn.scan.scan` ("auto", "reference", "sequential", "triton").
``norm`` ("layernorm")
    "layernorm" or "rmsnorm".

State: a flat tuple with, for each layer in order, the hidden state ``h [B, d_hidden]`` and, when
``conv_kernel > 0``, the conv cache ``[B, conv_kernel - 1, d_model]`` (the last inputs of the conv).
h is at least float32 (a model cast to bf16 keeps its state in float32, as the scan computes it); the
conv cache has the model's dtype.
Every tensor has the batch as dim 0, so a caller can reset individual rows with
``torch.where(mask.view(-1, 1, ...), fresh, old)`` (see :func:`rlmin.nn.reset_rows`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from rlmin.checks import flag, non_negative_int, one_of, positive_number, probability
from rlmin.nn.base import Backbone
from rlmin.nn.mingru import MinGRU, check_scan_impl, g
from rlmin.nn.minlstm import MinLSTM

CELLS = {"mingru": MinGRU, "minlstm": MinLSTM}
NORMS = ("layernorm", "rmsnorm")
CONV_LAYOUTS = ("branch", "official")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def make_norm(norm: str, d: int) -> nn.Module:
    if norm == "layernorm":
        return nn.LayerNorm(d)
    if norm == "rmsnorm":
        return nn.RMSNorm(d)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


class MLP(nn.Sequential):
    def __init__(self, d: int, dropout: float, mult: int = 4, activation: str = "gelu"):
        super().__init__(nn.Linear(d, mult * d), ACTIVATIONS[activation](), nn.Linear(mult * d, d), nn.Dropout(dropout))


class CausalDepthwiseConv(nn.Module):
    """Depthwise Conv1d of width k over time, causal: y_t sees x_{t-k+1..t}; then, with ``pointwise``, a
    1x1 conv mixing the channels (the official layout's). Cache: the last k-1 inputs."""

    def __init__(self, d: int, kernel: int, pointwise: bool = False):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(d, d, kernel, groups=d)
        self.pointwise = nn.Linear(d, d) if pointwise else None  # = Conv1d(d, d, 1): same weights, same init

    def forward(self, x: torch.Tensor, cache: torch.Tensor,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        full = torch.cat([cache, x], dim=1)  # [B, k-1+T, d]
        y = self.conv(full.transpose(1, 2)).transpose(1, 2)
        if self.pointwise is not None:
            y = self.pointwise(y)
        if lengths is None:
            return y, full[:, full.shape[1] - (self.kernel - 1):]
        # after L steps the cache is full[L : L + k - 1] (the cache itself for L = 0)
        idx = lengths[:, None] + torch.arange(self.kernel - 1, device=x.device)[None]
        return y, full.gather(1, idx[..., None].expand(-1, -1, full.shape[-1]))  # gather: an ONNX op

    def step(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        window = torch.cat([cache, x.unsqueeze(1)], dim=1)  # [B, k, d]
        y = (window * self.conv.weight[:, 0].t()).sum(dim=1) + self.conv.bias
        if self.pointwise is not None:
            y = self.pointwise(y)
        return y, window[:, 1:]


class MinRNNBlock(nn.Module):
    def __init__(self, cell: str, d_model: int, d_hidden: int, dropout: float, conv_kernel: int,
                 conv_layout: str, learn_h0: bool, scan_impl: str, norm: str):
        super().__init__()
        self.norm1 = make_norm(norm, d_model)
        self.official = conv_layout == "official"
        self.conv = CausalDepthwiseConv(d_model, conv_kernel, pointwise=self.official) if conv_kernel > 0 else None
        self.rnn = CELLS[cell](d_model, d_hidden, scan_impl=scan_impl)
        self.proj = nn.Linear(d_hidden, d_model)
        self.drop = nn.Dropout(dropout)
        self.norm2 = make_norm(norm, d_model)
        self.mlp = MLP(d_model, dropout)
        # h0 = g(h0_param) > 0; starts at g(0) = 0.5.
        self.h0_param = nn.Parameter(torch.zeros(d_hidden)) if learn_h0 else None

    def forward(self, x, h0, conv_cache, lengths=None, read=None):
        """``read`` [B, 1, 1] (optional): the one position per row whose output is used; the others
        skip the projection and the MLP (x comes back [B, 1, d_model])."""
        if self.conv is not None and self.official:
            y, conv_cache = self.conv(x, conv_cache, lengths)
            x = x + y
        u = self.norm1(x)
        if self.conv is not None and not self.official:
            u, conv_cache = self.conv(u, conv_cache, lengths)
        h, h_last = self.rnn(u, h0, lengths)
        if read is not None:
            x, h = (v.gather(1, read.expand(-1, -1, v.shape[-1])) for v in (x, h))  # gather: an ONNX op
        x = x + self.drop(self.proj(h))
        x = x + self.mlp(self.norm2(x))
        return x, h_last, conv_cache

    def step(self, x, h, conv_cache):
        if self.conv is not None and self.official:
            y, conv_cache = self.conv.step(x, conv_cache)
            x = x + y
        u = self.norm1(x)
        if self.conv is not None and not self.official:
            u, conv_cache = self.conv.step(u, conv_cache)
        h = self.rnn.step(u, h)
        x = x + self.drop(self.proj(h.to(x.dtype)))  # the state h may be wider (float32 in a bf16 model)
        x = x + self.mlp(self.norm2(x))
        return x, h, conv_cache


class MinRNNBackbone(Backbone):
    """A stack of minGRU or minLSTM residual blocks; see the module docstring for options and state.

    ``forward(x[B,T,d_model], state=None) -> (y, state)`` runs in parallel over time (the scan);
    with ``last=True``, y is only each row's last output [B, d_model] (at lengths - 1, or T - 1), and
    the last block computes nothing else (what acting reads);
    ``step(x[B,d_model], state) -> (y, state)`` runs one time step. ``state=None`` means
    ``initial_state(B)``.
    """

    cell = ""  # "mingru" | "minlstm": set by the subclass

    @dataclass
    class Options:  # the module docstring says what each does
        expansion: float = 1.5
        dropout: Optional[float] = None  # None: the owner's (a decision agent's dropout); 0 alone
        conv_kernel: int = 0
        conv_layout: str = "branch"
        learn_h0: bool = False
        scan_impl: str = "auto"
        norm: str = "layernorm"

        def __post_init__(self):
            positive_number("expansion", self.expansion)
            if self.dropout is not None:
                probability("dropout", self.dropout)
            non_negative_int("conv_kernel", self.conv_kernel)
            one_of("conv_layout", self.conv_layout, CONV_LAYOUTS)
            flag("learn_h0", self.learn_h0)
            check_scan_impl(self.scan_impl)
            one_of("norm", self.norm, NORMS)

    @classmethod
    def check_shape(cls, d_model: int, n_layers: int, options) -> None:
        super().check_shape(d_model, n_layers, options)
        if round(options.expansion * d_model) < 1:
            raise ValueError(f"expansion * d_model must round to at least 1; got {options.expansion} * {d_model}")

    def __init__(self, d_model: int, n_layers: int, options: "MinRNNBackbone.Options | None" = None):
        super().__init__(d_model, n_layers, options)
        o = self.options
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}; got {self.cell!r}")
        self.d_hidden = d_hidden = round(o.expansion * d_model)
        self.conv_kernel = o.conv_kernel
        self.conv_layout = o.conv_layout
        self.learn_h0 = o.learn_h0
        self.scan_impl = o.scan_impl
        dropout = 0.0 if o.dropout is None else float(o.dropout)
        self.blocks = nn.ModuleList(
            MinRNNBlock(self.cell, d_model, d_hidden, dropout, o.conv_kernel, o.conv_layout, o.learn_h0,
                        o.scan_impl, o.norm)
            for _ in range(n_layers)
        )
        self.norm = make_norm(o.norm, d_model)

    @property
    def _per_layer(self) -> int:
        return 2 if self.conv_kernel > 0 else 1

    def initial_state(self, batch_size: int, device=None) -> tuple[torch.Tensor, ...]:
        ref = self.norm.weight
        device = ref.device if device is None else device
        h_dtype = torch.promote_types(ref.dtype, torch.float32)  # the scan's dtype: float32 for a bf16 model
        state = []
        for block in self.blocks:
            if block.h0_param is not None:
                state.append(g(block.h0_param.to(device, h_dtype)).unsqueeze(0).repeat(batch_size, 1))
            else:
                state.append(torch.zeros(batch_size, self.d_hidden, device=device, dtype=h_dtype))
            if self.conv_kernel > 0:
                state.append(torch.zeros(batch_size, self.conv_kernel - 1, self.d_model, device=device,
                                         dtype=ref.dtype))
        return tuple(state)

    def _split(self, state) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        n = self._per_layer
        if not isinstance(state, (tuple, list)) or len(state) != n * self.n_layers:
            raise ValueError(
                f"state must be a tuple of {n * self.n_layers} tensors ({self.n_layers} layers x "
                f"{'(h, conv cache)' if n == 2 else '(h,)'}), as made by initial_state; got "
                f"{type(state).__name__} of length {len(state) if isinstance(state, (tuple, list)) else '?'}")
        return [(state[i * n], state[i * n + 1] if n == 2 else None) for i in range(self.n_layers)]

    def forward(self, x: torch.Tensor, state=None, lengths: torch.Tensor | None = None,
                last: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if x.dim() != 3 or x.shape[1] == 0 or x.shape[2] != self.d_model:  # T = 0 too: as every minRNN path
            raise ValueError(f"x must be [B, T, {self.d_model}] with T >= 1; got shape {tuple(x.shape)}")
        if state is None:
            state = self.initial_state(x.shape[0], x.device)
            if not self.learn_h0:  # zero h0: let the scan start from nothing (cheaper, same result)
                state = tuple(None if i % self._per_layer == 0 else s for i, s in enumerate(state))
        read = None
        if last:
            read = torch.full((x.shape[0], 1, 1), x.shape[1] - 1, device=x.device) if lengths is None \
                else (lengths - 1).clamp(min=0).view(-1, 1, 1)
        new_state = []
        for i, (block, (h0, conv_cache)) in enumerate(zip(self.blocks, self._split(state))):
            x, h_last, conv_cache = block(x, h0, conv_cache, lengths, read if i == self.n_layers - 1 else None)
            new_state.append(h_last)
            if conv_cache is not None:
                new_state.append(conv_cache)
        y = self.norm(x)
        return (y[:, 0] if last else y), tuple(new_state)

    def step(self, x: torch.Tensor, state) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        new_state = []
        for block, (h, conv_cache) in zip(self.blocks, self._split(state)):
            x, h, conv_cache = block.step(x, h, conv_cache)
            new_state.append(h)
            if conv_cache is not None:
                new_state.append(conv_cache)
        return self.norm(x), tuple(new_state)


class MinGRUBackbone(MinRNNBackbone):
    """Stacked minGRU blocks (see :class:`MinRNNBackbone`)."""

    cell = "mingru"


class MinLSTMBackbone(MinRNNBackbone):
    """Stacked minLSTM blocks (see :class:`MinRNNBackbone`)."""

    cell = "minlstm"
