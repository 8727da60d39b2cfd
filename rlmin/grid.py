"""Reproduction grids: task configs x backbone configs x seeds, run as ``rlmin train`` subprocesses.

    rlmin repro run --grid small --out runs/repro-small                   # configs/grids/small.yaml
    rlmin repro run --grid full --out runs/repro-full --shard 0/4         # on machine 0 of 4
    rlmin repro run --tasks hopper-medium --backbones mingru,bc --seeds 5 --out runs/x train.steps=2000
    rlmin repro report runs/repro-small                                   # rlmin.report
    python scripts/repro.py ...                                           # the same commands

The grid
    A grid file (``configs/grids/<name>.yaml``) lists ``tasks`` (names of ``configs/tasks/*.yaml``),
    ``backbones`` (names of ``configs/backbones/*.yaml``), ``seeds``, ``overrides`` (``key=value``
    for every run), ``backbone_overrides`` (``{backbone: [key=value, ...]}``, for agents whose
    options differ) and ``workers``; ``--tasks``/``--backbones``/``--seeds`` replace its lists and
    the command line's ``key=value`` come after its overrides. Each run composes
    ``configs/tasks/<task>.yaml`` + ``configs/backbones/<backbone>.yaml`` + its backbone's
    overrides + the shared ones + the command line's (a later value of a key wins), and runs as
    its own process: ``python -m rlmin.cli train <task.yaml> <backbone.yaml> <overrides>
    run_dir=<out>/<task>/<backbone>/seed<k> train.seed=<k> train.progress=false
    [train.num_threads=<cores/workers>]``; its output goes to ``<run_dir>/train.log`` and its exact
    command line to ``<run_dir>/command.txt``. Every invocation of the driver is appended to
    ``<out>/repro_commands.txt`` and the whole plan, with the config files of each run, is written
    to ``<out>/grid.json`` (the report reads from it which task config a run used). Runs are
    sequential, or ``--workers N`` at a time, each with ``train.num_threads = cores // N`` (unless
    the overrides set it).

Resuming and spreading the work (no new code needed)
    A run whose ``results.json`` exists is finished and skipped, so running the same command
    again resumes the grid. A run that was interrupted after writing a checkpoint continues from
    it (``rlmin train --resume <run_dir>``, with the config it started with); a run without one
    starts over. To spread a grid over processes or machines, give each a disjoint shard of
    it: ``--shard i/n`` (0 <= i < n) takes runs i, i+n, i+2n, ... of the full grid's fixed order
    (tasks, then backbones, then seeds), whatever is already finished, so the n shards always
    partition the grid. Run shard i on machine i with the same ``--out`` path (or a shared
    filesystem), copy the run folders into one folder, and ``rlmin repro report`` that folder.

The datasets must be on disk (Minari's ``mujoco/<env>/<level>-v0`` via ``minari download``, or
built with ``rlmin data build``); ``rlmin train`` builds a missing ``rlmin/...`` dataset from a
shipped behaviour policy where there is one. Before a parallel grid starts, each task's dataset is
loaded (built if need be) once, so that workers do not build it side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
RESULTS = "results.json"
COMMAND_FILE = "command.txt"
LOG_FILE = "train.log"
DRIVER_LOG = "repro_commands.txt"
GRID_FILE = "grid.json"


class ReproError(ValueError):
    """A grid that cannot be planned, run or reported as asked; the message says what to change."""


@dataclass(frozen=True)
class Grid:
    """A grid file: what to run. ``overrides`` apply to every run, ``backbone_overrides[name]``
    to the runs of one backbone config (before the shared ones); ``workers`` is the default."""

    name: str
    tasks: tuple[str, ...]
    backbones: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()
    backbone_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    workers: int = 1
    description: str = ""
    # {name: overrides}: every backbone runs once per variant (a recipe: layout, data mode, ...),
    # in <out>/<task>/<backbone>/<variant>/seed<k>; a variant's overrides come after the shared ones.
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)


def load_grid(name_or_path: str, config_root: Path = CONFIG_ROOT) -> Grid:
    """``configs/grids/<name>.yaml`` (or a path to a grid file) as a :class:`Grid`."""
    import yaml  # omegaconf's dependency; imported here so the CLI parser stays light

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(config_root) / "grids" / f"{name_or_path}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in (Path(config_root) / "grids").glob("*.yaml"))
        raise ReproError(f"no grid file {path}; choose from {', '.join(have) or '(none)'}")
    doc = yaml.safe_load(path.read_text()) or {}
    unknown = set(doc) - {"tasks", "backbones", "seeds", "overrides", "backbone_overrides",
                          "workers", "description", "variants"}
    if unknown:
        raise ReproError(f"{path}: unknown key(s) {sorted(unknown)}; a grid file has tasks, "
                         "backbones, seeds, overrides, backbone_overrides, variants, workers and "
                         "description")
    missing = [k for k in ("tasks", "backbones", "seeds") if not doc.get(k)]
    if missing:
        raise ReproError(f"{path}: {', '.join(missing)} missing or empty")
    per_backbone = {str(b): tuple(map(str, o or ()))
                    for b, o in (doc.get("backbone_overrides") or {}).items()}
    variants = {str(v): tuple(map(str, o or ())) for v, o in (doc.get("variants") or {}).items()}
    bad = [v for v in variants if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v)]
    if bad:
        raise ReproError(f"{path}: variant name {bad[0]!r} must be a folder name (letters, digits, "
                         "'-', '_', '.')")
    return Grid(path.stem, tuple(doc["tasks"]), tuple(doc["backbones"]),
                tuple(int(s) for s in doc["seeds"]), tuple(map(str, doc.get("overrides") or ())),
                per_backbone, int(doc.get("workers", 1)), str(doc.get("description", "")),
                variants)


# ============================================================================ planning
@dataclass(frozen=True)
class Run:
    """One cell of the grid: a task config, a backbone config and a seed."""

    task: str
    backbone: str
    seed: int
    run_dir: Path
    config_files: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    variant: str | None = None

    @property
    def name(self) -> str:
        variant = f"/{self.variant}" if self.variant else ""
        return f"{self.task}/{self.backbone}{variant}/seed{self.seed}"

    @property
    def finished(self) -> bool:
        return (self.run_dir / RESULTS).is_file()

    def has_checkpoint(self) -> bool:
        ckpt = self.run_dir / "checkpoints"
        return ckpt.is_dir() and any(ckpt.glob("*.pt"))

    def argv(self, num_threads: int | None = None, python: str = sys.executable) -> list[str]:
        """The ``rlmin train`` command line of this run (``--resume`` when it has a checkpoint)."""
        if self.has_checkpoint():
            return [python, "-m", "rlmin.cli", "train", "--resume", str(self.run_dir)]
        extra = [f"run_dir={self.run_dir}", f"train.seed={self.seed}", "train.progress=false"]
        if num_threads and not any(o.startswith("train.num_threads=") for o in self.overrides):
            extra.append(f"train.num_threads={num_threads}")
        return [python, "-m", "rlmin.cli", "train", *self.config_files, *self.overrides, *extra]


def _config_path(kind: str, name: str, config_root: Path) -> str:
    path = config_root / kind / f"{name}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in (config_root / kind).glob("*.yaml"))
        raise ReproError(f"no {kind[:-1]} config {path}; choose from {', '.join(have) or '(none)'}")
    try:  # relative to the working directory when it is below it: shorter, portable commands
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def plan(tasks: Sequence[str], backbones: Sequence[str], seeds: Sequence[int], out_dir,
         overrides: Sequence[str] = (), config_root: Path = CONFIG_ROOT,
         backbone_overrides: Mapping[str, Sequence[str]] | None = None,
         variants: Mapping[str, Sequence[str]] | None = None,
         last_overrides: Sequence[str] = ()) -> list[Run]:
    """The grid in its fixed order: tasks, then backbones, then variants, then seeds. A run's
    overrides are its backbone's ``backbone_overrides``, then ``overrides``, then its variant's,
    then ``last_overrides`` (the command line's); a later value of a key wins."""
    if not tasks or not backbones or not seeds:
        raise ReproError("a grid needs at least one task, one backbone and one seed")
    if len(set(seeds)) != len(seeds):
        raise ReproError(f"seeds repeat: {list(seeds)}")
    backbone_overrides, variants = backbone_overrides or {}, dict(variants or {})
    every = [*overrides, *last_overrides, *(o for b in backbones for o in backbone_overrides.get(b, ())),
             *(o for v in variants.values() for o in v)]
    bad = [o for o in every if "=" not in o]
    if bad:
        raise ReproError(f"overrides must look like key=value, got {bad}")
    owned = [o for o in every if o.split("=", 1)[0] in ("run_dir", "train.seed")]
    if owned:
        raise ReproError(f"{owned}: the driver sets run_dir and train.seed for every run itself")
    out_dir, config_root = Path(out_dir), Path(config_root)
    runs = []
    for task in tasks:
        task_file = _config_path("tasks", task, config_root)
        for backbone in backbones:
            bb_file = _config_path("backbones", backbone, config_root)
            for variant, variant_overrides in (variants.items() or [(None, ())]):
                run_overrides = (*backbone_overrides.get(backbone, ()), *overrides,
                                 *variant_overrides, *last_overrides)
                folder = out_dir / task / backbone / (variant or "")
                for seed in seeds:
                    runs.append(Run(task, backbone, int(seed), folder / f"seed{seed}",
                                    (task_file, bb_file), run_overrides, variant))
    return runs


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m[2]) < 1 or not int(m[1]) < int(m[2]):
        raise ReproError(f"--shard takes i/n with 0 <= i < n (e.g. 0/4 ... 3/4), got {text!r}")
    return int(m[1]), int(m[2])


