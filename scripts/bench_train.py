"""Training throughput of the decision agent per backbone, at roughly equal parameter count.

    python scripts/bench_train.py                       # K=20 (B=64) interleaved, stacked; episodes (L=1000, B=16)
    python scripts/bench_train.py --quick               # a smoke run: fewer steps, B=8 for episodes
    python scripts/bench_train.py --threads 2 --out runs/bench/train.json

One optimizer step = ``agent.loss(batch)`` + ``rlmin.train.optimizer_step`` (backward, clip,
AdamW, schedule: the trainer's own function, optimizer and settings from
configs/protocols/dt.yaml), on a synthetic batch in the sampler's format (Hopper sizes, obs 11,
act 3, every step real). The agent is built from configs/backbones/<name>.yaml as ``rlmin train``
builds it (3 layers, interleaved (R, s, a) tokens, or ``stacked``: one token a step,
dropout 0.1 in train mode).

Equal size: minGRU at d_model=128 (the configs' default) sets the parameter count of the whole
agent (embeddings and head included), and every other backbone gets the d_model (a multiple of
4) whose count is nearest to it. The counts are printed. The transformer's position table grows
with its context (3 tokens per step), so its count at L=1000 is larger than at K=20; the match
is made at K=20.

Each case runs in its own child process, so a case that runs out of memory (killed, or torch's
allocator error) or past ``--case-timeout`` seconds is reported as a result ("OOM", "skipped:
> N s") and the others still run. Reported: optimizer steps/s, sequences/s (the trainer's
``train/samples_per_s``: rows of the batch) and timesteps/s (rows x L), the child's peak
resident memory (VmHWM), the process CPU time per step (on a shared machine, wall time / CPU
time shows the contention), and the ratio of each backbone's steps/s to the transformer's in the
same case. Torch runs with 1 thread unless ``--threads``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_common import BACKBONES, REFERENCE, build_agent, matched_widths, parse_backbones, synthetic_batch

from rlmin.cpu import tune_cpu_allocator
from rlmin.machine import machine_info, machine_line
from rlmin.train import build_optimizer, build_scheduler, optimizer_step


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _variant(row: dict) -> str:
    """fp32, bf16, "fp32 compiled", "fp32 fast-dropout", ...: a row's levers."""
    return (row["precision"] + (" compiled" if row.get("compiled") else "")
            + (" fast-dropout" if row.get("fast_dropout") else ""))


def _medians(timed: list[dict]) -> list[dict]:
    """One row per case (mode, variant, backbone): its first round's row with the median rate
    over the rounds (every round's rate kept as ``rounds_steps_per_s``)."""
    import statistics
    groups: dict[tuple, list[dict]] = {}
    for r in timed:
        groups.setdefault((r["mode"], _variant(r), r["backbone"]), []).append(r)
    rows = []
    for group in groups.values():
        ok = [r for r in group if r["status"] == "ok"]
        if not ok:
            rows.append(group[0])
            continue
        rate = statistics.median(r["steps_per_s"] for r in ok)
        rows.append({**ok[0], "steps_per_s": rate, "sequences_per_s": rate * ok[0]["batch"],
                     "timesteps_per_s": rate * ok[0]["batch"] * ok[0]["length"],
                     "ms_per_step": 1e3 / rate,
                     "rounds_steps_per_s": [r["steps_per_s"] for r in ok]})
    return rows


