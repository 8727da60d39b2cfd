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
* ``"auto"`` / ``"sequential"`` on CPU (float32/float64, no autocast): the fused path. The Linear is one
  [B*T, d_in] @ [d_in, 2*d_hidden] GEMM forward and one each for dX and dW backward (through oneDNN for
  large float32 inputs, :func:`cpu_linear`), then gates, g and the sequential scan run in one autograd
  Function with a hand-written backward (:func:`layer_scan`), chunked over time so that intermediates stay
  in cache. a = sigmoid(-k) and z = sigmoid(k) are each computed directly (not 1 - the other).
* anything else (``"reference"``, ``"triton"``, CUDA, autocast): a and b in linear space, computed stably
  (``a = sigmoid(-k)``, not ``1 - sigmoid(k)``) by :func:`scan_coefficients` (fused, with a hand-written
  backward), solved by :func:`rlmin.nn.scan.scan`.

``step`` is the plain recurrence, one time step at a time. Under float16/bfloat16 autocast the
pre-activations are upcast to float32, so the gates, the scan and h are float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlmin.nn.scan import _apply_opaque, scan, scan_log

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


# ---------------------------------------------------------------------------------------------
# The CPU-fast layer path: a oneDNN Linear, then gates + scan fused into one autograd Function.
# ---------------------------------------------------------------------------------------------

#: The GEMM used for large float32 CPU inputs: "onednn" (default where torch has it) or "torch"
#: (torch's own matmul, i.e. MKL on x86). Measured on an AVX-512 AMD EPYC, one thread, B*T = 65536,
#: d = 128: oneDNN ran the layer's three GEMMs (forward, dX, dW) about 2x faster than torch's MKL
#: sgemm. Module-level so that benchmarks can switch it; both give the same values to float32 rounding.
CPU_LINEAR = "onednn"
_DW_ROWS = 1024  # row block of the weight-gradient GEMM (measured: 512-2048 similar, 65536 slower)
_ONEDNN_MIN_ROWS = 1024  # below this (e.g. step mode) torch's matmul is as fast and has no setup cost


def _onednn_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except Exception:  # a torch built without oneDNN
        return False


_ONEDNN = _onednn_available()


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (CPU_LINEAR == "onednn" and _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.dim() >= 2 and x.numel() >= _ONEDNN_MIN_ROWS * x.shape[-1]
            and not torch.is_autocast_enabled("cpu"))


