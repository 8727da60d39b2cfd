"""Dropout from 16 random bits an element: a CPU lever for the training step (train.fast_dropout).

torch's CPU dropout draws one float per element (``bernoulli_``) from a serial generator; at DT
widths that is a large share of a minRNN training step on a 2-core CPU (docs/RESULTS.md). This
draws four 16-bit lanes per 64-bit draw instead, so the drop probability is ``p`` rounded to a
multiple of 2^-16 (off by at most 7.7e-6) and the kept values are scaled by 1 / (1 - that p).
Same expectation as ``nn.Dropout``, other masks: a run with it is another draw of the same model,
not the same numbers.
"""
from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 16  # values of one 16-bit lane
_INT16_MIN = -(1 << 15)


def drop_threshold(p: float) -> int:
    """The number of the 2^16 lane values that drop an element: p's share, rounded."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability must be in [0, 1]; got {p}")
    return round(p * _LEVELS)


class FastDropout(nn.Module):
    """``nn.Dropout(p)`` with 16-bit uniform lanes in place of one float draw per element."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p
        self.drop = drop_threshold(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop == 0:
            return x
        if self.drop == _LEVELS:
            return x * 0.0
        n = x.numel()
        # random_(min int64, None) draws all 64 bits; random_() would leave the sign bit 0, which
        # would bias one lane in four.
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(1 << 63), None)
        lanes = bits.view(torch.int16)[:n].view(x.shape)  # uniform over [-2^15, 2^15)
        keep = (lanes >= _INT16_MIN + self.drop).to(x.dtype).mul_(_LEVELS / (_LEVELS - self.drop))
        return x * keep  # autograd keeps `keep` for the backward: grad * keep


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every ``nn.Dropout`` in ``model`` by a ``FastDropout`` of the same p, in place;
    returns how many. Parameters and state_dict keys are unchanged (dropout has none), so
    checkpoints load either way. Attention-weight dropout inside SDPA is left to torch."""
    swaps = [(parent, name, child) for parent in model.modules()
             for name, child in parent.named_children() if type(child) is nn.Dropout]
    for parent, name, child in swaps:
        setattr(parent, name, FastDropout(child.p).train(child.training))
    return len(swaps)
