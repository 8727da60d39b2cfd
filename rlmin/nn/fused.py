"""Hand-fused autograd Functions shared by the minGRU and minLSTM layers (rlmin.nn.mingru, rlmin.nn.minlstm).

* :func:`scan_coefficients` (any device): the linear-space scan coefficients (a, b) from a layer's
  pre-activations, in one Function with a hand-written backward; the input of :func:`rlmin.nn.scan.scan`.
* :func:`cpu_linear` (CPU, float32): the layer's Linear as three oneDNN GEMMs (forward, dX, dW).
* :func:`layer_scan` (CPU, float32/float64, no autocast; see :func:`fused_scan_ok`): gates, g and the
  sequential scan of a whole layer in one Function with a hand-written backward, chunked over time.

Pre-activations: minGRU p = [k | h~]; minLSTM p = [f~ | i~ | h~] (the ``lstm`` flag). Each path is
tested against the plainly written layer in tests/test_backbones.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlmin.nn.scan import _apply_opaque


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