def _onednn_mm_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T (+ bias) with oneDNN: a [M, K], b [N, K] (any strides) -> [M, N]."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """y = x @ W.T + bias for a 2-D float32 x, as three oneDNN GEMMs (forward, dX, dW) and one sum (db)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_mm_t(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        dy = dy.contiguous()
        dx = _onednn_mm_t(dy, weight.t().contiguous()) if need_x else None
        dw = None
        if need_w:  # (x.T @ dy).T, summed over row blocks: ~20% faster than one GEMM with K = rows
            for xb, dyb in zip(x.split(_DW_ROWS), dy.split(_DW_ROWS)):
                part = _onednn_mm_t(xb.t(), dyb.t())
                dw = part if dw is None else dw.add_(part)
            dw = dw.t().contiguous()
        db = dy.sum(0) if (need_b and ctx.has_bias) else None
        return dx, dw, db


def cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) for float32 CPU tensors through oneDNN: one [rows, d_in] @ [d_in, d_out]
    GEMM forward and one each for dX and dW backward (x's leading dims are flattened into rows)."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = _apply_opaque(_OneDNNLinear, x2, weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


# x > _NEG_TINY exactly when x >= 0 (the smallest subnormal below zero): the threshold that turns
# relu's backward (grad where x > threshold) into the step function [x >= 0] that g' needs.
_NEG_TINY = {torch.float32: -(2.0 ** -149), torch.float64: -(2.0 ** -1074)}
_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_threshold_backward = torch.ops.aten.threshold_backward.grad_input


_CHUNK = 64  # time steps per chunk: the chunk's working set (~6 [B, 64, H] slices) stays in cache


class _MinRNNLayerScan(torch.autograd.Function):
    """h from the layer's pre-activations p and h0, gates and scan fused, with a hand-written backward.

    minGRU: p = [k | h~], x = k.  minLSTM: p = [f~ | i~ | h~], x = logsigmoid(i~) - logsigmoid(f~).
    a = sigmoid(-x) and z = sigmoid(x) (each computed directly: 1 - z would lose a's relative precision
    when a is tiny, and h with it), g = g(h~) = relu(h~) + sigmoid(min(h~, 0)) (the paper's g, without
    a select), b = z g; the forward is the no-autograd loop h_t = a_t h_{t-1} + b_t, one addcmul per step,
    into one preallocated output.

    Backward, with G_t = dL/dh_t + a_{t+1} G_{t+1} (the reverse scan):
    dx = G (g - h_{t-1}) z a;  dh~ = G z g'(h~), g' = sigmoid'(s) + 0.75 [h~ >= 0] with
    s = sigmoid(min(h~, 0)) = min(g, 0.5);  dh0 = a_1 G_1;  minLSTM: di~ = dx sigmoid(-i~), df~ = -dx sigmoid(-f~).

    Saved: p, h and a, z, g (the transcendental passes are not redone). Both directions run in chunks of
    ``_CHUNK`` time steps: each chunk's gate math, then its part of the scan, so the intermediates (b; G
    and the gradient terms) live in small reused buffers that stay in cache, and each large tensor is
    written once. Strided views of p are read only by cheap ops (copy, neg, clamp): sigmoid reading
    a strided view is ~4x slower than in place on a dense buffer.
    """

    @staticmethod
    def forward(ctx, p, h0, lstm):
        n = 3 if lstm else 2
        B, T, nH = p.shape
        H = nH // n
        full = (B, T, H)
        a, z, g_ = (torch.empty(full, dtype=p.dtype) for _ in range(3))
        h = torch.empty(full, dtype=p.dtype)
        tmp = torch.empty((B, min(T, _CHUNK), H), dtype=p.dtype)
        h_prev = h0
        for t0 in range(0, T, _CHUNK):
            t1 = min(T, t0 + _CHUNK)
            ac, zc, gc, hc, bc = a[:, t0:t1], z[:, t0:t1], g_[:, t0:t1], h[:, t0:t1], tmp[:, :t1 - t0]
            c = p[:, t0:t1, (n - 1) * H:]
            if lstm:  # x = logsigmoid(i~) - logsigmoid(f~)
                torch.sub(F.logsigmoid(p[:, t0:t1, H:2 * H]), F.logsigmoid(p[:, t0:t1, :H]), out=zc)
                torch.neg(zc, out=ac).sigmoid_()
            else:
                torch.neg(p[:, t0:t1, :H], out=ac).sigmoid_()
                zc.copy_(p[:, t0:t1, :H])
            zc.sigmoid_()
            torch.clamp_max(c, 0, out=gc).sigmoid_().add_(torch.clamp_min(c, 0, out=bc))  # g
            torch.mul(zc, gc, out=bc)  # b = z g
            a_s, b_s, h_s = ac.unbind(1), bc.unbind(1), hc.unbind(1)
            if h_prev is None:
                h_s[0].copy_(b_s[0])
            else:
                torch.addcmul(b_s[0], a_s[0], h_prev, out=h_s[0])
            for t in range(1, t1 - t0):
                torch.addcmul(b_s[t], a_s[t], h_s[t - 1], out=h_s[t])
            h_prev = h_s[-1]
        ctx.lstm = lstm
        ctx.save_for_backward(p, h, a, z, g_, h0)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh):
        p, h, a, z, g_, h0 = ctx.saved_tensors
        need_p, need_h0, _ = ctx.needs_input_grad
        lstm = ctx.lstm
        n = 3 if lstm else 2
        B, T, nH = p.shape
        H = nH // n
        L = min(T, _CHUNK)
        gs_buf = torch.empty((B, L, H), dtype=p.dtype)
        tmp = torch.empty((B, L, H), dtype=p.dtype)
        grad = torch.empty(p.shape, dtype=p.dtype) if need_p else None
        thr = _NEG_TINY[p.dtype]
        g_next = None  # G at the first step of the chunk after this one
        starts = list(range(0, T, _CHUNK))
        for t0 in reversed(starts):
            t1 = min(T, t0 + _CHUNK)
            m = t1 - t0
            gs = gs_buf[:, :m]
            a_s, dh_s, gs_s = a[:, t0:t1].unbind(1), dh[:, t0:t1].unbind(1), gs.unbind(1)
            if g_next is None:
                gs_s[m - 1].copy_(dh_s[m - 1])
            else:
                torch.addcmul(dh_s[m - 1], a[:, t1], g_next, out=gs_s[m - 1])
            for t in range(m - 2, -1, -1):
                torch.addcmul(dh_s[t], a_s[t + 1], gs_s[t + 1], out=gs_s[t])
            g_next = gs_s[0].clone()  # gs is overwritten below and by the next chunk
            if not need_p:
                continue
            ac, zc, gc = a[:, t0:t1], z[:, t0:t1], g_[:, t0:t1]
            c = p[:, t0:t1, (n - 1) * H:]
            x = tmp[:, :m]
            if m > 1:  # x = g - h_{t-1}
                torch.sub(gc[:, 1:], h[:, t0:t1 - 1], out=x[:, 1:])
            if t0 > 0:
                torch.sub(gc[:, 0], h[:, t0 - 1], out=x[:, 0])
            elif h0 is not None:
                torch.sub(gc[:, 0], h0, out=x[:, 0])
            else:
                x[:, 0].copy_(gc[:, 0])
            x.mul_(gs).mul_(zc)  # G (g - h_{t-1}) z
            if lstm:
                x.mul_(ac)  # dx
                di, df = grad[:, t0:t1, H:2 * H], grad[:, t0:t1, :H]
                torch.neg(p[:, t0:t1, H:2 * H], out=di).sigmoid_().mul_(x)
                torch.neg(p[:, t0:t1, :H], out=df).sigmoid_().mul_(x).neg_()
            else:
                torch.mul(x, ac, out=grad[:, t0:t1, :H])  # dk
            u = gs.mul_(zc)  # G z
            s = torch.clamp_max(gc, 0.5, out=x)  # sigmoid(min(h~, 0))
            dc = _sigmoid_backward(u, s, grad_input=grad[:, t0:t1, (n - 1) * H:])  # G z sigmoid'(min(h~, 0))
            dc.add_(_threshold_backward(u, c, thr, grad_input=x), alpha=0.75)  # + 0.75 G z [h~ >= 0]
        grad_h0 = torch.mul(a[:, 0], g_next) if (need_h0 and h0 is not None) else None
        return grad, grad_h0, None


