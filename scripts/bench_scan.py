"""Benchmark the scan paths (h_t = a_t * h_{t-1} + b_t): forward and forward+backward time per impl.

    python scripts/bench_scan.py --quick            # CPU: a couple of minutes
    python scripts/bench_scan.py                    # all sizes; on CUDA includes Triton and GB/s
    python scripts/bench_scan.py --out runs/bench/scan.json --impls sequential,triton
    python scripts/bench_scan.py --device cuda --B 64 --D 1024 --T 4096 --ct 16,32   # tile sizes compared

Shapes are B=64, D=128, T in {20, 64, 256, 1024, 4096} (``--quick``: T <= 1024, fewer repeats;
``--B``, ``--D``, ``--T`` change them). ``--ct 16,32`` adds the rows ``triton_ct16``, ``triton_ct32``:
the Triton scan with that many timesteps per tile in both kernels (``triton`` keeps the defaults of
rlmin.nn.scan_triton, or RLMIN_TRITON_CT_FWD / _BWD); every Triton row records the tile sizes it ran.
Inputs are a in [0.5, 1), b in [0.1, 1.1) (positive, so the log-space path is valid); the
backward is driven by a fixed random dL/dh. Every impl's output is checked against the
sequential path (or the reference where it runs) and the largest difference is reported.

"Bytes" is the minimum traffic of fwd+bwd: the forward reads a, b and writes h (3 tensors), the
backward reads dL/dh, a, h and writes grad_a, grad_b (5 tensors). On CUDA, GB/s is that over the
measured time, next to a copy (``torch.empty_like(x).copy_(x)``, 2 tensors) measured in the
same run, and ``frac_of_copy`` is their ratio (the GPU target: >= 0.5 for the Triton scan at B=64,
T=4096, D=1024). On CPU the per-step overhead dominates, so GB/s is not reported.

This is a script, not a test: it asserts nothing about time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from rlmin.cpu import tune_cpu_allocator
from rlmin.machine import device_name
from rlmin.nn.scan import scan, triton_available

B, D = 64, 128
T_FULL = (20, 64, 256, 1024, 4096)
T_QUICK = (20, 64, 256, 1024)
# Slow paths: skip above these T (the Python-loop autograd reference and the log path build
# autograd graphs of T nodes; the log path is also >2x slower than the reference on CPU).
SLOW_LIMIT = {"cpu": {"reference": 1024, "log": 1024}, "cuda": {"reference": 1024, "log": 4096}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, reps: int, warmup: int) -> list[float]:
    """Seconds per call, one sample per call (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def tile_sizes_of(impl: str, dtype: torch.dtype) -> tuple[int, int] | None:
    """(CT fwd, CT bwd) a Triton row runs with; None for the other impls."""
    if not impl.startswith("triton"):
        return None
    from rlmin.nn.scan_triton import tile_sizes

    ct = int(impl.removeprefix("triton_ct")) if impl.startswith("triton_ct") else None
    return tile_sizes(dtype, ct, ct)


def run_scan(impl: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if impl.startswith("triton_ct"):  # the Triton scan at one tile size for both kernels
        from rlmin.nn.scan_triton import scan_triton

        ct = int(impl.removeprefix("triton_ct"))
        return scan_triton(a, b, ct_fwd=ct, ct_bwd=ct)
    return scan(a, b, impl=impl)


def make_inputs(B: int, T: int, D: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)  # on the device: GiB-sized inputs on CUDA
    a = (torch.rand(B, T, D, generator=g, device=device) * 0.5 + 0.5).to(dtype)
    b = (torch.rand(B, T, D, generator=g, device=device) + 0.1).to(dtype)
    gh = torch.randn(B, T, D, generator=g, device=device).to(dtype)
    return a, b, gh


def bench_one(impl: str, B: int, T: int, D: int, device, dtype, reps: int, warmup: int, judge=None):
    a, b, gh = make_inputs(B, T, D, device, dtype)
    a.requires_grad_()
    b.requires_grad_()

    def fwd():
        with torch.no_grad():
            run_scan(impl, a, b)

    def fwd_bwd():
        a.grad = b.grad = None
        run_scan(impl, a, b).backward(gh)

    t_fwd = timeit(fwd, device, reps, warmup)
    t_fb = timeit(fwd_bwd, device, reps, warmup)
    with torch.no_grad():
        h = run_scan(impl, a, b)
    err = None if judge is None else (h.float() - judge.float()).abs().max().item()
    return {"fwd_s": t_fwd, "fwd_bwd_s": t_fb}, h, err


def copy_gbps(B: int, T: int, D: int, device, dtype, reps: int, warmup: int) -> float:
    x = torch.randn(B, T, D, device=device, dtype=dtype)
    ts = timeit(lambda: torch.empty_like(x).copy_(x), device, reps, warmup)
    return 2 * x.numel() * x.element_size() / statistics.median(ts) / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="T <= 1024 and fewer repeats (a couple of minutes on CPU)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    p.add_argument("--impls", default=None,
                   help="comma-separated subset of: sequential,triton,reference,log,triton_ct<N>")
    p.add_argument("--T", default=None, help="comma-separated sequence lengths (overrides the defaults)")
    p.add_argument("--B", type=int, default=B, help=f"batch (default {B})")
    p.add_argument("--D", type=int, default=D, help=f"channels (default {D})")
    p.add_argument("--ct", default=None,
                   help="comma-separated Triton tile sizes to compare (adds rows triton_ct<N>; CUDA or interpreter)")
    p.add_argument("--reps", type=int, default=None, help="timed repeats per case (default 5 quick / 10)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--malloc-tune", action="store_true",
                   help="glibc only: raise the mmap/trim thresholds (mallopt) so that large CPU tensors are "
                        "not mmapped and page-faulted afresh on every allocation")
    p.add_argument("--out", default="runs/bench/scan.json")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.malloc_tune:
        print(f"malloc tune: {'on' if tune_cpu_allocator() else 'not available (not glibc)'}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    nB, nD = args.B, args.D
    dtype = getattr(torch, args.dtype)
    Ts = tuple(int(t) for t in args.T.split(",")) if args.T else (T_QUICK if args.quick else T_FULL)
    reps = args.reps or (5 if args.quick else 10)
    warmup = 1 if device.type == "cpu" else 3
    impls = ["sequential", "reference", "log"]
    if device.type == "cuda" and triton_available():
        impls.insert(0, "triton")
    if args.impls:
        impls = [i for i in args.impls.split(",") if i]
    if args.ct:
        impls += [f"triton_ct{int(c)}" for c in args.ct.split(",") if f"triton_ct{int(c)}" not in impls]
    limits = SLOW_LIMIT[device.type]

    meta = {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "python": sys.version.split()[0], "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "dtype": args.dtype, "B": nB, "D": nD, "T": list(Ts), "reps": reps, "malloc_tune": args.malloc_tune,
        "timing": "per-call seconds for every rep; *_ms = median, *_min_ms = best; fwd under no_grad, "
                  "fwd_bwd = forward + backward(dL/dh)",
    }
    if any(i.startswith("triton") for i in impls):
        import triton

        meta["triton"] = triton.__version__
        meta["tile_sizes"] = {i: tile_sizes_of(i, dtype) for i in impls if i.startswith("triton")}
    print(f"device: {meta['device']} ({device.type}); torch {torch.__version__}; dtype {args.dtype}; "
          f"B={nB} D={nD}; threads={meta['threads']}; reps={reps}"
          + (f"; Triton tiles (CT fwd, bwd) {meta['tile_sizes']}" if "tile_sizes" in meta else ""))

    rows, skipped = [], []
    for T in Ts:
        judge, judge_name = None, None
        copy_bw = copy_gbps(nB, T, nD, device, dtype, reps, warmup) if device.type == "cuda" else None
        nbytes = 8 * nB * T * nD * torch.empty((), dtype=dtype).element_size()
        # Judge first: the reference where it runs, else the sequential path.
        order = sorted(impls, key=lambda i: {"reference": 0, "sequential": 1}.get(i, 2))
        for impl in order:
            if T > limits.get(impl, 1 << 60):
                skipped.append({"impl": impl, "T": T, "why": f"T > {limits[impl]}: too slow to be worth timing"})
                continue
            res, h, err = bench_one(impl, nB, T, nD, device, dtype, reps, warmup, judge)
            if judge is None:
                judge, judge_name = h, impl
            del h
            row = {"impl": impl, "T": T, **res,
                   "fwd_ms": statistics.median(res["fwd_s"]) * 1e3,
                   "fwd_bwd_ms": statistics.median(res["fwd_bwd_s"]) * 1e3,
                   "fwd_min_ms": min(res["fwd_s"]) * 1e3, "fwd_bwd_min_ms": min(res["fwd_bwd_s"]) * 1e3,
                   "max_abs_diff": err, "judge": judge_name, "bytes_fwd_bwd": nbytes,
                   "B": nB, "D": nD, "tile_sizes": tile_sizes_of(impl, dtype)}
            if device.type == "cuda":
                row["gbps"] = nbytes / (row["fwd_bwd_ms"] / 1e3) / 1e9
                row["copy_gbps"] = copy_bw
                row["frac_of_copy"] = row["gbps"] / copy_bw
            rows.append(row)
            print(f"  T={T:5d} {impl:10s} fwd {row['fwd_ms']:9.3f} ms  fwd+bwd {row['fwd_bwd_ms']:9.3f} ms "
                  f"(median; best {row['fwd_bwd_min_ms']:.3f})"
                  + (f"  {row['gbps']:7.1f} GB/s (copy {copy_bw:.1f}, {row['frac_of_copy']:.0%})"
                     if device.type == "cuda" else ""), flush=True)
        del judge

    # Table: fwd+bwd ms per impl, and speed-up of each over the reference loop.
    print()
    head = f"{'T':>6} | " + " | ".join(f"{i:>12}" for i in impls)
    print(f"fwd+bwd, ms (best of {reps}: least disturbed by other load on a shared machine; medians in the "
          f"JSON); x = speed-up over reference")
    print(head)
    print("-" * len(head))
    for T in Ts:
        by = {r["impl"]: r for r in rows if r["T"] == T}
        ref = by.get("reference")
        cells = []
        for i in impls:
            r = by.get(i)
            if r is None:
                cells.append(f"{'skipped':>12}")
                continue
            x = f" {ref['fwd_bwd_min_ms'] / r['fwd_bwd_min_ms']:.1f}x" if ref else ""
            cells.append(f"{r['fwd_bwd_min_ms']:.2f}{x}".rjust(12))
        print(f"{T:>6} | " + " | ".join(cells))
    if device.type == "cuda":
        print("\nachieved GB/s (fwd+bwd, 8 tensors moved) vs copy GB/s")
        for T in Ts:
            by = {r["impl"]: r for r in rows if r["T"] == T}
            if by:
                cells = " | ".join(f"{i} {by[i]['gbps']:.0f}" for i in impls if i in by)
                print(f"{T:>6} | {cells} | copy {next(iter(by.values()))['copy_gbps']:.0f}")
    print("\nlargest |h - judge| over T, by impl (judge: reference where it ran, else sequential): "
          + ", ".join(f"{i} {max((r['max_abs_diff'] or 0.0) for r in rows if r['impl'] == i):.2g}"
                      for i in impls if any(r["impl"] == i for r in rows)))
    for s in skipped:
        print(f"skipped {s['impl']} at T={s['T']} ({s['why']})")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows, "skipped": skipped}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
