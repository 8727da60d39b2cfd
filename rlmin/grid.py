"""Reproduction grids: task configs x backbone configs x seeds, run as ``rlmin train`` subprocesses.

    rlmin repro run --grid small --out runs/repro-small                   # configs/grids/small.yaml
    rlmin repro run --grid full --out runs/repro-full --shard 0/4         # on machine 0 of 4
    rlmin repro run --tasks hopper-medium --backbones mingru,bc --seeds 5 --out runs/x train.steps=2000
    rlmin repro report runs/repro-small                                   # rlmin.report
    rlmin repro status runs/repro-small                                   # each run's state
    rlmin repro run --grid full --out runs/full --launcher slurm --time 120 --gpus-per-run 1
    python scripts/repro.py ...                                           # the same commands

The grid
    A grid file (``configs/grids/<name>.yaml``) lists ``tasks`` (names of ``configs/tasks/*.yaml``),
    ``backbones`` (names of ``configs/backbones/*.yaml``), ``seeds``, ``overrides`` (``key=value``
    for every run), ``backbone_overrides`` (``{backbone: [key=value, ...]}``, for agents whose
    options differ), ``workers`` and ``slurm`` (the resources of each run's job for ``--launcher
    slurm``: partition, time, cpus_per_run, gpus_per_run, mem_gb, array_parallelism and sbatch
    options; rlmin/launch.py); ``--tasks``/``--backbones``/``--seeds`` replace its lists and
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
    A run whose ``results.json`` is readable (one JSON object, as the trainer writes it) is
    finished and skipped, so running the same command again resumes the grid. A results.json that
    is not (binary, truncated, not JSON) is moved aside as ``results.json.broken-<time>`` and the
    run goes again. A run that was interrupted after writing a checkpoint continues from it
    (``rlmin train --resume <run_dir>``, with the config it started with); a run without one
    starts over (what its attempt left is set aside as ``<file>.earlier-<time>``). A run that
    failed (the trainer exited with an error) gets ``<run_dir>/failed.json`` (exit code, time,
    the last line of train.log) and is left alone by later launches unless ``--rerun-failed``.
    ``rlmin repro status DIR`` lists every run's state from the folder alone. Runs are launched
    by a thread pool here (``--launcher local``) or as submitit jobs (``--launcher
    submitit-local|slurm``, rlmin/launch.py): the same ``rlmin train`` command either way.
    To spread a grid over processes or machines, give each a disjoint shard of
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
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from rlmin.errors import ReproError
from rlmin.gridrun import (
    COMMAND_FILE,
    DRIVER_LOG,
    FAILED_FILE,
    GRID_FILE,
    LOG_FILE,
    RESULTS,
    SUBMITIT_DIR,
    GridOutcome,
    Run,
    SubprocessRunner,
    _env_prefix,
    available_cores,
    begin_attempt,
    claim_attempt,
    claimed,
    finish_attempt,
    lock_holder,
    prepare_datasets,
    read_failure,
    report_attempt,
    results_problem,
    triage,
)
from rlmin.paths import CONFIG_ROOT
from rlmin.report import report

LAUNCHERS = ("local", "submitit-local", "slurm")
# The grid file's `slurm:` mapping (rlmin/launch.py reads the values).
SLURM_KEYS = ("partition", "time", "cpus_per_run", "gpus_per_run", "mem_gb", "array_parallelism",
              "sbatch")


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
    # Slurm resources per run ({key: value}, SLURM_KEYS); used by --launcher slurm only.
    slurm: dict = field(default_factory=dict)


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
                          "workers", "description", "variants", "slurm"}
    if unknown:
        raise ReproError(f"{path}: unknown key(s) {sorted(unknown)}; a grid file has tasks, "
                         "backbones, seeds, overrides, backbone_overrides, variants, workers, "
                         "slurm and description")
    slurm = doc.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ReproError(f"{path}: slurm must be a mapping ({', '.join(SLURM_KEYS)})")
    unknown = sorted(set(map(str, slurm)) - set(SLURM_KEYS))
    if unknown:
        raise ReproError(f"{path}: unknown slurm key(s) {unknown}; the slurm mapping has "
                         f"{', '.join(SLURM_KEYS)} (sbatch: {{option: value}} for anything else)")
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
                variants, {str(k): v for k, v in slurm.items()})


# ============================================================================ planning
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


# ============================================================================ status
STATES = ("finished", "running", "interrupted", "failed", "broken", "pending")
RUN_MARKERS = (RESULTS, COMMAND_FILE, "config.yaml", FAILED_FILE, "checkpoints")


def _checkpoint_step(run_dir: Path) -> int | None:
    steps = [int(m[1]) for p in Path(run_dir).glob("checkpoints/step_*.pt")
             if (m := re.fullmatch(r"step_(\d+)\.pt", p.name))]
    return max(steps) if steps else None


def _results_detail(path: Path) -> str:
    doc = json.loads(path.read_bytes())
    targets = (doc.get("last_iterate") or {}).get("targets") or {}
    scores = [f"{t}: {r['normalized_mean']:.1f}" for t, r in targets.items()
              if isinstance(r, dict) and isinstance(r.get("normalized_mean"), (int, float))]
    return ", ".join([f"step {doc.get('step', '?')}", *scores])


def run_state(run_dir: Path) -> tuple[str, str]:
    """(state, detail) of one run from its folder alone; ``state`` is one of :data:`STATES`."""
    run_dir = Path(run_dir)
    results = run_dir / RESULTS
    problem = results_problem(results) if results.is_file() else None
    if results.is_file() and problem is None:
        return "finished", _results_detail(results)
    holder, step = lock_holder(run_dir), _checkpoint_step(run_dir)
    at = f"last checkpoint at step {step}" if step is not None else "no checkpoint yet"
    if holder:
        return "running", f"{holder}; {at}"
    if claimed(run_dir):  # the seconds between a driver's claim and its trainer's own lock
        return "running", f"a grid driver is starting it; {at}"
    if problem:
        return "broken", f"{RESULTS} {problem}: the next `repro run` moves it aside and runs it again"
    failure = read_failure(run_dir)
    if failure is not None:
        return "failed", (f"exit {failure.get('exit_code', '?')} at {failure.get('time', '?')}: "
                          f"{failure.get('error') or 'no error line in ' + LOG_FILE}")
    if step is not None:
        return "interrupted", f"{at}: the next `repro run` resumes it"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return "interrupted", "stopped before its first checkpoint: the next `repro run` starts it over"
    return "pending", "not started"


def grid_run_dirs(out_dir: Path) -> list[tuple[str, Path]]:
    """(name, run dir) of every run of a grid folder: the runs ``grid.json`` planned (whether or
    not they have a folder yet), then every other folder that holds a run's files."""
    out_dir = Path(out_dir)
    names: dict[str, Path] = {}
    try:
        planned = json.loads((out_dir / GRID_FILE).read_text()).get("runs") or []
    except (OSError, ValueError, AttributeError):
        planned = []  # no grid.json (a folder copied together by hand): the folders alone
    for entry in planned:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            names[entry["name"]] = out_dir / entry["name"]  # the layout is <out>/<name>
    found = {p.parent for marker in RUN_MARKERS for p in out_dir.rglob(marker)
             if SUBMITIT_DIR not in p.relative_to(out_dir).parts}
    for run_dir in sorted(found):
        names.setdefault(run_dir.relative_to(out_dir).as_posix(), run_dir)
    return list(names.items())