def fused_scan_ok(x: torch.Tensor, h0: torch.Tensor | None, scan_impl: str) -> bool:
    """Whether the layer takes the fused CPU path: impl auto/sequential, CPU, float32/64, T > 0, no autocast."""
    return (scan_impl in ("auto", "sequential") and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and x.dim() == 3 and x.shape[1] > 0
            and (h0 is None or (h0.dtype == x.dtype and h0.device == x.device))
            and not torch.is_autocast_enabled("cpu"))


def layer_scan(p: torch.Tensor, h0: torch.Tensor | None, lstm: bool) -> torch.Tensor:
    """h [B, T, H] of a minGRU (``lstm=False``, p = [k | h~]) or minLSTM (p = [f~ | i~ | h~]) layer from its
    pre-activations p [B, T, n*H] and h0 [B, H] or None, on the fused CPU path (see :class:`_MinRNNLayerScan`)."""
    return _apply_opaque(_MinRNNLayerScan, p.contiguous(), h0, lstm)


def check_scan_impl(scan_impl: str) -> str:
    if scan_impl not in SCAN_IMPLS:
        raise ValueError(f"scan_impl must be one of {', '.join(SCAN_IMPLS)}; got {scan_impl!r}")
    return scan_impl


def preactivations(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """linear(x), upcast from float16/bfloat16 (autocast) to float32: gates and the scan run in >= float32.

    Large float32 CPU inputs go through :func:`cpu_linear` (oneDNN; the same values to float32 rounding).
    """
    if _onednn_ok(x, linear.weight):
        return cpu_linear(x, linear.weight, linear.bias)
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
        elif fused_scan_ok(p, h0, self.scan_impl):  # CPU: gates and scan in one Function
            h = layer_scan(p, h0, lstm=False)
        else:
            a, b = scan_coefficients(p, lstm=False)  # a = sigmoid(-k), b = sigmoid(k) * g(h~)
            h = scan(a, b, h0, impl=self.scan_impl)
        return h, h[:, -1]

    def step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step of the recurrence: x [B, d_in], h [B, d_hidden] -> new h."""
        k, cand = preactivations(self.linear, x).chunk(2, dim=-1)
        return torch.sigmoid(-k) * h + torch.sigmoid(k) * g(cand)
