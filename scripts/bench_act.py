"""Acting latency per environment step (16 envs at once) of the decision agent, per backbone.

    python scripts/bench_act.py                 # 30 timed calls at t=10 and at t=900
    python scripts/bench_act.py --quick         # 5 timed calls each
    python scripts/bench_act.py --threads 2 --envs 16 --out runs/bench/act.json

For each backbone (mingru, minlstm, transformer, gru, lstm, at the parameter-matched widths of
``bench_train.py``; 3 layers, interleaved tokens, K=20) and each acting mode it supports:

* ``carry``: the backbone state is carried; every ``act`` feeds only the new tokens through
  ``backbone.step`` (recurrent backbones only).
* ``window``: every ``act`` re-runs the backbone over the last K=20 steps (3K = 60 tokens), as the
  Decision Transformer acts (every backbone).

The agent (eval mode, no grad, as the evaluator runs it) is advanced to step t of an episode
with ``act`` calls on random observations, then ``--calls`` more calls are timed; this is done
at t=10 and t=900 in one pass per (backbone, mode). One call = one step of all ``--envs`` envs;
the table gives ms per call. The target: carry-mode minGRU at least 5x faster per step than the
transformer's K=20 window, at both t (ratios measured side by side in this run). Torch runs
with 1 thread unless ``--threads``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import BACKBONES, OBS_DIM, build_agent, matched_widths, parse_backbones  # noqa: E402
from rlmin.cpu import tune_cpu_allocator  # noqa: E402
from rlmin.machine import machine_info, machine_line  # noqa: E402

TARGET_SPEEDUP = 5.0
RECURRENT = {"mingru", "minlstm", "gru", "lstm"}


def bench_backbone(backbone: str, d_model: int, mode: str, n_envs: int, at: list[int],
                   calls: int, seed: int = 0) -> list[dict]:
    import numpy as np
    import torch

    torch.manual_seed(seed)
    agent = build_agent(backbone, d_model, context_steps=20)
    agent.act_mode = mode
    agent.eval()
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((calls + max(at) + 1, n_envs, OBS_DIM)).astype(np.float32)
    rewards = rng.random((calls + max(at) + 1, n_envs)).astype(np.float32)
    rows = []
    with torch.no_grad():
        state = agent.reset(n_envs, 3600.0)
        t = 0
        for target_t in sorted(at):
            while t < target_t:  # advance the episode to step target_t
                _, state = agent.act(obs[t], None if t == 0 else rewards[t], state)
                t += 1
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                _, state = agent.act(obs[t], rewards[t], state)
                times.append(time.perf_counter() - start)
                t += 1
            rows.append({"backbone": backbone, "d_model": d_model, "mode": mode, "t": target_t,
                         "n_envs": n_envs, "calls": calls,
                         "ms_per_call": 1e3 * statistics.median(times),
                         "ms_per_call_mean": 1e3 * statistics.mean(times),
                         "ms_per_call_min": 1e3 * min(times)})
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--at", default="10,900", help="episode steps t to time at")
    ap.add_argument("--calls", type=int, default=30, help="timed act calls at each t")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="5 timed calls at each t")
    ap.add_argument("--out", default="runs/bench/act.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.calls = min(args.calls, 5)

    import torch

    tune_cpu_allocator()  # as `rlmin eval` does (rlmin/cpu.py)
    torch.set_num_threads(args.threads)
    info = machine_info()
    backbones = parse_backbones(ap, args.backbones)
    at = [int(t) for t in args.at.split(",")]
    widths = matched_widths(sorted(set(backbones) | {"mingru"}))
    print(machine_line(info))
    print(f"threads {args.threads} | {args.envs} envs per call | K=20, 3 layers, interleaved tokens "
          f"| median of {args.calls} calls after advancing to t")

    rows = []
    for bb in backbones:
        for mode in (("carry", "window") if bb in RECURRENT else ("window",)):
            for r in bench_backbone(bb, widths[bb][0], mode, args.envs, at, args.calls):
                rows.append(r)
                print(f"  {bb:12s} {mode:7s} t={r['t']:<4d} {r['ms_per_call']:8.2f} ms/call",
                      flush=True)

    ref = {r["t"]: r["ms_per_call"] for r in rows
           if r["backbone"] == "transformer" and r["mode"] == "window"}
    for r in rows:
        if r["t"] in ref:
            r["speedup_vs_transformer_window"] = ref[r["t"]] / r["ms_per_call"]

    print("\n| backbone | d_model | mode | " + " | ".join(f"ms/call t={t}" for t in at)
          + " | " + " | ".join(f"x transformer t={t}" for t in at) + " |")
    print("|---|---:|---|" + "---:|" * (2 * len(at)))
    keys = sorted({(r["backbone"], r["mode"]) for r in rows},
                  key=lambda k: (backbones.index(k[0]), k[1]))
    for bb, mode in keys:
        sel = {r["t"]: r for r in rows if r["backbone"] == bb and r["mode"] == mode}
        ms = " | ".join(f"{sel[t]['ms_per_call']:.2f}" for t in at)
        sp = " | ".join(f"{sel[t].get('speedup_vs_transformer_window', float('nan')):.1f}x"
                        for t in at)
        print(f"| {bb} | {widths[bb][0]} | {mode} | {ms} | {sp} |")

    checks = {}
    for t in at:
        row = next((r for r in rows if r["backbone"] == "mingru" and r["mode"] == "carry"
                    and r["t"] == t), None)
        if row and "speedup_vs_transformer_window" in row:
            s = row["speedup_vs_transformer_window"]
            checks[str(t)] = {"speedup": s, "target": TARGET_SPEEDUP, "met": s >= TARGET_SPEEDUP}
            print(f"target: carry minGRU >= {TARGET_SPEEDUP:g}x the transformer's window at t={t}: "
                  f"{s:.1f}x {'met' if s >= TARGET_SPEEDUP else 'NOT met'}")

    result = {"benchmark": "act", "machine": info, "threads": args.threads, "n_envs": args.envs,
              "at": at, "calls": args.calls, "quick": args.quick,
              "widths": {b: {"d_model": d, "params": p} for b, (d, p) in widths.items()},
              "rows": rows, "target_check": checks}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