def shard(runs: Sequence[Run], index: int, count: int) -> list[Run]:
    """Runs index, index+count, ... of the grid: ``count`` shards partition it."""
    if not 0 <= index < count:
        raise ReproError(f"shard index must be in [0, {count}), got {index}")
    return list(runs[index::count])


def pending(runs: Iterable[Run]) -> list[Run]:
    return [r for r in runs if not r.finished]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ============================================================================ running
class SubprocessRunner:
    """Runs ``rlmin train`` commands as child processes (the driver's default runner)."""

    def prepare(self, run: Run) -> int:
        """Load (and, where the config allows, build) the run's dataset once, in a child process."""
        code = ("import sys; from rlmin.config import load_config; from rlmin.data.resolve import "
                "load_dataset_for; d = load_dataset_for(load_config(sys.argv[1:3], sys.argv[3:]).data); "
                "print('dataset ready:', d.eval_spec.dataset_id, d.data.num_steps, 'steps')")
        return subprocess.call([sys.executable, "-c", code, *run.config_files, *run.overrides])

    def run(self, run: Run, argv: list[str], log_path: Path) -> int:
        with open(log_path, "a") as log:
            return subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)


@dataclass
class GridOutcome:
    planned: list[Run]
    skipped: list[Run] = field(default_factory=list)
    succeeded: list[Run] = field(default_factory=list)
    failed: list[tuple[Run, int]] = field(default_factory=list)