def grid_status(out_dir: Path) -> list[tuple[str, str, str]]:
    """(name, state, detail) per run of a grid folder (:func:`grid_run_dirs`, :func:`run_state`)."""
    return [(name, *run_state(run_dir)) for name, run_dir in grid_run_dirs(out_dir)]


def format_status(rows: Sequence[tuple[str, str, str]]) -> str:
    """One line per run (state, run, detail), then the counts."""
    width = max([len("run"), *(len(name) for name, _, _ in rows)])
    lines = [f"{'state':<12} {'run':<{width}}  detail"]
    lines += [f"{state:<12} {name:<{width}}  {detail}".rstrip() for name, state, detail in rows]
    counts = {s: sum(1 for _, state, _ in rows if state == s) for s in STATES}
    lines.append(f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if counts["failed"]:
        lines.append("the next `rlmin repro run` of this grid leaves the failed runs alone; add "
                     "--rerun-failed to run them again")
    return "\n".join(lines)


def cmd_status(args, echo=print) -> int:
    out = Path(args.out_dir)
    if not out.is_dir():
        raise ReproError(f"no grid folder {out}")
    rows = grid_status(out)
    if not rows:
        raise ReproError(f"no runs under {out} (and no {GRID_FILE} listing any)")
    echo(format_status(rows))
    return 0


# ============================================================================ running
def run_grid(runs: Sequence[Run], workers: int = 1, runner=None, cores: int | None = None,
             echo: Callable[[str], None] = print, skip_failed: bool = False) -> GridOutcome:
    """Run every unfinished run (``workers`` at a time); finished ones are skipped, and so are
    failed ones when ``skip_failed`` (the command line's default; --rerun-failed clears it).

    ``runner`` has ``prepare(run) -> exit code`` and ``run(run, argv, log_path) -> exit code``
    (default :class:`SubprocessRunner`); the tests inject a fake one. Each run's command is
    written to ``<run_dir>/command.txt`` before it starts. A failed run gets ``failed.json`` and
    the others go on.
    """
    runner = runner or SubprocessRunner()
    workers = max(1, int(workers))
    threads = max(1, (cores or available_cores()) // workers)
    sorted_runs = triage(runs, skip_failed, echo)
    todo = sorted_runs.todo
    outcome = GridOutcome(list(runs), skipped=sorted_runs.finished,
                          left_failed=sorted_runs.failed, running=sorted_runs.running)
    echo(f"{len(runs)} runs: {sorted_runs.summary()}, {workers} at a time, "
         f"train.num_threads={threads}")
    if not todo:
        return outcome
    if workers > 1:
        prepare_datasets(todo, runner, echo)
    lock = threading.Lock()

    def one(i_run):
        i, r = i_run
        prefix = f"[{i + 1}/{len(todo)}]"
        with claim_attempt(r) as taken:
            if taken:  # another driver of this grid got to it since the triage
                with lock:
                    report_attempt(outcome, r, taken, None, prefix, echo)
                return
            argv = r.argv(num_threads=threads)
            begin_attempt(r, argv)
            with lock:
                echo(f"{prefix} start {r.name}  (log: {r.run_dir / LOG_FILE})")
            error = None
            try:
                code = runner.run(r, argv, r.run_dir / LOG_FILE)
            except Exception as e:  # a runner that cannot start the run: one failed run, not a crash
                with lock:
                    echo(f"{prefix} could not run {r.name}: {e!r}")
                code, error = -1, f"could not start: {e!r}"
            state = finish_attempt(r, code, error)
        with lock:
            report_attempt(outcome, r, state, code, prefix, echo)

    if workers == 1:
        for item in enumerate(todo):
            one(item)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, enumerate(todo)))
    return outcome


