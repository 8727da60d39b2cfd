"""Time forward+backward and peak memory of every backbone over sequence lengths.

    python scripts/bench_backbones.py                      # B=64, d=128, T in 20 64 256 1024 4096
    python scripts/bench_backbones.py --quick              # T in 20 64 256, one rep
    python scripts/bench_backbones.py --device cuda        # T in 64 512 4096, the GPU targets checked
    python scripts/bench_backbones.py --device cuda --sizes 256,1024,4096 --out runs/bench/gpu.json
    python scripts/bench_backbones.py --sizes 256,1024 --rows mingru_layer,gru --no-malloc-tune

Rows (all single-layer stacks, n_layers=1, dropout 0, like for like with torch.nn.GRU / nn.LSTM):

* mingru_layer, minlstm_layer   the bare MinGRU / MinLSTM layer, d -> d (the paper's single layer, input
                           projection included): the like-for-like comparison with nn.GRU / nn.LSTM, and the
                           headline (targets on CPU: minGRU layer >= 3x nn.GRU at T=256, >= 5x at T=1024)
* mingru, minlstm          the rlmin residual block (norm, minRNN, projection, MLP) via forward (parallel scan)
* transformer              the DT block stack, built with context = T (its default context is 60)
* gru, lstm                torch.nn.GRU / nn.LSTM (cuDNN on GPU)
* mingru_steploop          the mingru backbone driven by ``step`` T times, with autograd (no scan)
* mingru_layer_steploop    the bare MinGRU layer driven by ``step`` T times (default row on CUDA only): the
                           like-for-like step loop for the GPU target

On CUDA the minGRU/minLSTM rows take the Triton scan (scan_impl "auto"), with the tile sizes of
rlmin.nn.scan_triton (RLMIN_TRITON_CT_FWD / RLMIN_TRITON_CT_BWD override them; the header and the JSON
say which ran), nn.GRU / nn.LSTM take cuDNN, and the GPU targets are checked: minGRU layer forward+backward
>= 10x nn.GRU and >= 100x the layer's step loop, at T=512.

Skipped (and marked so): the transformer above --transformer-max-T (O(T^2) time), the step loop above
--steploop-max-T. Speedup ratios minGRU/nn.GRU and minLSTM/nn.LSTM are time(nn) / time(min) per T.

Timing: for each T every row's model is built, warmed up, and then timed rep by rep in turn (row 1, row 2,
..., then again), so that load from other processes on a shared machine falls on all rows alike; the
reported time is the median over reps. Every row gets the same B, T, d, dtype (float32), thread count,
input (which requires grad, so every backward computes dL/dx through the input projection) and
allocator setting. The backward is driven by ``--backward``: ``loss`` (default) = mean(y**2).backward(),
or ``grad`` = y.backward(dy) with one fixed random dy (the layer alone, without the loss's own passes).

CPU allocator: :func:`rlmin.cpu.tune_cpu_allocator` (glibc mallopt: large tensors from the heap instead
of a fresh, page-faulted mmap each time) is applied for the whole process, i.e. for every row alike,
unless ``--no-malloc-tune``; the header says which.

Peak memory: on CUDA, torch.cuda.max_memory_allocated over one forward+backward; on CPU, the process's
peak resident set (VmHWM, reset through /proc/self/clear_refs) minus the resident set before, which
counts the allocator's real footprint (after glibc's malloc_trim, so that freed heap pages reused
by the run count), and is "n/a" where the kernel does not allow the reset.
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
from rlmin.nn import MinGRU, MinLSTM, build_backbone

# The headline rows first: the bare layers and their torch counterparts.
ROWS = ["mingru_layer", "gru", "minlstm_layer", "lstm", "mingru", "minlstm", "transformer", "mingru_steploop",
        "mingru_layer_steploop"]
DEFAULT_ROWS = {"cpu": ROWS[:-1], "cuda": ROWS}  # the layer's step loop is the GPU target's baseline
DEFAULT_SIZES = {"cpu": "20,64,256,1024,4096", "cuda": "64,512,4096"}
# (fast row, slow row): the speedups reported, time(slow) / time(fast) per T.
PAIRS = [("mingru_layer", "gru"), ("minlstm_layer", "lstm"), ("mingru", "gru"), ("minlstm", "lstm"),
         ("mingru_layer", "mingru_layer_steploop"), ("mingru", "mingru_steploop")]
# (fast row, slow row, T, minimum speedup), per device type: the like-for-like layer targets.
TARGETS = {
    "cpu": [("mingru_layer", "gru", 256, 3.0), ("mingru_layer", "gru", 1024, 5.0)],
    "cuda": [("mingru_layer", "gru", 512, 10.0), ("mingru_layer", "mingru_layer_steploop", 512, 100.0)],
}


def pair_name(fast: str, slow: str) -> str:
    return f"{fast}/{slow}" if slow.endswith("_steploop") else f"{fast}/nn.{slow.upper()}"


class Layer(torch.nn.Module):
    """A bare MinGRU / MinLSTM layer with the backbone's forward signature."""

    def __init__(self, cls, d: int):
        super().__init__()
        self.d = d
        self.layer = cls(d, d)

    def forward(self, x):
        return self.layer(x)

    def initial_state(self, batch_size: int, device=None):  # what the step loop starts from
        return torch.zeros(batch_size, self.d, device=device)

    def step(self, x, h):
        h = self.layer.step(x, h)
        return h, h


