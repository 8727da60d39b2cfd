"""minGRU, one layer (Feng et al. 2024, "Were RNNs All We Needed?").

    z_t  = sigmoid(k_t)                 k_t, h~_t = split(W x_t + bias)
    h_t  = (1 - z_t) * h_{t-1} + z_t * g(h~_t)
    g(x) = x + 0.5 if x >= 0 else sigmoid(x)       (so g > 0 and h stays positive)

The gate depends on the input only, so the recurrence is the linear scan
h_t = a_t * h_{t-1} + b_t with a_t = 1 - z_t, b_t = z_t * g(h~_t), solved in parallel over time.

Two parallel paths, same result to float tolerance:

* ``scan_impl="log"``: the paper's log-space form, log(1 - z) = -softplus(k), log z = -softplus(-k),
  log g as in :func:`log_g`, solved by :func:`rlmin.nn.scan.scan_log`. It needs h0 >= 0; an h0 of
  exactly 0 is clamped to the smallest normal float so that its log (and its gradient) stay finite.
* anything else (``"auto"``, ``"reference"``, ``"sequential"``, ``"triton"``): a and b in linear space,
  computed stably (``a = sigmoid(-k)``, not ``1 - sigmoid(k)``) by :func:`scan_coefficients` (fused,
  with a hand-written backward), solved by :func:`rlmin.nn.scan.scan`.

``step`` is the plain recurrence, one time step at a time. Under float16/bfloat16 autocast the
pre-activations are upcast to float32, so the gates, the scan and h are float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlmin.nn.scan import scan, scan_log

SCAN_IMPLS = ("auto", "reference", "log", "sequential", "triton")


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation: x + 0.5 for x >= 0, sigmoid(x) otherwise."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), computed without forming g: log(relu(x) + 0.5) for x >= 0, -softplus(-x) otherwise."""
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))


class _ScanCoefficients(torch.autograd.Function):
    """(a, b) of the linear scan from the layer's pre-activations p, with a hand-written backward.

    minGRU (``lstm=False``): p = [k | h~], x = k.  minLSTM (``lstm=True``): p = [f~ | i~ | h~],
    x = log(i / f) = logsigmoid(i~) - logsigmoid(f~).  Then a = sigmoid(-x), z = sigmoid(x), b = z * g(h~).

    The same values as composing torch ops, in about a third of the memory passes: the elementwise
    gate math, not the scan, dominated a layer's forward+backward on CPU (each op is a full pass
    over, and a fresh allocation of, a [B, T, H] tensor). Backward:
    dx = a * z * (db * g(h~) - da);  dh~ = db * z * g'(h~);  minLSTM: df~ = -dx * sigmoid(-f~),
    di~ = dx * sigmoid(-i~).
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, lstm: bool):
        # Every fresh [B, T, H] tensor costs a page-faulting allocation on CPU: reuse buffers in place.
        n = 3 if lstm else 2
        H = p.shape[-1] // n
        cand = p[..., (n - 1) * H:]
        if lstm:
            z = F.logsigmoid(p[..., H:2 * H])
            z.sub_(F.logsigmoid(p[..., :H]))  # x = log(i / f)
            a = torch.neg(z).sigmoid_()
            z.sigmoid_()
        else:
            a = torch.neg(p[..., :H]).sigmoid_()
            z = torch.sigmoid(p[..., :H])
        pos = cand >= 0
        gc = torch.sigmoid(cand)
        torch.where(pos, cand, gc, out=gc)
        gc.add_(pos, alpha=0.5)  # g(h~) = h~ + 0.5 where h~ >= 0, else sigmoid(h~)
        b = z * gc
        ctx.lstm = lstm
        ctx.save_for_backward(p, a, z, gc, pos)
        return a, b

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, da: torch.Tensor, db: torch.Tensor):
        p, a, z, gc, pos = ctx.saved_tensors
        n = 3 if ctx.lstm else 2
        H = p.shape[-1] // n
        grad = torch.empty_like(p, memory_format=torch.contiguous_format)
        # dh~ = db * z * g'(h~), g' = 1 for h~ >= 0, else sigmoid' = g (1 - g)
        dc = torch.neg(gc, out=grad[..., (n - 1) * H:]).add_(1.0)
        dc.mul_(gc).masked_fill_(pos, 1.0).mul_(z).mul_(db)
        dx = torch.mul(db, gc, out=grad[..., :H])
        dx.sub_(da).mul_(a).mul_(z)
        if ctx.lstm:  # dx -> df~ = -dx * sigmoid(-f~) (in place), di~ = dx * sigmoid(-i~)
            torch.neg(p[..., H:2 * H], out=grad[..., H:2 * H]).sigmoid_().mul_(dx)
            dx.mul_(torch.neg(p[..., :H]).sigmoid_()).neg_()
        return grad, None


def scan_coefficients(p: torch.Tensor, lstm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear-space (a, b) from the pre-activations: [k | h~] (minGRU) or [f~ | i~ | h~] (minLSTM)."""
    return _ScanCoefficients.apply(p, lstm)


def check_scan_impl(scan_impl: str) -> str:
    if scan_impl not in SCAN_IMPLS:
        raise ValueError(f"scan_impl must be one of {', '.join(SCAN_IMPLS)}; got {scan_impl!r}")
    return scan_impl


def preactivations(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """linear(x), upcast from float16/bfloat16 (autocast) to float32: gates and the scan run in >= float32."""
    out = linear(x)
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


def check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def log_state(h0: torch.Tensor | None) -> torch.Tensor | None:
    """log h0 for the log-space scan; zeros (a fresh state) are clamped to the smallest normal float."""
    if h0 is None:
        return None
    return h0.clamp_min(torch.finfo(h0.dtype).tiny).log()


class MinGRU(nn.Module):
    """One minGRU layer: ``forward(x[B,T,d_in], h0=None) -> (h[B,T,d_hidden], h_last[B,d_hidden])``.

    Parameters: one ``Linear(d_in, 2 * d_hidden)``, i.e. exactly ``2 * d_hidden * (d_in + 1)``.
    ``h0=None`` means a zero initial state. With a non-negative h0 every h_t is positive.
    """

    def __init__(self, d_in: int, d_hidden: int, scan_impl: str = "auto"):
        super().__init__()
        self.d_in = check_size("d_in", d_in)
        self.d_hidden = check_size("d_hidden", d_hidden)
        self.scan_impl = check_scan_impl(scan_impl)
        self.linear = nn.Linear(d_in, 2 * d_hidden)  # [k (gate) | h~ (candidate)]

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_hidden={self.d_hidden}, scan_impl={self.scan_impl!r}"

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        p = preactivations(self.linear, x)
        if self.scan_impl == "log":
            k, cand = p.chunk(2, dim=-1)
            log_a = -F.softplus(k)  # log(1 - z)
            log_b = -F.softplus(-k) + log_g(cand)  # log z + log g(h~)
            h = scan_log(log_a, log_b, log_state(h0))
        else:
            a, b = scan_coefficients(p, lstm=False)  # a = sigmoid(-k), b = sigmoid(k) * g(h~)
            h = scan(a, b, h0, impl=self.scan_impl)
        return h, h[:, -1]

    def step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step of the recurrence: x [B, d_in], h [B, d_hidden] -> new h."""
        k, cand = preactivations(self.linear, x).chunk(2, dim=-1)
        return torch.sigmoid(-k) * h + torch.sigmoid(k) * g(cand)
