"""The ``rlmin`` command line (argparse: the standard library's, stable and dependency-free).

    rlmin train CONFIG [CONFIG ...] [key=value ...]     train a run (configs merge left to right)
    rlmin train --resume RUN_DIR [train.steps=N ...]     continue (or extend) a run
    rlmin eval CKPT|RUN_DIR [--episodes N] [--mode M] [--out F] [--overwrite] [--video F.mp4]
    rlmin export CKPT|RUN_DIR OUT.pt|OUT.onnx [--overwrite]  a self-contained policy file
    rlmin data build TASK LEVEL [--steps N] [--policy P] [--sac-run DIR] [--overwrite]
    rlmin data list                                       local datasets with status and scores
    rlmin configs | rlmin runs [DIR] | rlmin --version
    rlmin quickstart [key=value ...]                      the README's main job
    rlmin repro run --grid small|suite|full --out DIR     multi-seed grid (rlmin repro run -h)
    rlmin repro report DIR                                report.md + scores.png + curves.png
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from rlmin.cpu import tune_cpu_allocator
from rlmin.errors import UsageError, UserError
from rlmin.paths import CONFIG_ROOT

QUICKSTART_CONFIG = CONFIG_ROOT / "quickstart.yaml"


def find_config(name: str) -> Path:
    """A config path as given, else the same path inside the shipped configs (from any cwd)."""
    path = Path(name)
    if path.exists() or path.is_absolute():
        return path
    shipped = CONFIG_ROOT / (path.relative_to("configs") if path.parts[0] == "configs" else path)
    return shipped if shipped.exists() else path


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    files = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    return files, overrides


def cmd_train(args) -> int:
    from rlmin.config import ConfigError, load_config
    from rlmin.train import train

    files, overrides = _split_overrides(args.items)
    if args.resume:
        if files:
            raise ConfigError("--resume takes no config files: the run's own config is used "
                              "(key=value overrides such as train.steps=N extend it)")
        result = train(resume=args.resume, overrides=overrides)
    else:
        for f in files:
            if not Path(f).exists() and not f.endswith((".yaml", ".yml")):
                raise ConfigError(f"{f!r} is neither a config file nor a key=value override "
                                  f"(e.g. {f}=VALUE)")
        if not files:
            raise ConfigError("rlmin train needs a config file, e.g. rlmin train "
                              "configs/tasks/hopper-medium.yaml configs/backbones/mingru.yaml")
        result = train(load_config([find_config(f) for f in files], overrides))
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
    from rlmin.evaluate import EvalUsageError, evaluate_checkpoint

    if args.episodes < 1 or (args.n_envs is not None and args.n_envs < 1):
        raise UsageError("--episodes and --n-envs must be >= 1")
    if args.targets and not all(math.isfinite(t) and t >= 0 for t in args.targets):
        raise UsageError(f"--targets must be finite returns >= 0, got {args.targets}")
    out = Path(args.out) if args.out else _default_eval_path(Path(args.checkpoint), args)
    check_output(out, overwrite=args.overwrite, may_create=not args.out,
                 source=Path(args.checkpoint))
    video = Path(args.video) if args.video else None
    if video is not None:
        from rlmin.video import VideoError, check_video_path

        try:
            check_video_path(video)
        except VideoError as e:
            raise UsageError(str(e)) from None
        check_output(video, overwrite=args.overwrite, flag="--video",
                     source=Path(args.checkpoint))
    try:
        res = evaluate_checkpoint(args.checkpoint, episodes=args.episodes, mode=args.mode,
                                  target_returns=args.targets, seed=args.seed,
                                  n_envs=args.n_envs, max_episode_steps=args.max_episode_steps)
    except EvalUsageError as e:  # e.g. --mode carry on a transformer
        raise UsageError(str(e)) from None
    print_results(res)
    from rlmin.checkpoint import atomic_write_bytes

    out.parent.mkdir(exist_ok=True)  # a run dir's eval/ folder (checked above)
    atomic_write_bytes(out, lambda f: f.write(json.dumps(res, indent=2, default=float).encode()))
    print(f"results: {out}")
    if video is not None:
        print(f"video: {record_video(args, video, res)}")
    return 0


def record_video(args, video: Path, res: dict) -> str:
    """The evaluation's first episode at its first target, replayed into ``video``."""
    from rlmin.evaluate import episode_seed, load_actor
    from rlmin.video import record_episode

    agent, spec, _, _ = load_actor(args.checkpoint, args.mode)
    target = next(iter(res["targets"].values()))["target_return"]
    with agent.acting(args.mode):
        made = record_episode(agent, spec, video, target_return=target,
                              seed=episode_seed(args.seed, 0),
                              max_episode_steps=args.max_episode_steps)
    return (f"{made['path']} ({made['length']} steps, return {made['return']:.1f}, target "
            f"{target:g}, {made['frames']} frames at {made['fps']:.0f} fps)")