def invocation(args) -> list[str]:
    """The ``rlmin repro run`` command line equivalent to parsed ``args`` (whatever the entry point)."""
    argv = [*_env_prefix(), "rlmin", "repro", "run"]
    for opt in ("grid", "out", "tasks", "backbones", "seeds", "workers", "cores", "shard",
                "launcher", *(flag for flag, _ in SLURM_FLAGS)):
        value = getattr(args, opt, None)
        if value is not None:
            argv += [f"--{opt.replace('_', '-')}", str(value)]
    for item in getattr(args, "sbatch", None) or ():
        argv += ["--sbatch", item]
    if getattr(args, "config_root", None) and Path(args.config_root) != CONFIG_ROOT:
        argv += ["--config-root", str(args.config_root)]
    for flag in ("rerun_failed", "no_array", "wait", "no_report"):
        if getattr(args, flag, False):
            argv.append(f"--{flag.replace('_', '-')}")
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


# --launcher slurm's resource flags: (attribute, help); values are checked by rlmin.launch.
SLURM_FLAGS = (
    ("partition", "Slurm partition (grid file: slurm.partition)"),
    ("time", "time limit of one job, in minutes (slurm.time); a run that needs longer is "
             "requeued from its checkpoint"),
    ("cpus_per_run", "CPUs per run (slurm.cpus_per_run; also the run's train.num_threads)"),
    ("gpus_per_run", "GPUs per run (slurm.gpus_per_run)"),
    ("mem_gb", "memory per run in GB (slurm.mem_gb)"),
    ("array_parallelism", "runs of the job array at a time (slurm.array_parallelism)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run`` / ``report`` / ``status`` sub-commands, on ``rlmin repro`` and scripts/repro.py."""
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
    p.add_argument("--seeds", help="a count (3 = seeds 0,1,2) or a list (0,3,7; one seed: 3,); "
                                   "on a grid file whose seeds do not start at 0, a list only")
    p.add_argument("--workers", type=int, default=None,
                   help="runs at a time (default: the grid file's, else 1); each gets "
                        "train.num_threads = cores // workers")
    p.add_argument("--cores", type=int, default=None, help="cores to share (default: all usable)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only shard I of N (0 <= I < N): runs I, I+N, ... of the full grid")
    p.add_argument("--config-root", default=str(CONFIG_ROOT),
                   help="folder with tasks/, backbones/ and grids/")
    p.add_argument("--rerun-failed", action="store_true",
                   help="run again the runs that failed before (their failed.json); without it "
                        "they are left alone")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--no-report", action="store_true", help="do not write the report afterwards")
    p.add_argument("--launcher", default=None, metavar="|".join(LAUNCHERS),
                   help="local (default): a pool of `rlmin train` processes here; "
                        "submitit-local: the same runs as submitit jobs here (to try a Slurm "
                        "grid); slurm: one Slurm job per run, as a job array")
    g = p.add_argument_group("--launcher slurm (flags win over the grid file's slurm: mapping)")
    for flag, text in SLURM_FLAGS:  # strings: rlmin.launch checks them, in one line each
        g.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None, help=text,
                       metavar={"partition": "NAME", "time": "MINUTES", "mem_gb": "GB"}.get(flag, "N"))
    g.add_argument("--sbatch", action="append", default=None, metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --sbatch account=proj --sbatch qos=low "
                        "(repeat it; slurm.sbatch in the grid file)")
    g.add_argument("--no-array", action="store_true",
                   help="submit one job per run instead of one job array")
    g.add_argument("--wait", action="store_true",
                   help="wait for the jobs to end, then report (default: submit and return)")
    p = sub.add_parser("report", help="collect every results.json under a folder into report.md "
                                      "(+ scores.png, curves.png, report.json)")
    p.add_argument("out_dir")
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed (default 0)")
    p.add_argument("--against", action="append", default=[], metavar="LABEL",
                   help="pair every other agent with this one run by run (same dataset and seed): "
                        "the mean difference with its CI; repeatable")
    p = sub.add_parser("status", help="each run's state in a grid folder: finished, running, "
                                      "interrupted, failed, pending",
                       description="Read each run's state from its folder alone (grid.json, "
                                   "where there is one, adds the runs not started yet).")
    p.add_argument("out_dir")


def _check_launcher(args, grid: Grid | None):
    """The launcher and, for Slurm, its resources; a user mistake is a ReproError."""
    launcher = args.launcher or "local"
    if launcher not in LAUNCHERS:
        raise ReproError(f"--launcher takes {', '.join(LAUNCHERS)}, got {launcher!r}")
    if launcher != "local":
        import importlib.util

        if importlib.util.find_spec("submitit") is None:  # an install from before it was needed
            raise ReproError(f"--launcher {launcher} needs submitit: pip install 'submitit>=1.5'")
    if launcher != "slurm":
        given = [f"--{f.replace('_', '-')}" for f in [*(f for f, _ in SLURM_FLAGS), "sbatch",
                                                      "no_array", "wait"] if getattr(args, f, None)]
        if given:
            raise ReproError(f"{given[0]} is for --launcher slurm (this is --launcher {launcher})")
        return launcher, None
    if args.workers is not None:
        raise ReproError("--workers is for the local launchers; on Slurm --array-parallelism caps "
                         "the runs at a time")
    from rlmin.launch import slurm_resources  # lazy: submitit (0.1 s) only for these launchers; no cycle

    return launcher, slurm_resources(grid.slurm if grid else {}, args)


def cmd_run(args, runner=None, echo=print) -> int:
    config_root = Path(args.config_root)
    grid = load_grid(args.grid, config_root) if args.grid else None
    launcher, resources = _check_launcher(args, grid)
    tasks = _names(args.tasks) or (grid.tasks if grid else None)
    backbones = _names(args.backbones) or (grid.backbones if grid else None)
    seeds = _seeds(args.seeds) if args.seeds else (grid.seeds if grid else (0, 1, 2))
    if grid and args.seeds and "," not in args.seeds and grid.seeds != tuple(range(len(grid.seeds))):
        listed = ",".join(map(str, grid.seeds))  # "--seeds 3" on a grid of seeds 3-5 meant seed 3
        raise ReproError(f"--seeds {args.seeds} is a count (seeds {', '.join(map(str, seeds))}), and "
                         f"the grid's seeds are {listed}: give a list instead (--seeds "
                         f"{grid.seeds[0]}, for seed {grid.seeds[0]} alone; --seeds 0,1,2 for those)")
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
        threads = (resources.cpus_per_run if resources
                   else max(1, (args.cores or available_cores()) // workers))
        for r in mine:
            state = "finished" if r.finished else "to run"
            echo(f"# {r.name} ({state})\n{shlex.join(r.argv(num_threads=threads))}")
        echo(f"{len(mine)} runs ({len(pending(mine))} to run) of a {len(runs)}-run grid")
        if resources:
            echo(f"on Slurm, each run a job with {resources.describe()}")
        return 0
    if resources:
        from rlmin.launch import check_slurm_commands  # lazy: submitit, as above

        check_slurm_commands()  # before anything is written: a login node without sbatch
    line = record_invocation(out, invocation(args))
    write_grid(out, runs, {"command": line, "grid": grid and grid.name, "tasks": list(tasks),
                           "backbones": list(backbones), "seeds": list(seeds),
                           "variants": dict(grid.variants) if grid else {},
                           "overrides": overrides, "shard": args.shard})
    skip_failed = not args.rerun_failed
    if launcher == "local":
        outcome = run_grid(mine, workers=workers, runner=runner, cores=args.cores, echo=echo,
                           skip_failed=skip_failed)
    else:
        from rlmin.launch import launch  # lazy: submitit, as above

        outcome = launch(mine, out, launcher, workers=workers, cores=args.cores,
                         resources=resources, skip_failed=skip_failed, array=not args.no_array,
                         wait=args.wait or launcher != "slurm", label=grid.name if grid else "grid",
                         echo=echo)
    if outcome.submitted:
        return 0  # on Slurm; `rlmin repro status` follows the jobs, `rlmin repro report` ends it
    echo(f"{len(outcome.succeeded)} run(s) finished now, {len(outcome.skipped)} already, "
         f"{len(outcome.failed)} failed"
         + (f", {len(outcome.interrupted)} stopped (the same command resumes them)"
            if outcome.interrupted else ""))
    if outcome.left_failed:
        echo(f"{len(outcome.left_failed)} run(s) that failed before were left alone (why: "
             f"failed.json in each, or `rlmin repro status {out}`); add --rerun-failed to run "
             "them again")
    if not args.no_report and any(out.rglob(RESULTS)):
        report(out, echo=echo)
    return 0 if outcome.complete else 1


def run_command(args, runner=None, echo=print) -> int:
    """Dispatch parsed ``repro`` arguments (``rlmin repro ...`` and scripts/repro.py)."""
    try:
        if args.repro_command == "run":
            return cmd_run(args, runner, echo)
        if args.repro_command == "status":
            return cmd_status(args, echo)
        report(args.out_dir, n_resamples=args.resamples, seed=args.seed, echo=echo,
               against=args.against)
        return 0
    except ReproError as e:
        print(f"repro: {e}", file=sys.stderr)
        return e.exit_code  # 2: a usage error (rlmin/errors.py)


def main(argv: Sequence[str] | None = None, runner=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rlmin repro", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_command(parser.parse_args(argv), runner)


if __name__ == "__main__":
    sys.exit(main())
