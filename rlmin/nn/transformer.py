"""The Decision-Transformer baseline: a causal GPT-style stack over a fixed context.

    h = dropout(x + pos[0:T])                           learned position embedding, `context` positions
    h = h + dropout(Attn(LN(h)))                        causal self-attention (scaled_dot_product_attention)
    h = h + MLP(LN(h))                                  Linear(d, 4d) -> GELU -> Linear(4d, d) -> dropout
    y = LN(h)                                           final norm

Options: ``n_heads`` (1, DT's), ``dropout`` (0.1, DT's; on embeddings, attention weights, and both
residual branches), ``context`` (60 = 3 tokens x DT's K=20 steps).

It is not recurrent (``recurrent = False``): ``forward`` needs the whole window, and a sequence
longer than ``context`` raises a ValueError (act with a sliding window through ``step``, or build a
longer context).

State: ``(cache [B, context, d_model], fill [B] int64)``, the last ``context`` inputs, right-aligned
(the newest at index context - 1) and how many of them are real. Both have the batch as dim 0, so a
caller resets rows with ``torch.where(mask[:, None, None], fresh_cache, cache)`` and
``torch.where(mask, fresh_fill, fill)`` (or :func:`rlmin.nn.reset_rows`). ``step`` appends its input
and re-runs the window, so T steps equal ``forward`` on any sequence no longer than the context;
once the cache is full it slides (the oldest input drops out and the window's positions restart at
0, as in DT's windowed acting). ``forward(x, state)`` continues the sequence held in the state and
needs fill + T <= context.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlmin.nn.blocks import MLP, check_dropout
from rlmin.nn.mingru import check_size


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.out(y.transpose(1, 2).reshape(B, T, D)))


class TransformerBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = MLP(d, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class TransformerBackbone(nn.Module):
    """Causal transformer over at most ``context`` positions; see the module docstring."""

    recurrent = False
    OPTIONS = {"n_heads": 1, "dropout": 0.1, "context": 60}

    def __init__(self, d_model: int, n_layers: int, n_heads: int = 1, dropout: float = 0.1, context: int = 60):
        super().__init__()
        self.d_model = check_size("d_model", d_model)
        self.n_layers = check_size("n_layers", n_layers)
        self.context = check_size("context", context)
        check_size("n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"n_heads must divide d_model; got n_heads={n_heads}, d_model={d_model}")
        self.n_heads = n_heads
        dropout = check_dropout(dropout)
        self.pos = nn.Parameter(torch.zeros(context, d_model))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.apply(self._init)
        nn.init.normal_(self.pos, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:  # GPT-2 / nanoGPT init
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def initial_state(self, batch_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.pos.device if device is None else device
        return (torch.zeros(batch_size, self.context, self.d_model, device=device, dtype=self.pos.dtype),
                torch.zeros(batch_size, dtype=torch.long, device=device))

    def _run(self, seq: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Run a right-aligned window seq [B, L, D] whose last count[b] entries are real."""
        L = seq.shape[1]
        idx = torch.arange(L, device=seq.device)
        start = (L - count).unsqueeze(1)  # [B, 1]
        valid = idx >= start  # [B, L]
        pos = (idx - start).clamp(0, self.context - 1)
        causal = idx[:, None] >= idx[None, :]
        eye = idx[:, None] == idx[None, :]  # padding queries see themselves only (no empty softmax rows)
        mask = (causal & (valid[:, None, :] | eye)).unsqueeze(1)  # [B, 1, L, L]
        h = self.drop(seq + self.pos[pos])
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
            h = self.drop(x + self.pos[:T])
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
