"""The ``rlmin`` command line (argparse: the standard library's, stable and dependency-free).

    rlmin train CONFIG [CONFIG ...] [key=value ...]     train a run (configs merge left to right)
    rlmin train --resume RUN_DIR                          continue an interrupted run
    rlmin eval CHECKPOINT [--episodes N] [--mode carry|window]
    rlmin data build ENV LEVEL [--steps N]                build a D4RL-style Minari dataset locally
    rlmin data list                                       local datasets with steps and scores
    rlmin export CHECKPOINT OUT                           a self-contained policy file
    rlmin quickstart [key=value ...]                      the README's main job
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

QUICKSTART_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    files = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    return files, overrides


def cmd_train(args) -> int:
    from rlmin.config import load_config
    from rlmin.train import train

    if args.resume:
        if args.items:
            print("--resume takes no config files or overrides: the run's own config is used.",
                  file=sys.stderr)
            return 2
        result = train(resume=args.resume)
    else:
        files, overrides = _split_overrides(args.items)
        if not files:
            print("rlmin train needs a config file, e.g. rlmin train configs/tasks/hopper-medium.yaml "
                  "configs/backbones/mingru.yaml", file=sys.stderr)
            return 2
        result = train(load_config(files, overrides))
    if result.results:
        print_results(result.results)
        print(f"results: {result.run_dir / 'results.json'}")
    return 0


def cmd_quickstart(args) -> int:
    from rlmin.config import load_config
    from rlmin.train import train

    cfg = load_config([QUICKSTART_CONFIG], args.overrides)
    result = train(cfg)
    res = result.results
    print_results(res)
    behaviour = res["dataset"].get("behaviour_normalized")
    best = max(r["normalized_mean"] for r in res["last_iterate"]["targets"].values())
    print(f"\nminGRU agent, last iterate: normalised score {best:.1f} "
          f"(behaviour policy in the dataset: {behaviour:.1f}; random policy: 0)")
    print(f"TensorBoard logs: tensorboard --logdir {result.run_dir / 'tb'}")
    print(f"results.json:     {result.run_dir / 'results.json'}")
    return 0


def cmd_eval(args) -> int:
    from rlmin.policy import evaluate_checkpoint

    res = evaluate_checkpoint(args.checkpoint, episodes=args.episodes, mode=args.mode,
                              target_returns=args.targets, seed=args.seed, n_envs=args.n_envs)
    print_results(res)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".eval.json")
    out.write_text(json.dumps(res, indent=2, default=float))
    print(f"results: {out}")
    return 0


def cmd_export(args) -> int:
    from rlmin.policy import export_policy

    path = export_policy(args.checkpoint, args.out)
    print(f"exported policy: {path}\nload it with: rlmin.policy.Policy.load({str(path)!r})")
    return 0


def cmd_data_build(args) -> int:
    from rlmin.registry import load_builder

    build = load_builder()
    dataset_id = build(args.env, args.level, n_steps=args.steps, policy_path=args.policy,
                       sac_run_dir=args.sac_run, seed=args.seed, overwrite=args.overwrite)
    print(f"built {dataset_id}")
    return 0


def cmd_data_list(args) -> int:
    from rlmin.registry import load_dataset_lister

    rows = load_dataset_lister()()
    if not rows:
        print("no local Minari datasets (MINARI_DATASETS_PATH or ~/.minari/datasets)")
        return 0
    cols = ["id", "steps", "episodes", "behaviour_return", "ref_min", "ref_max"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    return 0


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return "-" if value is None else str(value)


def print_results(res: dict) -> None:
    from rlmin.evaluate import format_results_table

    body = res.get("last_iterate", res)
    print(format_results_table(body))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlmin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a run from YAML configs and key=value overrides")
    p.add_argument("items", nargs="*", help="config files, then key=value overrides")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("quickstart", help="train and evaluate a minGRU agent on hopper-medium")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("eval", help="evaluate a checkpoint in its environment")
    p.add_argument("checkpoint")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--mode", choices=["carry", "window"], default=None)
    p.add_argument("--targets", type=float, nargs="+", default=None)
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--n-envs", type=int, default=None)
    p.add_argument("--out", default=None, help="results JSON (default: next to the checkpoint)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a self-contained policy (no dataset needed)")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.set_defaults(func=cmd_export)

    data = sub.add_parser("data", help="local Minari datasets").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("build", help="build a D4RL-style dataset into MINARI_DATASETS_PATH")
    p.add_argument("env", help="hopper | halfcheetah | walker2d")
    p.add_argument("level", help="random | medium | medium-replay | expert | medium-expert")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--policy", default=None, help="exported behaviour actor (.pt)")
    p.add_argument("--sac-run", default=None, help="SAC run dir (for medium-replay)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_data_build)
    p = data.add_parser("list", help="list local datasets")
    p.set_defaults(func=cmd_data_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rlmin.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