def run_grid(runs: Sequence[Run], workers: int = 1, runner=None, cores: int | None = None,
             echo: Callable[[str], None] = print) -> GridOutcome:
    """Run every unfinished run (``workers`` at a time); finished ones are skipped.

    ``runner`` has ``prepare(run) -> exit code`` and ``run(run, argv, log_path) -> exit code``
    (default :class:`SubprocessRunner`); the tests inject a fake one. Each run's command is
    written to ``<run_dir>/command.txt`` before it starts. A failed run is reported and the
    others go on.
    """
    runner = runner or SubprocessRunner()
    workers = max(1, int(workers))
    threads = max(1, (cores or available_cores()) // workers)
    todo = pending(runs)
    outcome = GridOutcome(list(runs), skipped=[r for r in runs if r.finished])
    echo(f"{len(runs)} runs: {len(outcome.skipped)} finished "
         f"(skipped), {len(todo)} to run, {workers} at a time, train.num_threads={threads}")
    if not todo:
        return outcome
    if workers > 1:  # one dataset build per task, not one per worker
        seen = set()
        for r in todo:
            key = (r.config_files[0],  # the dataset depends on the task and data.* keys only
                   tuple(o for o in r.overrides if o.startswith("data.")))
            if key not in seen:
                seen.add(key)
                code = runner.prepare(r)
                if code:
                    echo(f"preparing the dataset of {r.task} failed (exit {code}); its runs will "
                         "try on their own")
    lock = threading.Lock()

    def one(i_run):
        i, r = i_run
        r.run_dir.mkdir(parents=True, exist_ok=True)
        argv = r.argv(num_threads=threads)
        stamp = datetime.now().isoformat(timespec="seconds")
        with open(r.run_dir / COMMAND_FILE, "a") as f:
            f.write(f"# {stamp} on {platform.node()}, cwd {os.getcwd()}\n"
                    f"{shlex.join([*_env_prefix(), *argv])}\n")
        with lock:
            echo(f"[{i + 1}/{len(todo)}] start {r.name}  (log: {r.run_dir / LOG_FILE})")
        try:
            code = runner.run(r, argv, r.run_dir / LOG_FILE)
        except Exception as e:  # a runner that cannot start the run: one failed run, not a crash
            with lock:
                echo(f"[{i + 1}/{len(todo)}] could not run {r.name}: {e!r}")
            code = -1
        ok = code == 0 and r.finished
        with lock:
            if ok:
                outcome.succeeded.append(r)
                echo(f"[{i + 1}/{len(todo)}] done  {r.name}")
            else:
                outcome.failed.append((r, code))
                echo(f"[{i + 1}/{len(todo)}] FAILED {r.name} (exit {code}, "
                     f"{'no ' if not r.finished else ''}results.json); see {r.run_dir / LOG_FILE}")

    if workers == 1:
        for item in enumerate(todo):
            one(item)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, enumerate(todo)))
    return outcome


