"""Sampled timesteps per second of rlmin's SegmentSampler (CPU, numpy).

    python scripts/bench_sampler.py                      # synthetic 1M-step Hopper-sized data
    python scripts/bench_sampler.py --dataset shared/hopper/medium-v0 --out bench.json

Cases: K=20 segments with batch 256 (Decision Transformer's setting), and whole episodes
(up to 1000 steps, batch 16). "real" counts steps under the mask, "padded" every position
of the batch. The target is >= 200k sampled timesteps/s. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rlmin.data import EpisodeData, SegmentSampler, from_minari
from rlmin.machine import machine_line

TARGET = 200_000


def synthetic(n_steps: int, obs_dim: int, act_dim: int, seed: int = 0) -> EpisodeData:
    """Random episodes of 1..1000 steps adding up to ``n_steps``, Hopper-sized by default."""
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < n_steps:
        lengths.append(int(rng.integers(1, 1001)))
    lengths[-1] -= sum(lengths) - n_steps
    episodes = ({"observations": rng.standard_normal((T + 1, obs_dim)),
                 "actions": rng.uniform(-1, 1, (T, act_dim)), "rewards": rng.random(T),
                 "terminations": np.r_[np.zeros(T - 1, bool), True],
                 "truncations": np.zeros(T, bool)} for T in lengths if T > 0)
    return EpisodeData.from_episodes(episodes, {"dataset_id": f"synthetic-{n_steps}"})


def bench(sampler: SegmentSampler, seconds: float) -> dict:
    sampler.sample()  # warm-up
    batches = real = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or batches < 3:
        batch = sampler.sample()
        real += int(batch["mask"].sum())
        batches += 1
    padded = batches * sampler.timesteps_per_batch
    return {"mode": sampler.mode, "seq_len": sampler.seq_len, "batch_size": sampler.batch_size,
            "batches": batches, "seconds": elapsed, "batches_per_s": batches / elapsed,
            "real_timesteps_per_s": real / elapsed, "padded_timesteps_per_s": padded / elapsed}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", help="a Minari id or path (default: synthetic data)")
    ap.add_argument("--steps", type=int, default=1_000_000, help="synthetic dataset size")
    ap.add_argument("--obs-dim", type=int, default=11)
    ap.add_argument("--act-dim", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="time per case")
    ap.add_argument("--out", default="runs/bench/sampler.json")
    args = ap.parse_args(argv)

    data = from_minari(args.dataset) if args.dataset else synthetic(args.steps, args.obs_dim,
                                                                    args.act_dim)
    cases = [SegmentSampler(data, 20, 256, mode="segment", seed=0),
             SegmentSampler(data, 1000, 16, mode="episode", seed=0)]
    rows = [bench(s, args.seconds) for s in cases]
    result = {"machine": machine_line(), "dataset": data.dataset_id, "steps": data.num_steps,
              "episodes": data.num_episodes, "obs_dim": data.obs_dim, "act_dim": data.act_dim,
              "target_timesteps_per_s": TARGET, "cases": rows}

    print(result['machine'])
    print(f"data: {data.dataset_id}, {data.num_steps} steps, {data.num_episodes} episodes, "
          f"obs {data.obs_dim}, act {data.act_dim}")
    print(f"{'mode':<8} {'L':>5} {'B':>4} {'batches/s':>10} {'real steps/s':>14} "
          f"{'padded steps/s':>15} {'>= 200k':>8}")
    for r in rows:
        print(f"{r['mode']:<8} {r['seq_len']:>5} {r['batch_size']:>4} {r['batches_per_s']:>10.1f} "
              f"{r['real_timesteps_per_s']:>14,.0f} {r['padded_timesteps_per_s']:>15,.0f} "
              f"{'yes' if r['real_timesteps_per_s'] >= TARGET else 'NO':>8}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