def _default_eval_path(checkpoint: Path, args) -> Path:
    """One file per evaluation setting, next to the checkpoint; for a run dir or one of its
    checkpoints, in the run dir's ``eval/`` (only the trainer writes in ``checkpoints/``)."""
    in_run = checkpoint.parent.name == "checkpoints" and checkpoint.parent.parent.is_dir()
    base = (checkpoint / "eval" if checkpoint.is_dir()
            else checkpoint.parent.parent / "eval" if in_run else checkpoint.parent)
    stem = "latest" if checkpoint.is_dir() else checkpoint.stem
    mode = args.mode or "default"
    return base / f"{stem}.{mode}.seed{args.seed}.ep{args.episodes}.eval.json"


def check_output(out: Path, overwrite: bool = False, may_create: bool = False,
                 flag: str = "--out", source: Path | None = None) -> None:
    """Before any work: ``out`` may be written (``rlmin.rundir.check_output``, the one check every
    writer makes: no run's own files, nothing existing without ``--overwrite``)."""
    from rlmin.rundir import check_output as check

    check(out, overwrite=overwrite, may_create=may_create, flag=flag, source=source)


def cmd_export(args) -> int:
    from rlmin.policy import export_policy

    onnx = Path(args.out).suffix == ".onnx"
    if args.quantize and not onnx:
        raise UsageError(f"--quantize {args.quantize} applies to ONNX policies: name the output "
                         f"policy.onnx (a .pt policy keeps the checkpoint's float weights)")
    check_output(Path(args.out), overwrite=args.overwrite, flag="output",  # before loading anything
                 source=Path(args.checkpoint))
    if onnx:  # one carry step as an ONNX graph (rlmin/onnx_export.py)
        from rlmin.onnx_export import export_onnx
        path = export_onnx(args.checkpoint, args.out, quantize=args.quantize,
                           overwrite=args.overwrite)
    else:
        path = export_policy(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"exported policy: {path}\nload it with: rlmin.policy.Policy.load({str(path)!r})")
    return 0


def cmd_data_build(args) -> int:
    from rlmin.data.minari_io import BuildLockedError, describe_dataset, load_minari, reference_note
    from rlmin.registry import RegistryError, load_builder

    if args.steps is not None and args.steps <= 0:
        raise UsageError(f"--steps must be a positive number of steps, got {args.steps}")
    build = load_builder()
    extra = {"policies_dir": args.policies_dir} if args.policies_dir else {}  # envs.builder's
    try:
        dataset_id = build(args.env, args.level, n_steps=args.steps, policy_path=args.policy,
                           sac_run_dir=args.sac_run, seed=args.seed, overwrite=args.overwrite,
                           **extra)
    except (FileExistsError, RegistryError, ValueError) as e:  # existing, unknown task/level...
        raise UsageError(str(e)) from e
    except BuildLockedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    row = describe_dataset(load_minari(dataset_id))
    print(f"built {dataset_id} at {row['path']}: {row['steps']:,} steps, {row['episodes']:,} "
          f"episodes, behaviour return {_fmt(row['behaviour_return'])} ± "
          f"{_fmt(row['behaviour_std'])}")
    print(reference_note(row))
    return 0


