"""Triton kernels for the linear recurrence ``h_t = a_t * h_{t-1} + b_t`` (forward and backward).

Design: a bandwidth-optimal sequential walk over T. Each program owns a block of channels of the
flat ``B*D`` axis (contiguous along D, one channel per thread) and walks T in tiles of CT steps,
reading ``a`` and ``b`` once and writing ``h`` once. Within a tile the steps are composed with
``tl.associative_scan`` along the time axis (all CT steps of a channel sit in one thread, so this
is an in-register loop), then ``h = A * carry + B`` with the carry from the previous tile. The
next tile is loaded before the current tile's stores are issued: a plain step-by-step loop with
one load per step compiles to load, wait, store, load, ... (the compiler cannot move a load above
a store it cannot prove does not alias it), which is latency-bound, not bandwidth-bound.

The backward kernel is the same walk in reverse: ``g_t = dL/dh_t + a_{t+1} g_{t+1}`` (the same
recurrence with coefficient ``a_{t+1}``), ``grad_b_t = g_t``, ``grad_a_t = g_t h_{t-1}``,
``grad_h0 = a_1 g_1``; it reads dh, a and h once and writes the grads once.

Numerics: composing steps multiplies a few a's together before applying them (no division, no
logs), so results equal the reference loop up to float rounding. Accumulation is in float32
(float64 for float64 inputs); outputs and grads are stored in the input dtype. Any input strides
are read in place (no ``.contiguous()`` copies).

Offsets: every stride is cast to int64 inside the kernels before it is multiplied, since triton
passes integer arguments below 2**31 as int32 and ``t * stride_t`` can pass 2**31 for large tensors
(a time-major view of B*D >= 2**26 channels, say) even where each stride fits.

Tile size: CT timesteps per tile, from (first found) the ``ct_fwd``/``ct_bwd`` arguments of
:func:`scan_triton`, the environment variables ``RLMIN_TRITON_CT_FWD``/``RLMIN_TRITON_CT_BWD``
(read at each call), else :data:`CT_FWD`/:data:`CT_BWD` by accumulator dtype. Powers of 2 in [2, 128].

Errors: a kernel that fails to compile or launch (no CUDA toolchain, an unsupported GPU, a
triton/driver mismatch) raises :class:`TritonScanError`, one line naming
``agent.backbone_options.scan_impl=sequential`` as the way around, with the original exception
chained (``__cause__``) for whoever needs the compiler's trace.

Runs on CUDA, and on CPU tensors under ``TRITON_INTERPRET=1`` (the variable must be set before
this module is imported). Only long-stable triton APIs are used (jit, program_id, arange, load,
store, where, sum, zeros, associative_scan with a tuple of inputs, constexpr).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from rlmin.errors import TritonScanError
from rlmin.nn.scan_checks import _apply_opaque, _check

# Timesteps per tile (a power of 2), by accumulator: the largest that compiles for sm_90 without
# (or, fp32 forward, with a handful of) register spills, read off the SASS. Not tuned on a GPU yet:
# scripts/gpu_check.sh measures 16 against 32 through the environment variables below.
CT_FWD = {False: 32, True: 16}  # keyed by "accumulate in float64"
CT_BWD = {False: 16, True: 8}  # three input tiles instead of two
CT_ENV_FWD, CT_ENV_BWD = "RLMIN_TRITON_CT_FWD", "RLMIN_TRITON_CT_BWD"
CT_RANGE = (2, 128)  # tl.arange needs a power of 2; larger tiles only spill more registers

WAY_AROUND = "agent.backbone_options.scan_impl=sequential"


@triton.jit
def _combine(a1, b1, a2, b2):
    """Compose two steps of h -> a*h + b; (a1, b1) is the earlier one."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_fwd_kernel(
    a_ptr, b_ptr, h0_ptr, h_ptr,
    N, T, D,
    sa_b, sa_t, sa_d,
    sb_b, sb_t, sb_d,
    sh0_b, sh0_d,
    sh_b, sh_t, sh_d,
    HAS_H0: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr, CT: tl.constexpr,
):
    # int64 strides: triton passes ints < 2**31 as int32, and CT * sa_t or rows * sa_t can overflow.
    sa_b, sa_t, sa_d = tl.cast(sa_b, tl.int64), tl.cast(sa_t, tl.int64), tl.cast(sa_d, tl.int64)
    sb_b, sb_t, sb_d = tl.cast(sb_b, tl.int64), tl.cast(sb_t, tl.int64), tl.cast(sb_d, tl.int64)
    sh0_b, sh0_d = tl.cast(sh0_b, tl.int64), tl.cast(sh0_d, tl.int64)
    sh_b, sh_t, sh_d = tl.cast(sh_b, tl.int64), tl.cast(sh_t, tl.int64), tl.cast(sh_d, tl.int64)
    pid = tl.program_id(0)
    c = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # flat channel index in [0, B*D)
    cmask = c < N
    bi = c // D
    di = c % D
    rows = tl.arange(0, CT)  # int32: rows * sa_t is int64 through the int64 stride
    # [CT, BLOCK] tiles: CT timesteps by BLOCK channels.
    pa = a_ptr + (bi * sa_b + di * sa_d)[None, :] + rows[:, None] * sa_t
    pb = b_ptr + (bi * sb_b + di * sb_d)[None, :] + rows[:, None] * sb_t
    ph = h_ptr + (bi * sh_b + di * sh_d)[None, :] + rows[:, None] * sh_t
    if F64:
        carry = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        carry = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_H0:
        carry = tl.load(h0_ptr + bi * sh0_b + di * sh0_d, mask=cmask, other=0.0).to(carry.dtype)
    t = rows
    m = (t < T)[:, None] & cmask[None, :]
    # Rows past T load the identity step (a=1, b=0). The next tile is loaded before this tile's
    # stores are issued: the compiler cannot move a load above a store that might alias it.
    a_nx = tl.load(pa, mask=m, other=1.0)
    b_nx = tl.load(pb, mask=m, other=0.0)
    for _ in range(0, T, CT):
        a_t = a_nx.to(carry.dtype)
        b_t = b_nx.to(carry.dtype)
        m_t = m
        pa += CT * sa_t
        pb += CT * sb_t
        t += CT
        m = (t < T)[:, None] & cmask[None, :]
        a_nx = tl.load(pa, mask=m, other=1.0)
        b_nx = tl.load(pb, mask=m, other=0.0)
        # Within the tile: (A_t, B_t) = steps 1..t composed, so h_t = A_t * carry + B_t.
        A, Bc = tl.associative_scan((a_t, b_t), 0, _combine)
        h = A * carry[None, :] + Bc
        tl.store(ph, h.to(h_ptr.dtype.element_ty), mask=m_t)
        ph += CT * sh_t
        carry = tl.sum(tl.where(rows[:, None] == CT - 1, h, 0.0), axis=0)