def run_case(spec: dict) -> dict:
    """Time optimizer steps of one (backbone, d_model, L, batch); returns a result row."""
    import torch

    tune_cpu_allocator()  # as `rlmin train` does (rlmin/cpu.py)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = spec.get("device", "cpu")
    layout = ("agent.token_layout=stacked",) if spec["mode"] == "stacked" else ()  # one token a step
    agent, cfg = build_agent(spec["backbone"], spec["d_model"], spec["length"], device, layout)
    agent.train()
    if spec.get("fast_dropout"):  # train.fast_dropout: as the trainer does, right after the build
        from rlmin.nn.dropout import use_fast_dropout
        use_fast_dropout(agent)
    params = sum(p.numel() for p in agent.parameters())
    opt = build_optimizer(agent, cfg.train)  # the trainer's AdamW, groups and schedule
    sched = build_scheduler(opt, cfg.train.warmup_steps)
    batch = {k: v.to(device) for k, v in synthetic_batch(spec["batch"], spec["length"]).items()}

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    # bf16: the trainer's autocast (train.amp on CUDA, train.cpu_amp on CPU) around the loss
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                              enabled=spec.get("precision") == "bf16")

    # train.compile: the trainer compiles the loss (forward; backward through AOTAutograd)
    loss_fn = torch.compile(agent.loss) if spec.get("compiled") else agent.loss

    def one_step():  # what `rlmin train` runs per step (rlmin.train.optimizer_step)
        with autocast:
            loss, _ = loss_fn(batch)
        optimizer_step(agent, loss, opt, sched, cfg.train.grad_clip)

    warmup_start = time.perf_counter()
    for _ in range(spec["warmup"]):
        one_step()  # compiled: the first one compiles
    sync()
    warmup_s = time.perf_counter() - warmup_start
    steps, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while steps < spec["min_steps"] or time.perf_counter() - start < spec["seconds"]:
        one_step()
        steps += 1
    sync()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    rate = steps / elapsed
    return {**spec, "status": "ok", "params": params, "steps": steps, "elapsed_s": elapsed,
            "steps_per_s": rate, "sequences_per_s": rate * spec["batch"],
            "timesteps_per_s": rate * spec["batch"] * spec["length"],
            "ms_per_step": 1e3 / rate, "cpu_ms_per_step": 1e3 * cpu / steps, "warmup_s": warmup_s,
            "peak_rss_mb": _peak_rss_mb()}


