"""Where one training step's time goes: torch's profiler over the trainer's own step.

    python scripts/profile_step.py                      # minGRU, DT widths, K=20, batch 64
    python scripts/profile_step.py --backbone transformer --threads 2 --steps 10

One step = ``agent.loss(batch)`` + ``rlmin.train.optimizer_step`` (what ``rlmin train`` runs),
on the synthetic batch of scripts/bench_train.py. Printed: the forward time of each top-level
part of the agent (module hooks: embeddings, the backbone's blocks, the head), then torch's
operator table (self CPU time, forward and backward together), then the optimizer's share.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from bench_common import build_agent, synthetic_batch
from torch.profiler import ProfilerActivity, profile, record_function

from rlmin.machine import machine_info, machine_line
from rlmin.nn.dropout import use_fast_dropout
from rlmin.train import build_optimizer, build_scheduler, optimizer_step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mingru")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rows", type=int, default=15, help="operator rows shown")
    ap.add_argument("--fast-dropout", action="store_true", help="train.fast_dropout's masks")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    agent, cfg = build_agent(args.backbone, args.d_model, args.k)
    agent.train()
    if args.fast_dropout:
        use_fast_dropout(agent)  # as the trainer does with train.fast_dropout
    opt = build_optimizer(agent, cfg.train)
    sched = build_scheduler(opt, cfg.train.warmup_steps)
    batch = synthetic_batch(args.batch, args.k)

    forward_s: dict[str, float] = defaultdict(float)
    started: dict[str, float] = {}
    for name, module in agent.named_children():  # the agent's top-level parts
        module.register_forward_pre_hook(lambda m, i, n=name: started.__setitem__(n, time.perf_counter()))
        module.register_forward_hook(lambda m, i, o, n=name: forward_s.__setitem__(
            n, forward_s[n] + time.perf_counter() - started[n]))

    def step():
        with record_function("loss (forward)"):
            loss, _ = agent.loss(batch)
        with record_function("backward + clip + AdamW"):
            optimizer_step(agent, loss, opt, sched, cfg.train.grad_clip)

    for _ in range(3):
        step()
    forward_s.clear()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    total = (time.perf_counter() - start) / args.steps
    print(machine_line(machine_info()))
    print(f"{args.backbone} d_model {args.d_model}, K={args.k}, batch {args.batch}, {args.threads} "
          f"thread(s): {1e3 * total:.0f} ms a step under the profiler ({args.steps} steps)\n")
    print("| part of the agent (forward only) | ms a step | share of the step |\n|---|---:|---:|")
    for name, seconds in sorted(forward_s.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {1e3 * seconds / args.steps:.1f} | {seconds / args.steps / total:.0%} |")
    print()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
