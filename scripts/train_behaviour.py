"""Train (or resume) a SAC behaviour policy with stable-baselines3, for `rlmin data build`.

    pip install -e ".[behaviour]"
    python scripts/train_behaviour.py Hopper-v5 runs/sac/hopper --steps 150000

Run it again with the same run dir to continue (model and replay buffer are checkpointed every
--eval-every steps). Each evaluation appends to RUN_DIR/curve.jsonl and exports
RUN_DIR/actor_<step>.pt (usable without stable-baselines3). Then pick the checkpoints:

    rlmin data build hopper medium --policy RUN_DIR/actor_80000.pt
    rlmin data build hopper medium-replay --sac-run RUN_DIR --steps 80000

The shipped envs/policies/hopper-{medium,expert}.pt came from this script (their metadata says
how); see README.md.
"""
import argparse

import torch

from envs.sac import train_sac


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("env_id", help="Gymnasium id, e.g. Hopper-v5")
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=150_000, help="total environment steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=5000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--critic-hidden", type=int, nargs="+", default=None,
                   help="Q-network widths (default: --hidden)")
    p.add_argument("--learning-starts", type=int, default=100,
                   help="random-action steps before SAC updates (SB3's default 100)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train_sac(args.env_id, args.run_dir, args.steps, seed=args.seed, eval_every=args.eval_every,
              eval_episodes=args.eval_episodes, hidden=tuple(args.hidden),
              critic_hidden=args.critic_hidden, learning_starts=args.learning_starts)


if __name__ == "__main__":
    main()