def run_case_isolated(spec: dict, timeout: float) -> dict:
    """``run_case`` in a child process: OOM and timeouts become result rows, not crashes."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "status": f"skipped: > {timeout:g} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    err = (proc.stderr or "").strip().splitlines()
    oom = proc.returncode in (-9, 137) or any("out of memory" in e.lower() or
                                              "can't allocate memory" in e.lower() for e in err)
    return {**spec, "status": "OOM" if oom else f"error (exit {proc.returncode})",
            "error": err[-1] if err else None}


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--k", type=int, default=20, help="segment length K")
    ap.add_argument("--k-batch", type=int, default=64)
    ap.add_argument("--episode-len", type=int, default=1000, help="whole-episode length L")
    ap.add_argument("--episode-batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0, help="least timed seconds per case")
    ap.add_argument("--min-steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--case-timeout", type=float, default=600.0,
                    help="seconds before a case is reported as skipped")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 s / 2 steps per case, episode batch 8, 180 s case timeout")
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="fp32 and/or bf16 (autocast, as train.cpu_amp / train.amp)")
    ap.add_argument("--cases", default="segment,stacked,episode",
                    help="segment (K, interleaved), stacked (K, one token a step), episode")
    ap.add_argument("--compile", action="store_true",
                    help="also time every case with torch.compile of the loss (train.compile), "
                         "its compile time in the warm-up seconds")
    ap.add_argument("--fast-dropout", action="store_true",
                    help="also time every case with train.fast_dropout (16-bit dropout masks)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time every case this many times, the variants' order reversed every other "
                         "round; the table gives each case's median (a noisy machine's A/B)")
    ap.add_argument("--out", default="runs/bench/train.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:  # one case, result as the last line of stdout
        print(json.dumps(run_case(json.loads(args.child))))
        return {}
    if args.quick:
        args.seconds, args.min_steps, args.warmup = 1.0, 2, 1
        args.episode_batch = min(args.episode_batch, 8)
        args.case_timeout = min(args.case_timeout, 180.0)

    backbones = parse_backbones(ap, args.backbones)
    info = machine_info()
    widths = matched_widths(backbones if REFERENCE[0] in backbones else
                            [REFERENCE[0], *backbones])
    print(machine_line(info))
    print(f"threads {args.threads} | device {args.device} | the backbone configs (3 layers), interleaved tokens, "
          f"dropout 0.1 | step = loss + backward + clip + AdamW")
    print(f"parameter match (whole agent, K={args.k}) to {REFERENCE[0]} d_model={REFERENCE[1]}: "
          + ", ".join(f"{b} d={widths[b][0]} {widths[b][1]:,}" for b in backbones))

    if args.rounds < 1:
        ap.error(f"--rounds takes a count of at least 1, got {args.rounds}")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or set(precisions) - {"fp32", "bf16"}:
        ap.error(f"--precisions takes fp32 and/or bf16, got {args.precisions!r}")
    every = {"segment": ("segment", args.k, args.k_batch),
             "stacked": ("stacked", args.k, args.k_batch),
             "episode": ("episode", args.episode_len, args.episode_batch)}
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not names or set(names) - set(every):
        ap.error(f"--cases takes segment, stacked and/or episode, got {args.cases!r}")
    cases = [every[c] for c in names]
    variants = ([(p, False, False) for p in precisions]
                + ([(p, True, False) for p in precisions] if args.compile else [])
                + ([(p, False, True) for p in precisions] if args.fast_dropout else []))
    timed = []
    for round_, mode, length, batch, (precision, compiled, fast_dropout) in [
            (r, *case, v) for r in range(args.rounds) for case in cases
            for v in (variants if r % 2 == 0 else variants[::-1])]:
        for bb in backbones:
            spec = {"backbone": bb, "d_model": widths[bb][0], "mode": mode, "length": length,
                    "batch": batch, "threads": args.threads, "device": args.device,
                    "precision": precision, "compiled": compiled,
                    "fast_dropout": fast_dropout, "seconds": args.seconds,
                    "min_steps": args.min_steps, "warmup": args.warmup}
            row = {**run_case_isolated(spec, args.case_timeout), "round": round_}
            timed.append(row)
            status = (f"{row['steps_per_s']:.2f} steps/s" if row["status"] == "ok"
                      else row["status"])
            print(f"  {mode:7s} L={length:<5d} B={batch:<3d} {_variant(row)} "
                  f"{bb:12s} {status}", flush=True)

    rows = _medians(timed)
    # ratios side by side in this run: to the transformer (same variant), and to eager fp32
    for r in rows:
        same = [o for o in rows if o["mode"] == r["mode"] and o["status"] == "ok"]
        ref = next((o for o in same if o["backbone"] == "transformer" and _variant(o) == _variant(r)), None)
        fp32 = next((o for o in same if o["backbone"] == r["backbone"] and _variant(o) == "fp32"), None)
        if r["status"] == "ok" and ref:
            r["speed_vs_transformer"] = r["steps_per_s"] / ref["steps_per_s"]
        if r["status"] == "ok" and fp32:
            r["speed_vs_fp32"] = r["steps_per_s"] / fp32["steps_per_s"]

    print("\n| case | precision | backbone | d_model | params | steps/s | sequences/s | timesteps/s "
          "| ms/step | CPU ms/step | warm-up s | peak RSS MB | x transformer | x eager fp32 |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        case = f"{r['mode']} L={r['length']} B={r['batch']}"
        precision = _variant(r)
        if r["status"] != "ok":
            print(f"| {case} | {precision} | {r['backbone']} | {r['d_model']} | - | "
                  f"{r['status']} | | | | | | | | |")
            continue
        ratio, vs32 = r.get("speed_vs_transformer"), r.get("speed_vs_fp32")
        print(f"| {case} | {precision} | {r['backbone']} | {r['d_model']} | {r['params']:,} | "
              f"{r['steps_per_s']:.2f} | {r['sequences_per_s']:.1f} | {r['timesteps_per_s']:,.0f} | "
              f"{r['ms_per_step']:.0f} | {r['cpu_ms_per_step']:.0f} | {r['warmup_s']:.1f} | "
              f"{r['peak_rss_mb'] or float('nan'):.0f} | "
              + (f"{ratio:.2f}" if ratio else "-") + " | " + (f"{vs32:.2f}" if vs32 else "-") + " |")

    result = {"benchmark": "train", "machine": info, "threads": args.threads,
              "device": args.device, "quick": args.quick,
              "configs": "configs/protocols/dt.yaml + configs/backbones/<name>.yaml",
              "reference": {"backbone": REFERENCE[0], "d_model": REFERENCE[1]},
              "widths": {b: {"d_model": d, "params": p} for b, (d, p) in widths.items()},
              "rounds": args.rounds, "rows": rows, "timed": timed}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
