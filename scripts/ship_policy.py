"""Copy one actor snapshot of a SAC run into envs/policies/ as a task's medium or expert policy.

    python scripts/ship_policy.py /work/sac/halfcheetah 120000 expert \\
        --selection "expert = the last checkpoint of the 120k-step run, 5316 over 20 episodes"

The snapshot's metadata gains the level, its return over 20 stochastic episodes (seed 123, the
return the dataset builder reads as ref_max for an expert), how it was trained and why it was
picked; the weights are unchanged.
"""
import argparse
import json
from pathlib import Path

from envs.behaviour import load_actor, save_actor
from envs.sac import evaluate_actor

EPISODES, SEED = 20, 123


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("step", type=int)
    p.add_argument("level", choices=["medium", "expert"])
    p.add_argument("--selection", required=True, help="why this snapshot (kept in its metadata)")
    p.add_argument("--out", help="default: envs/policies/<task>-<level>.pt")
    args = p.parse_args()
    run = Path(args.run_dir)
    actor, meta = load_actor(run / f"actor_{args.step}.pt")
    mean, std = evaluate_actor(actor, meta["env_id"], EPISODES, seed=SEED, deterministic=False)
    task = meta["env_id"].split("-")[0].lower()
    steps = max(json.loads(line)["step"] for line in (run / "curve.jsonl").open())
    meta = {**meta, "level": args.level, "return_stochastic": mean, "return_stochastic_std": std,
            "return_episodes": EPISODES, "return_eval_seed": SEED, "selection": args.selection,
            "training": (f"stable-baselines3 SAC, actor {meta['hidden']}, critics "
                         f"{meta.get('critic_hidden', meta['hidden'])}, learning_starts "
                         f"{meta.get('learning_starts')}, otherwise SB3 defaults (lr 3e-4, batch "
                         f"256, buffer 1M, auto entropy), seed {meta['seed']}, 1 CPU thread; "
                         f"scripts/train_behaviour.py {meta['env_id']} (run of {steps} steps, "
                         f"eval every 10k)")}
    out = Path(args.out or Path(__file__).resolve().parent.parent / "envs" / "policies"
               / f"{task}-{args.level}.pt")
    save_actor(actor, out, meta)
    print(f"{out}: {args.level}, SAC step {args.step}, return {mean:.1f} ± {std:.1f} "
          f"({EPISODES} stochastic episodes, seed {SEED})")


if __name__ == "__main__":
    main()