def make_model(row: str, d: int, T: int) -> torch.nn.Module:
    row = row.removesuffix("_steploop")  # a step-loop row times the same model through step()
    if row == "mingru_layer":
        return Layer(MinGRU, d)
    if row == "minlstm_layer":
        return Layer(MinLSTM, d)
    if row == "transformer":
        return build_backbone("transformer", d, 1, dropout=0.0, context=T)
    return build_backbone(row, d, 1, dropout=0.0)


def run_once(row: str, model: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor | None = None) -> None:
    """One forward + backward; backward from mean(y**2) or, when dy is given, from y.backward(dy)."""
    if row.endswith("_steploop"):
        state = model.initial_state(x.shape[0], x.device)
        ys = []
        for t in range(x.shape[1]):
            y, state = model.step(x[:, t], state)
            ys.append(y)
        y = torch.stack(ys, dim=1)
    else:
        y = model(x)[0]
    if dy is None:
        y.float().square().mean().backward()
    else:
        y.backward(dy)
    model.zero_grad(set_to_none=True)
    x.grad = None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(row, model, x, device, dy=None) -> float | None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run_once(row, model, x, dy)
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        _malloc_trim()  # hand freed heap pages back, or reusing them would not show in the RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status_kb("VmRSS")
        run_once(row, model, x, dy)
        return (_status_kb("VmHWM") - base) / 1024
    except (OSError, KeyError):
        return None


def bench_T(rows: list[str], T: int, args, device) -> dict[str, dict]:
    """Time every row at one T, interleaved rep by rep (medians), then measure each row's peak memory."""
    models, params = {}, {}
    for row in rows:
        torch.manual_seed(0)
        models[row] = make_model(row, args.d_model, T).to(device).train()
        params[row] = sum(p.numel() for p in models[row].parameters())
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.batch, T, args.d_model, generator=gen).to(device).requires_grad_()
    dy = torch.randn(args.batch, T, args.d_model, generator=gen).to(device) if args.backward == "grad" else None
    for row in rows:
        for _ in range(args.warmup):
            run_once(row, models[row], x, dy)
    times = {row: [] for row in rows}
    for _ in range(args.reps):
        for row in rows:
            sync(device)
            t0 = time.perf_counter()
            run_once(row, models[row], x, dy)
            sync(device)
            times[row].append(time.perf_counter() - t0)
    out = {}
    for row in rows:
        mem = peak_memory_mb(row, models[row], x, device, dy)
        out[row] = {"backbone": row, "T": T, "status": "ok", "ms": 1e3 * statistics.median(times[row]),
                    "ms_min": 1e3 * min(times[row]), "ms_all": [1e3 * t for t in times[row]],
                    "reps": len(times[row]), "peak_mem_mb": mem, "params": params[row]}
    return out


def gpu_scan_info() -> dict:
    """Which scan the minGRU/minLSTM rows take on CUDA, with the triton version and tile sizes."""
    from rlmin.nn.scan import triton_available

    if not triton_available():
        return {"scan": "sequential (triton does not import)", "triton": None, "ct_fwd": None, "ct_bwd": None}
    import triton

    from rlmin.nn.scan_triton import tile_sizes

    ct_fwd, ct_bwd = tile_sizes(torch.float32)
    return {"scan": "triton", "triton": triton.__version__, "ct_fwd": ct_fwd, "ct_bwd": ct_bwd}


def skip_reason(row: str, T: int, args) -> str | None:
    if row == "transformer" and T > args.transformer_max_T:
        return f"T > {args.transformer_max_T}: O(T^2) attention"
    if row.endswith("_steploop") and T > args.steploop_max_T:
        return f"T > {args.steploop_max_T}: {T} python steps with autograd"
    return None