def cmd_data_list(args) -> int:
    from rlmin.data.minari_io import list_local

    rows = list_local()
    if not rows:
        print("no local Minari datasets (MINARI_DATASETS_PATH or ~/.minari/datasets)")
        return 0
    cols = ["id", "status", "steps", "episodes", "behaviour_return", "behaviour_std", "ref_min",
            "ref_max", "normalised", "build_seconds"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    print("normalised = 100 * (behaviour_return - ref_min) / (ref_max - ref_min), each row with "
          "its own ref_min/ref_max (from its metadata; `rlmin data build` prints where they "
          "came from)")
    return 0


def cmd_repro(args) -> int:
    from rlmin.grid import run_command

    return run_command(args)


def cmd_configs(args) -> int:
    """The shipped configs, by folder, as paths `rlmin train` accepts from any directory."""
    for folder in sorted(p for p in CONFIG_ROOT.iterdir() if p.is_dir()):
        names = " ".join(f.stem for f in sorted(folder.glob("*.yaml")))
        print(f"configs/{folder.name}/: {names}")
    print(f"configs/quickstart.yaml\n(shipped in {CONFIG_ROOT})")
    return 0


def cmd_runs(args) -> int:
    from rlmin.runs import list_runs

    rows = list_runs(Path(args.dir))
    if not rows:
        print(f"no runs under {args.dir}")
        return 0
    cols = ["run", "dataset", "agent", "step", "status", "score"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    for row in rows:  # what could not be read, and the one thing to do about it
        if row.get("problem"):
            print(f"unreadable: {row['problem']}")
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
    parser.add_argument("--version", action="version", version=f"rlmin {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks (also RLMIN_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a run from YAML configs and key=value overrides")
    p.add_argument("items", nargs="*", help="config files, then key=value overrides")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("quickstart", help="train and evaluate a minGRU agent on hopper-medium")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("eval", help="evaluate a checkpoint or an exported policy in its environment")
    p.add_argument("checkpoint", help="a checkpoint, a run dir (its latest checkpoint), or an exported "
                                      "policy: policy.pt, or policy.onnx (run by ONNX Runtime)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--mode", default=None, help="acting mode, one of the agent's (e.g. carry, window)")
    p.add_argument("--targets", type=float, nargs="+", default=None)
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--n-envs", type=int, default=None)
    p.add_argument("--max-episode-steps", type=int, default=None,
                   help="episode time limit (default: the task's)")
    p.add_argument("--out", default=None, help="results JSON (default: next to the checkpoint, "
                                               "named after mode, seed and episodes)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (or --video) file")
    p.add_argument("--video", default=None, metavar="FILE.mp4|FILE.gif",
                   help="also record the first episode (first target, first seed) from MuJoCo's "
                        "offscreen renderer (MUJOCO_GL=egl unless set)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a self-contained policy (no dataset needed)")
    p.add_argument("checkpoint")
    p.add_argument("out", help="policy.pt (torch), or policy.onnx (ONNX Runtime, no torch needed)")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="ONNX only: int8 weights (faster on CPUs with int8 dot products; not exact: "
                        "`rlmin eval policy.onnx` gives its score)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("configs", help="list the shipped configs")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("runs", help="list runs: dataset, agent, step, status, headline score")
    p.add_argument("dir", nargs="?", default="runs", help="folder holding run dirs (default runs)")
    p.set_defaults(func=cmd_runs)

    data = sub.add_parser("data", help="local Minari datasets").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("build", help="build a D4RL-style dataset into MINARI_DATASETS_PATH")
    p.add_argument("env", help="hopper | halfcheetah | walker2d")
    p.add_argument("level", help="random | medium | medium-replay | expert | medium-expert")
    p.add_argument("--steps", type=int, default=None,
                   help="steps to collect (default D4RL's: 1M; medium-replay: the SAC run's "
                        "steps up to the medium policy; medium-expert: each part's)")
    p.add_argument("--policy", default=None, help="behaviour actor (.pt) for medium or expert")
    p.add_argument("--sac-run", default=None,
                   help="medium-replay from this SAC run's replay.pkl instead of the shipped "
                        "snapshot series")
    p.add_argument("--policies-dir", default=None,
                   help="folder of <task>-<level>.pt and <task>-replay/ (default: "
                        "RLMIN_POLICIES_DIR or the shipped envs/policies)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset (kept until the new one is complete)")
    p.set_defaults(func=cmd_data_build)
    p = data.add_parser("list", help="list local datasets")
    p.set_defaults(func=cmd_data_list)

    from rlmin.grid import add_arguments as add_repro_arguments  # light: argparse only

    p = sub.add_parser("repro", help="multi-seed reproduction grids and their report",
                       description="Run a datasets x backbones x seeds grid, resumable and "
                                   "shardable (--shard i/n), and report it (rlmin.grid, rlmin.report).")
    add_repro_arguments(p)
    p.set_defaults(func=cmd_repro)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rlmin")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _exit_code(e: BaseException) -> int | None:
    """The exit status of an error a user can fix (rlmin/errors.py); None for anything else (a bug)."""
    if isinstance(e, UserError):
        return e.exit_code  # 2: a bad command line or config; 1: a runtime problem
    if isinstance(e, (ValueError, OSError)):  # OSError: missing/existing files, disk full, permissions
        return 1
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status.

    A mistake a user can fix is one line on stderr: exit 2 for a bad command line or config, 1
    for a runtime problem (missing dataset, unloadable checkpoint, a run that had to stop).
    Tracebacks only with ``--debug`` or ``RLMIN_DEBUG=1``. Ctrl-C/SIGTERM during training save a
    checkpoint and exit 130/143.
    """
    from rlmin.interrupts import StopRequested

    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("RLMIN_DEBUG") == "1"
    tune_cpu_allocator()  # large CPU tensors: no fresh mmap + page faults per step (rlmin/cpu.py)
    try:
        if getattr(args, "video", None):
            from rlmin.video import choose_gl_backend

            choose_gl_backend()  # before anything imports MuJoCo
        return args.func(args)
    except StopRequested as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        code = _exit_code(e)
        if code is None or debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return code


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return text


if __name__ == "__main__":
    sys.exit(main())