@triton.jit
def _scan_bwd_kernel(
    dh_ptr, a_ptr, h_ptr, h0_ptr, ga_ptr, gb_ptr, gh0_ptr,
    N, T, D,
    sdh_b, sdh_t, sdh_d,
    sa_b, sa_t, sa_d,
    sh_b, sh_t, sh_d,
    sh0_b, sh0_d,
    sg_b, sg_t, sg_d,
    sgh0_b, sgh0_d,
    HAS_H0: tl.constexpr, NEED_A: tl.constexpr, NEED_B: tl.constexpr, NEED_H0: tl.constexpr,
    F64: tl.constexpr, BLOCK: tl.constexpr, CT: tl.constexpr,
):
    # g_t = dh_t + a_{t+1} g_{t+1} is the forward recurrence run backwards in time with
    # coefficient a_{t+1}: tiles hold CT timesteps in descending order (row r is t = T-1-k*CT-r).
    # int64 strides, as in the forward kernel: tc is int64 already, the casts keep every product 64-bit.
    sdh_b, sdh_t, sdh_d = tl.cast(sdh_b, tl.int64), tl.cast(sdh_t, tl.int64), tl.cast(sdh_d, tl.int64)
    sa_b, sa_t, sa_d = tl.cast(sa_b, tl.int64), tl.cast(sa_t, tl.int64), tl.cast(sa_d, tl.int64)
    sh_b, sh_t, sh_d = tl.cast(sh_b, tl.int64), tl.cast(sh_t, tl.int64), tl.cast(sh_d, tl.int64)
    sh0_b, sh0_d = tl.cast(sh0_b, tl.int64), tl.cast(sh0_d, tl.int64)
    sg_b, sg_t, sg_d = tl.cast(sg_b, tl.int64), tl.cast(sg_t, tl.int64), tl.cast(sg_d, tl.int64)
    sgh0_b, sgh0_d = tl.cast(sgh0_b, tl.int64), tl.cast(sgh0_d, tl.int64)
    pid = tl.program_id(0)
    c = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    cmask = c < N
    bi = c // D
    di = c % D
    o_dh = (bi * sdh_b + di * sdh_d)[None, :]
    o_a = (bi * sa_b + di * sa_d)[None, :]
    o_h = (bi * sh_b + di * sh_d)[None, :]
    o_g = (bi * sg_b + di * sg_d)[None, :]
    rows = tl.arange(0, CT)
    if F64:
        carry = tl.zeros([BLOCK], dtype=tl.float64)  # g of the step after this tile
    else:
        carry = tl.zeros([BLOCK], dtype=tl.float32)
    if NEED_A and HAS_H0:
        h0 = tl.load(h0_ptr + bi * sh0_b + di * sh0_d, mask=cmask, other=0.0).to(carry.dtype)
    t = (T - 1 - rows).to(tl.int64)
    tc = t[:, None]
    cm = cmask[None, :]
    # Rows before t = 0 are identity steps (coef 1, dh 0), so the last row ends holding g_0.
    dh_nx = tl.load(dh_ptr + o_dh + tc * sdh_t, mask=cm & (tc >= 0), other=0.0)
    co_nx = tl.load(a_ptr + o_a + (tc + 1) * sa_t, mask=cm & (tc >= 0) & (tc + 1 < T), other=0.0)
    if NEED_A:
        hp_nx = tl.load(h_ptr + o_h + (tc - 1) * sh_t, mask=cm & (tc >= 1), other=0.0)
    for _ in range(0, T, CT):
        dh = dh_nx.to(carry.dtype)
        coef = tl.where(tc < 0, 1.0, co_nx.to(carry.dtype))
        if NEED_A:
            hp = hp_nx.to(carry.dtype)
            if HAS_H0:
                hp = tl.where(tc == 0, h0[None, :], hp)
        m_t = cm & (tc >= 0)
        tc_t = tc
        # Load the next tile before this tile's stores (see the forward kernel).
        tc = tc - CT
        dh_nx = tl.load(dh_ptr + o_dh + tc * sdh_t, mask=cm & (tc >= 0), other=0.0)
        co_nx = tl.load(a_ptr + o_a + (tc + 1) * sa_t, mask=cm & (tc >= 0) & (tc + 1 < T), other=0.0)
        if NEED_A:
            hp_nx = tl.load(h_ptr + o_h + (tc - 1) * sh_t, mask=cm & (tc >= 1), other=0.0)
        A, Bc = tl.associative_scan((coef, dh), 0, _combine)
        g = A * carry[None, :] + Bc
        if NEED_B:
            tl.store(gb_ptr + o_g + tc_t * sg_t, g.to(gb_ptr.dtype.element_ty), mask=m_t)
        if NEED_A:
            tl.store(ga_ptr + o_g + tc_t * sg_t, (g * hp).to(ga_ptr.dtype.element_ty), mask=m_t)
        carry = tl.sum(tl.where(rows[:, None] == CT - 1, g, 0.0), axis=0)
    if NEED_H0:
        a0 = tl.load(a_ptr + bi * sa_b + di * sa_d, mask=cmask, other=0.0).to(carry.dtype)
        tl.store(gh0_ptr + bi * sgh0_b + di * sgh0_d, (a0 * carry).to(gh0_ptr.dtype.element_ty), mask=cmask)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _launch_config(n: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK, num_warps): one channel per thread; shrink the block until there are >= 2 programs per SM."""
    if device.type != "cuda":
        return 64, 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    block = 128
    while block > 32 and triton.cdiv(n, block) < 2 * sms:
        block //= 2
    return block, max(1, block // 32)


def _acc_f64(dtype: torch.dtype) -> bool:
    return dtype == torch.float64


def _check_ct(name: str, ct) -> int:
    lo, hi = CT_RANGE
    if not isinstance(ct, int) or isinstance(ct, bool) or not lo <= ct <= hi or ct & (ct - 1):
        raise ValueError(f"{name} must be a power of 2 in [{lo}, {hi}]; got {ct!r}")
    return ct


def tile_sizes(dtype: torch.dtype, ct_fwd: int | None = None, ct_bwd: int | None = None) -> tuple[int, int]:
    """(CT forward, CT backward) for inputs of ``dtype``: the arguments, else the environment, else the table."""
    f64 = _acc_f64(dtype)
    out = []
    for name, arg, env, table in (("ct_fwd", ct_fwd, CT_ENV_FWD, CT_FWD), ("ct_bwd", ct_bwd, CT_ENV_BWD, CT_BWD)):
        if arg is not None:
            out.append(_check_ct(name, arg))
        elif os.environ.get(env):  # read per call, so one benchmark process can compare tile sizes
            value = os.environ[env]
            out.append(_check_ct(env, int(value) if value.isdigit() else value))
        else:
            out.append(table[f64])
    return out[0], out[1]


def _launch(kernel, grid, device: torch.device, *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs); a failure to compile or launch becomes one TritonScanError line."""
    try:
        kernel[grid](*args, **kwargs)
    except Exception as exc:  # CompilationError, OutOfResources, driver/toolchain errors, ...
        first = (str(exc).strip().splitlines() or [""])[0][:100]  # a hint, not the 200-line trace
        raise TritonScanError(
            f"the Triton scan kernel failed to compile or launch on {device} ({type(exc).__name__}"
            + (f": {first}" if first else "") + f"); set {WAY_AROUND} to train without Triton"
        ) from exc


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, ct_fwd, ct_bwd):
        dtype = torch.promote_types(a.dtype, b.dtype)
        if h0 is not None:
            dtype = torch.promote_types(dtype, h0.dtype)
        a, b = a.to(dtype), b.to(dtype)
        h0 = None if h0 is None else h0.to(dtype)
        B, T, D = a.shape
        h = torch.empty((B, T, D), dtype=dtype, device=a.device)
        n = B * D
        if n > 0 and T > 0:
            block, warps = _launch_config(n, a.device)
            h0_arg = h0 if h0 is not None else a
            sh0 = h0.stride() if h0 is not None else (0, 0)
            _launch(
                _scan_fwd_kernel, (triton.cdiv(n, block),), a.device,
                a, b, h0_arg, h,
                n, T, D,
                *a.stride(), *b.stride(), *sh0, *h.stride(),
                HAS_H0=h0 is not None, F64=_acc_f64(dtype), BLOCK=block, CT=ct_fwd,
                num_warps=warps,
            )
        ctx.save_for_backward(a, h, h0)
        ctx.ct_bwd = ct_bwd
        return h

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        need_a, need_b, need_h0 = ctx.needs_input_grad[:3]
        need_h0 = bool(need_h0 and h0 is not None)
        B, T, D = a.shape
        n = B * D
        grad_h = grad_h.to(h.dtype)
        ga = torch.empty_like(h) if need_a else None
        gb = torch.empty_like(h) if need_b else None
        gh0 = torch.empty((B, D), dtype=h.dtype, device=h.device) if need_h0 else None
        if T == 0 or n == 0:
            if gh0 is not None:
                gh0.zero_()
            return ga, gb, gh0, None, None
        block, warps = _launch_config(n, a.device)
        sg = (ga if ga is not None else gb if gb is not None else h).stride()
        h0_arg = h0 if h0 is not None else a
        sh0 = h0.stride() if h0 is not None else (0, 0)
        _launch(
            _scan_bwd_kernel, (triton.cdiv(n, block),), a.device,
            grad_h, a, h, h0_arg,
            ga if ga is not None else h, gb if gb is not None else h, gh0 if gh0 is not None else h,
            n, T, D,
            *grad_h.stride(), *a.stride(), *h.stride(), *sh0, *sg,
            *(gh0.stride() if gh0 is not None else (0, 0)),
            HAS_H0=h0 is not None, NEED_A=need_a, NEED_B=need_b, NEED_H0=need_h0,
            F64=_acc_f64(h.dtype), BLOCK=block, CT=ctx.ct_bwd,
            num_warps=warps,
        )
        return ga, gb, gh0, None, None


