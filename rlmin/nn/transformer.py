"""The Decision-Transformer baseline: DT's GPT-2 (kzl/decision-transformer, gym) over a fixed context.

    h = input_dropout(x [+ pos[0:T]])                   no position embedding by default (DT's)
    h = h + dropout(Attn(LN(h)))                        causal self-attention, dropout on its weights too
    h = h + dropout(Linear(4d, d)(act(Linear(d, 4d)(LN(h)))))      act = ReLU by default (DT's)
    y = LN(h)                                           final norm (GPT-2's ln_f)

With the defaults this is DT's ``trajectory_gpt2.GPT2Model`` as its gym experiment builds it (n_inner
4d, ``activation_function='relu'``, resid/attn dropout 0.1, no ``wpe``, GPT-2's ``_init_weights``),
given inputs the decision agent has already normalised and dropped out (DT's ``embed_ln`` then GPT-2's
``drop``; that is why ``input_dropout`` is 0 here). What remains different: masked scores are -inf
(DT's GPT-2: -1e4, which softmax turns into the same exact zeros), and padding lies to the right of a
window (causal, so ignored) instead of DT's left padding with an attention mask.

Options, each of DT's choices with its variation (:class:`TransformerBackbone.Options`):

``n_heads`` (1): attention heads (DT's gym default).
``dropout`` (None: the owning agent's dropout, DT's 0.1; 0.1 for a backbone built alone): on the
    attention weights and at the end of both residual branches (GPT-2's
    attn_pdrop and resid_pdrop; DT passes its ``dropout`` to both).
``context`` (None: the owning agent's window, e.g. 3 tokens x K=20 steps = 60 as DT's; 60 for a
    backbone built alone): the most positions one forward sees.
``position_embedding`` (False): a learned absolute position embedding over the window (GPT-2's
    ``wpe``, N(0, 0.02)); DT removes it and has only the agent's timestep embedding.
``input_dropout`` (0.0): dropout on the inputs (GPT-2's ``drop``); DT's is the agent's embedding
    dropout, so a non-zero value here drops the inputs a second time.
``activation`` ("relu"): the MLP's, "relu" (DT's) or "gelu" (exact erf form, nanoGPT's).
``init`` ("dt"): "dt" = DT's GPT-2 ``_init_weights``: every Linear weight N(0, 0.02), biases 0,
    LayerNorms 1 and 0; "gpt2" = that plus the residual projections (attention output and the MLP's
    second Linear, GPT-2's ``c_proj``) at std 0.02 / sqrt(2 n_layers), as the GPT-2 paper, nanoGPT and
    later transformers releases (not the transformers 4.5.1 copy DT's gym code ships); "torch" =
    PyTorch's default init.

It is not recurrent (``recurrent = False``): ``forward`` needs the whole window, and a sequence
longer than ``context`` raises a ValueError (act with a sliding window through ``step``, or build a
longer context).

State: ``(cache [B, context, d_model], fill [B] int64)``, the last ``context`` inputs, right-aligned
(the newest at index context - 1) and how many of them are real. Both have the batch as dim 0, so a
caller resets rows with ``torch.where(mask[:, None, None], fresh_cache, cache)`` and
``torch.where(mask, fresh_fill, fill)`` (or :func:`rlmin.nn.reset_rows`). ``step`` appends its input
and re-runs the window, so T steps equal ``forward`` on any sequence no longer than the context;
once the cache is full it slides (the oldest input drops out; with a position embedding the window's
positions restart at 0, as in DT's windowed acting). ``forward(x, state)`` continues the sequence held
in the state and needs fill + T <= context.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from rlmin.checks import flag, one_of, positive_int, probability
from rlmin.nn.base import Backbone
from rlmin.nn.blocks import ACTIVATIONS, MLP

INITS = ("dt", "gpt2", "torch")


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d, 3 * d)  # GPT-2's c_attn
        self.out = nn.Linear(d, d)  # GPT-2's c_proj
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(  # softmax(q k^T / sqrt(head dim)) v, as GPT-2's scale=True
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.out(y.transpose(1, 2).reshape(B, T, D)))


class TransformerBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float, activation: str):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = MLP(d, dropout, activation=activation)  # mlp[2] is GPT-2's MLP c_proj

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class TransformerBackbone(Backbone):
    """Causal transformer over at most ``context`` positions; see the module docstring."""

    recurrent = False
    ALONE = {"dropout": 0.1, "context": 60}  # what an option left to the owner is without one (DT's)

    @dataclass
    class Options:  # the module docstring says what each does
        n_heads: int = 1
        dropout: Optional[float] = None
        context: Optional[int] = None
        position_embedding: bool = False
        input_dropout: float = 0.0
        activation: str = "relu"
        init: str = "dt"

        def __post_init__(self):
            positive_int("n_heads", self.n_heads)
            if self.dropout is not None:
                probability("dropout", self.dropout)
            if self.context is not None:
                positive_int("context", self.context)
            flag("position_embedding", self.position_embedding)
            probability("input_dropout", self.input_dropout)
            one_of("activation", self.activation, ACTIVATIONS)
            one_of("init", self.init, INITS)

    @classmethod
    def check_shape(cls, d_model: int, n_layers: int, options) -> None:
        super().check_shape(d_model, n_layers, options)
        if d_model % options.n_heads:
            raise ValueError(f"n_heads must divide d_model; got n_heads={options.n_heads}, d_model={d_model}")

    @classmethod
    def for_owner(cls, options, dropout: float, window_tokens: int):
        """Also the context: the owner's window of ``window_tokens`` unless set, and never shorter."""
        options = super().for_owner(options, dropout, window_tokens)
        if options.context is None:
            return replace(options, context=window_tokens)
        if options.context < window_tokens:
            raise ValueError(f"backbone_options.context={options.context} is shorter than the "
                             f"{window_tokens} tokens of the agent's window; leave it unset or raise it")
        return options

    def __init__(self, d_model: int, n_layers: int, options: "TransformerBackbone.Options | None" = None):
        super().__init__(d_model, n_layers, options)
        o = self.options
        self.context = context = self.ALONE["context"] if o.context is None else o.context
        self.n_heads = n_heads = o.n_heads
        dropout = self.ALONE["dropout"] if o.dropout is None else float(o.dropout)
        activation = o.activation
        self.pos = nn.Parameter(torch.zeros(context, d_model)) if o.position_embedding else None
        self.drop = nn.Dropout(o.input_dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, dropout, activation) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        if o.init != "torch":
            self._init(o.init)

    def _init(self, init: str) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if self.pos is not None:
            nn.init.normal_(self.pos, std=0.02)
        if init == "gpt2":  # 2 residual branches per block add up: keep the residual stream's variance flat
            for block in self.blocks:
                for proj in (block.attn.out, block.mlp[2]):
                    nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.n_layers))

    def initial_state(self, batch_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        ref = self.norm.weight
        device = ref.device if device is None else device
        return (torch.zeros(batch_size, self.context, self.d_model, device=device, dtype=ref.dtype),
                torch.zeros(batch_size, dtype=torch.long, device=device))

    def _embed(self, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.drop(seq if self.pos is None else seq + self.pos[pos])

    def _run(self, seq: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Run a right-aligned window seq [B, L, D] whose last count[b] entries are real."""
        L = seq.shape[1]
        idx = torch.arange(L, device=seq.device)
        start = (L - count).unsqueeze(1)  # [B, 1]
        valid = idx >= start  # [B, L]
        causal = idx[:, None] >= idx[None, :]
        eye = idx[:, None] == idx[None, :]  # padding queries see themselves only (no empty softmax rows)
        mask = (causal & (valid[:, None, :] | eye)).unsqueeze(1)  # [B, 1, L, L]
        h = self._embed(seq, (idx - start).clamp(0, self.context - 1))  # positions from the first real input
        for block in self.blocks:
            h = block(h, mask)
        return self.norm(h)

    def forward(self, x: torch.Tensor, state=None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, _ = x.shape
        C = self.context
        if T > C:
            raise ValueError(
                f"sequence length {T} is longer than the transformer's context {C}: act with a sliding "
                f"window (step) or build the backbone with a longer context")
        if state is None:
            h = self._embed(x, torch.arange(T, device=x.device))
            for block in self.blocks:
                h = block(h)
            cache = torch.cat([x.new_zeros(B, C - T, self.d_model), x], dim=1)
            return self.norm(h), (cache, torch.full((B,), T, dtype=torch.long, device=x.device))
        cache, fill = state
        count = fill + T
        if bool((count > C).any()):
            raise ValueError(
                f"the state already holds up to {int(fill.max())} inputs; with {T} more that exceeds the "
                f"context {C}: use step (sliding window) or a longer context")
        cache = torch.cat([cache, x], dim=1)[:, -C:]
        return self._run(cache, count)[:, -T:], (cache, count)

    def step(self, x: torch.Tensor, state) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        cache, fill = state
        cache = torch.cat([cache[:, 1:], x.unsqueeze(1)], dim=1)
        fill = (fill + 1).clamp(max=self.context)
        return self._run(cache, fill)[:, -1], (cache, fill)
