"""The ``rlmin`` command line (argparse: the standard library's, stable and dependency-free).

    rlmin train CONFIG [CONFIG ...] [key=value ...]     train a run (configs merge left to right)
    rlmin train --resume RUN_DIR                          continue an interrupted run
    rlmin eval CHECKPOINT [--episodes N] [--mode carry|window] [--max-episode-steps N]
    rlmin data build ENV LEVEL [--steps N]                build a D4RL-style Minari dataset locally
    rlmin data list                                       local datasets with steps and scores
    rlmin export CHECKPOINT OUT                           a self-contained policy file
    rlmin quickstart [key=value ...]                      the README's main job
    rlmin repro run --preset small|full --out DIR          multi-seed grid (rlmin repro run -h)
    rlmin repro report DIR                                report.md + scores.png + curves.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlmin.cpu import tune_cpu_allocator

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
        for f in files:
            if not Path(f).exists() and not f.endswith((".yaml", ".yml")):
                from rlmin.config import ConfigError
                raise ConfigError(f"{f!r} is neither a config file nor a key=value override "
                                  f"(e.g. {f}=VALUE)")
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
    behaviour = res["dataset"]["behaviour_normalized"]
    scores = ", ".join(f"target {t}: {r['normalized_mean']:.1f}"
                       for t, r in res["last_iterate"]["targets"].items())
    print(f"\nminGRU agent, last iterate, normalised score per target return: {scores}\n"
          f"behaviour policy of the dataset: {behaviour:.1f}; random policy: 0")
    print(f"TensorBoard logs: tensorboard --logdir {result.run_dir / 'tb'}")
    print(f"results.json:     {result.run_dir / 'results.json'}")
    return 0


def cmd_eval(args) -> int:
    from rlmin.policy import evaluate_checkpoint

    res = evaluate_checkpoint(args.checkpoint, episodes=args.episodes, mode=args.mode,
                              target_returns=args.targets, seed=args.seed, n_envs=args.n_envs,
                              max_episode_steps=args.max_episode_steps)
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


def cmd_repro(args) -> int:
    from rlmin.repro import run_command

    return run_command(args)


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
    p.add_argument("--max-episode-steps", type=int, default=None,
                   help="episode time limit (default: the task's)")
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

    from rlmin.repro import add_arguments as add_repro_arguments  # light: argparse only

    p = sub.add_parser("repro", help="multi-seed reproduction grids and their report",
                       description="Run a datasets x backbones x seeds grid, resumable and "
                                   "shardable (--shard i/n), and report it (rlmin.repro).")
    add_repro_arguments(p)
    p.set_defaults(func=cmd_repro)
    return parser


def _user_error(e: BaseException) -> tuple[int, str] | None:
    """(exit status, prefix) for errors a user can fix; None for anything else (a bug)."""
    from rlmin.config import ConfigError

    if isinstance(e, ConfigError):
        return 2, "config error"
    from rlmin.checkpoint import CheckpointError
    from rlmin.data.episodes import DataError
    from rlmin.data.minari_io import DatasetNotFoundError
    from rlmin.registry import RegistryError
    from rlmin.train import TrainingError

    if isinstance(e, (DatasetNotFoundError, DataError, CheckpointError, TrainingError,
                      RegistryError)):
        return 1, "error"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status.

    Errors a user can fix are printed as ``config error: ...`` (status 2: a bad config) or
    ``error: ...`` (status 1: a missing or unusable dataset, an unloadable checkpoint, a training
    run that had to stop), without a traceback; anything else keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    tune_cpu_allocator()  # large CPU tensors: no fresh mmap + page faults per step (rlmin/cpu.py)
    try:
        return args.func(args)
    except Exception as e:
        known = _user_error(e)
        if known is None:
            raise
        print(f"{known[1]}: {e}", file=sys.stderr)
        return known[0]


if __name__ == "__main__":
    sys.exit(main())