RECORDED_ENV = ("MINARI_DATASETS_PATH", "CUDA_VISIBLE_DEVICES")


def _env_prefix() -> list[str]:
    """``NAME=value`` for the environment variables that change what a run does, when set."""
    return [f"{k}={os.environ[k]}" for k in RECORDED_ENV if os.environ.get(k)]


def invocation(args) -> list[str]:
    """The ``rlmin repro run`` command line equivalent to parsed ``args`` (whatever the entry point)."""
    argv = [*_env_prefix(), "rlmin", "repro", "run"]
    for opt in ("grid", "out", "tasks", "backbones", "seeds", "workers", "cores", "shard"):
        value = getattr(args, opt, None)
        if value is not None:
            argv += [f"--{opt}", str(value)]
    if getattr(args, "config_root", None) and Path(args.config_root) != CONFIG_ROOT:
        argv += ["--config-root", str(args.config_root)]
    if getattr(args, "no_report", False):
        argv.append("--no-report")
    return argv + list(args.overrides)


def record_invocation(out_dir: Path, argv: Sequence[str]) -> str:
    """Append this driver command to ``<out>/repro_commands.txt``; returns the command line."""
    out_dir.mkdir(parents=True, exist_ok=True)
    line = shlex.join(argv)
    stamp = datetime.now().isoformat(timespec="seconds")
    with open(out_dir / DRIVER_LOG, "a") as f:
        f.write(f"# {stamp} on {platform.node()}, cwd {os.getcwd()}\n{line}\n")
    return line


def write_grid(out_dir: Path, runs: Sequence[Run], info: dict) -> None:
    """``<out>/grid.json``: every run ever planned into this folder, with its task and backbone
    config files and overrides (a later plan of the same run replaces its entry), and every
    invocation that planned them. Written atomically."""
    from rlmin.checkpoint import atomic_write_bytes

    path = out_dir / GRID_FILE
    old: dict = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            old = {}  # unreadable: this plan replaces it
    entries = {r["name"]: r for r in old.get("runs") or [] if isinstance(r, dict) and "name" in r}
    for r in runs:
        entries[r.name] = {"name": r.name, "task": r.task, "backbone": r.backbone,
                           "variant": r.variant, "seed": r.seed, "run_dir": str(r.run_dir),
                           "task_config": r.config_files[0], "backbone_config": r.config_files[1],
                           "overrides": list(r.overrides), "command": shlex.join(r.argv())}
    invocations = [i for i in old.get("invocations") or [] if isinstance(i, dict)]
    if not invocations and old.get("command"):  # a grid.json of the one-invocation format
        invocations = [{k: v for k, v in old.items() if k != "runs"}]
    doc = {**info, "invocations": [*invocations, info], "runs": list(entries.values())}
    atomic_write_bytes(path, lambda f: f.write(json.dumps(doc, indent=1).encode()))