def fmt_ms(r) -> str:
    return f"{r['ms']:.1f}" if r and r["status"] == "ok" else "skip"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default=None,
                   help="comma-separated T values (default: 20,64,256,1024,4096 on CPU, 64,512,4096 on CUDA)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--reps", type=int, default=5, help="timed reps per row (interleaved across rows; median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rows", default=None,
                   help=f"comma-separated subset of {','.join(ROWS)} (default: all; on CPU all but the last)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--transformer-max-T", type=int, default=1024)
    p.add_argument("--steploop-max-T", type=int, default=1024)
    p.add_argument("--quick", action="store_true", help="T in 20,64,256, one rep: a smoke run")
    p.add_argument("--backward", choices=["loss", "grad"], default="loss",
                   help="backward from mean(y**2) (default) or from a fixed random dL/dy (the layer alone)")
    p.add_argument("--no-malloc-tune", action="store_true",
                   help="leave glibc malloc's defaults (by default rlmin.cpu.tune_cpu_allocator() is applied, "
                        "process-wide, so to every row alike)")
    p.add_argument("--out", default="runs/bench/backbones.json")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    malloc_tuned = False if args.no_malloc_tune else tune_cpu_allocator()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    kind = "cuda" if device.type == "cuda" else "cpu"
    sizes = [int(s) for s in (args.sizes or ("20,64,256" if args.quick else DEFAULT_SIZES[kind])).split(",")]
    if args.quick:
        args.reps = 1
    rows = args.rows.split(",") if args.rows else DEFAULT_ROWS[kind]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        p.error(f"unknown rows {bad}; valid: {', '.join(ROWS)}")
    rows = [r for r in ROWS if r in rows]  # headline rows first

    header = (f"device: {device_name(device)} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
              f"B={args.batch} d={args.d_model} n_layers=1 float32 | forward+backward "
              f"({'mean(y**2)' if args.backward == 'loss' else 'fixed dL/dy'}), median of {args.reps} interleaved "
              f"reps after {args.warmup} warm-up | malloc tune: {'on' if malloc_tuned else 'off'}")
    scan_info = gpu_scan_info() if kind == "cuda" else None
    if scan_info:
        header += (f"\nscan: {scan_info['scan']} | triton {scan_info['triton']} | tiles CT fwd/bwd "
                   f"{scan_info['ct_fwd']}/{scan_info['ct_bwd']} (float32)")
    print(header, flush=True)
    results: dict[tuple[str, int], dict] = {}
    for T in sizes:
        todo = []
        for row in rows:
            reason = skip_reason(row, T, args)
            if reason:
                results[row, T] = {"backbone": row, "T": T, "status": "skipped", "reason": reason}
            else:
                todo.append(row)
        if todo:
            for row, r in bench_T(todo, T, args, device).items():
                results[row, T] = r
        for row in rows:
            r = results[row, T]
            mem = r.get("peak_mem_mb")
            if r["status"] == "skipped":
                print(f"  T={T:5d} {row:21s}   skipped ({r['reason']})", flush=True)
            else:
                print(f"  T={T:5d} {row:21s} {r['ms']:9.1f} ms   mem "
                      + ("n/a" if mem is None else f"{mem:.1f} MB"), flush=True)

    speedups = {}
    for fast, slow in PAIRS:
        for T in sizes:
            a, b = results.get((fast, T)), results.get((slow, T))
            if a and b and a["status"] == b["status"] == "ok":
                speedups.setdefault(pair_name(fast, slow), {})[T] = b["ms"] / a["ms"]

    # table: time (memory) per row and T
    print("\nforward+backward time in ms, median (peak memory in MB)")
    print(f"{'backbone':21s}" + "".join(f"{'T=' + str(T):>18s}" for T in sizes) + f"{'params':>10s}")
    for row in rows:
        cells = []
        for T in sizes:
            r = results[row, T]
            mem = r.get("peak_mem_mb")
            mem = "n/a" if mem is None else f"{mem:.0f}"
            cells.append(f"{fmt_ms(r)} ({mem})" if r["status"] == "ok" else "skipped")
        params = next((results[row, T]["params"] for T in sizes if results[row, T]["status"] == "ok"), None)
        print(f"{row:21s}" + "".join(f"{c:>18s}" for c in cells) + f"{params if params else '':>10}")
    print("\nspeedup (time of the second row / time of the first)")
    for name, per_t in speedups.items():
        print(f"{name:36s}" + "".join(f"{f'T={T}: {v:.2f}x':>16s}" for T, v in per_t.items()))

    targets = []
    print(f"\ntargets ({kind.upper()}, like for like: same B, T, d, dtype, threads, allocator setting; fwd+bwd "
          "incl. the input projection)")
    for fast, slow, T, need in TARGETS[kind]:
        got = speedups.get(pair_name(fast, slow), {}).get(T)
        met = None if got is None else got >= need
        targets.append({"fast": fast, "slow": slow, "T": T, "need": need, "speedup": got, "met": met})
        state = "not measured" if got is None else (f"{got:.2f}x: " + ("MET" if met else "NOT MET"))
        print(f"  {pair_name(fast, slow)} at T={T}: need >= {need:.0f}x, {state}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": device_name(device), "torch": torch.__version__, "python": sys.version.split()[0],
        "threads": torch.get_num_threads(), "batch": args.batch, "d_model": args.d_model, "n_layers": 1,
        "reps": args.reps, "warmup": args.warmup, "sizes": sizes, "backward": args.backward,
        "malloc_tune": malloc_tuned, "timing": "median of interleaved reps (ms); ms_min = best, ms_all = every rep",
        "memory_method": ("cuda max_memory_allocated - memory_allocated before" if device.type == "cuda"
                          else "VmHWM - VmRSS (clear_refs)"),
        "scan": scan_info,
        "results": list(results.values()),
        "speedups": {k: {str(T): v for T, v in d.items()} for k, d in speedups.items()},
        "targets": targets,
    }, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
