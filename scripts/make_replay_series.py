"""Pick a few actor snapshots of a SAC run as the offline source of its medium-replay dataset.

    python scripts/make_replay_series.py /work/sac/walker2d --medium-step 150000 \
        --out envs/policies/walker2d-replay

RUN_DIR is a run of scripts/train_behaviour.py (actor_<step>.pt every --eval-every steps and
curve.jsonl); --medium-step is the SAC step of the medium policy (its actor_<step>.pt). Writes
OUT/manifest.json and copies of the chosen snapshots (~25 KB each) and of curve.jsonl; then
`rlmin data build <task> medium-replay` rolls them out offline (envs/builder.py says how, and how
that differs from D4RL's medium-replay). No stable-baselines3 needed.
"""
import argparse
import sys

from envs.builder import make_replay_series


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--medium-step", type=int, required=True, help="SAC step of the medium policy")
    p.add_argument("--out", required=True, help="e.g. envs/policies/<task>-replay")
    p.add_argument("--snapshots", type=int, default=8, help="how many snapshots to keep")
    p.add_argument("--learning-starts", type=int, default=None,
                   help="SAC's random-action steps (default: from the actors' metadata)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = p.parse_args()
    try:
        manifest = make_replay_series(args.run_dir, args.medium_step, args.out,
                                      n_snapshots=args.snapshots,
                                      learning_starts=args.learning_starts,
                                      overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/manifest.json ({manifest['env_id']}, {manifest['steps']} steps, "
          f"{manifest['episodes']} episodes up to the medium step):")
    for e in manifest["snapshots"]:
        share = "" if e["episode_share"] is None else f", {e['episode_share']:.1%} of the episodes"
        print(f"  {e['file'] or 'uniform random':>16}  steps {e['from_step']}-{e['to_step']} "
              f"({e['step_share']:.1%} of the steps{share})")
    print("then: rlmin data build <task> medium-replay (with --policies-dir if --out is not in "
          "envs/policies)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