# ============================================================================ command line
def _seeds(text: str) -> tuple[int, ...]:
    """``"5"`` -> 0..4; ``"0,3,7"`` -> those seeds."""
    try:
        if "," in text:
            return tuple(int(s) for s in text.split(",") if s.strip())
        count = int(text)
    except ValueError:
        raise ReproError(f"--seeds takes a count (5) or a list (0,3,7), got {text!r}") from None
    if count < 1:
        raise ReproError(f"--seeds {text}: a count must be >= 1 (for seed 0 alone: --seeds 0,)")
    return tuple(range(count))


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(s.strip() for s in text.split(",") if s.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run`` / ``report`` sub-commands, on ``rlmin repro`` and on scripts/repro.py."""
    sub = parser.add_subparsers(dest="repro_command", required=True)
    p = sub.add_parser("run", help="run (or resume) a grid of training runs, then report it",
                       description="Run a task configs x backbone configs x seeds grid of "
                                   "`rlmin train` runs. Finished runs are skipped; --shard i/n "
                                   "splits the grid.")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    p.add_argument("--grid", "--preset", dest="grid", default=None, metavar="NAME|FILE",
                   help="a grid file: NAME for <config-root>/grids/NAME.yaml (small, full, ...) "
                        "or a path to one")
    p.add_argument("--out", required=True, help="grid folder: <out>/<task>/<backbone>/seed<k>")
    p.add_argument("--tasks", help="comma-separated configs/tasks names (replaces the grid's)")
    p.add_argument("--backbones", help="comma-separated configs/backbones names (replaces the grid's)")
    p.add_argument("--seeds", help="a count (3 = seeds 0,1,2) or a list (0,3,7)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs at a time (default: the grid file's, else 1); each gets "
                        "train.num_threads = cores // workers")
    p.add_argument("--cores", type=int, default=None, help="cores to share (default: all usable)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only shard I of N (0 <= I < N): runs I, I+N, ... of the full grid")
    p.add_argument("--config-root", default=str(CONFIG_ROOT),
                   help="folder with tasks/, backbones/ and grids/")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--no-report", action="store_true", help="do not write the report afterwards")
    p = sub.add_parser("report", help="collect every results.json under a folder into report.md "
                                      "(+ scores.png, curves.png, report.json)")
    p.add_argument("out_dir")
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed (default 0)")


def cmd_run(args, runner=None, echo=print) -> int:
    config_root = Path(args.config_root)
    grid = load_grid(args.grid, config_root) if args.grid else None
    tasks = _names(args.tasks) or (grid.tasks if grid else None)
    backbones = _names(args.backbones) or (grid.backbones if grid else None)
    seeds = _seeds(args.seeds) if args.seeds else (grid.seeds if grid else (0, 1, 2))
    if not tasks or not backbones:
        raise ReproError("give --grid NAME (a file in configs/grids), or --tasks and --backbones")
    if len(seeds) < 3:
        echo(f"note: {len(seeds)} seed(s); the report's CI and IQM need 3 or more to mean much")
    overrides = list(grid.overrides if grid else ()) + list(args.overrides)
    workers = args.workers or (grid.workers if grid else 1)
    out = Path(args.out)
    runs = plan(tasks, backbones, seeds, out, list(grid.overrides if grid else ()), config_root,
                grid.backbone_overrides if grid else None, grid.variants if grid else None,
                last_overrides=list(args.overrides))
    mine = shard(runs, *parse_shard(args.shard)) if args.shard else runs
    if args.dry_run:
        threads = max(1, (args.cores or available_cores()) // workers)
        for r in mine:
            state = "finished" if r.finished else "to run"
            echo(f"# {r.name} ({state})\n{shlex.join(r.argv(num_threads=threads))}")
        echo(f"{len(mine)} runs ({len(pending(mine))} to run) of a {len(runs)}-run grid")
        return 0
    line = record_invocation(out, invocation(args))
    write_grid(out, runs, {"command": line, "grid": grid and grid.name, "tasks": list(tasks),
                           "backbones": list(backbones), "seeds": list(seeds),
                           "variants": dict(grid.variants) if grid else {},
                           "overrides": overrides, "shard": args.shard})
    outcome = run_grid(mine, workers=workers, runner=runner, cores=args.cores, echo=echo)
    echo(f"{len(outcome.succeeded)} run(s) finished now, {len(outcome.skipped)} already, "
         f"{len(outcome.failed)} failed")
    if not args.no_report and any(out.rglob(RESULTS)):
        from rlmin.report import report

        report(out, echo=echo)
    return 1 if outcome.failed else 0


def run_command(args, runner=None, echo=print) -> int:
    """Dispatch parsed ``repro`` arguments (``rlmin repro ...`` and scripts/repro.py)."""
    try:
        if args.repro_command == "run":
            return cmd_run(args, runner, echo)
        from rlmin.report import report

        report(args.out_dir, n_resamples=args.resamples, seed=args.seed, echo=echo)
        return 0
    except ReproError as e:
        print(f"repro: {e}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None, runner=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rlmin repro", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_command(parser.parse_args(argv), runner)


if __name__ == "__main__":
    sys.exit(main())