def scan_triton(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, *,
                ct_fwd: int | None = None, ct_bwd: int | None = None) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t over dim 1 with Triton kernels (forward and backward).

    a, b: [B, T, D] (any strides); h0: [B, D] or None (zeros). CUDA tensors, or CPU tensors when
    TRITON_INTERPRET=1 was set before this module was imported. Accumulates in float32 (float64
    for float64 inputs); returns the input dtype. ct_fwd / ct_bwd: timesteps per tile (see
    :func:`tile_sizes`). A kernel that cannot be compiled or launched raises :class:`TritonScanError`.
    """
    _check(a, b, h0)
    if not a.is_cuda and not _interpreting():
        raise RuntimeError(
            f"scan_triton needs CUDA tensors (got device {a.device}); on CPU use impl='sequential', "
            "or set TRITON_INTERPRET=1 before importing rlmin.nn.scan_triton to run the kernels interpreted"
        )
    dtype = torch.promote_types(a.dtype, b.dtype)  # the accumulator follows it (see _TritonScan)
    if h0 is not None:
        dtype = torch.promote_types(dtype, h0.dtype)
    cts = tile_sizes(dtype, ct_fwd, ct_bwd)
    if a.is_cuda:
        with torch.cuda.device(a.device):
            return _apply_opaque(_TritonScan, a, b, h0, *cts)
    return _apply_opaque(_TritonScan, a, b, h0, *cts)
