"""Reproduction grids: datasets x backbones x seeds, run as ``rlmin train`` subprocesses, and one report.

    rlmin repro run --preset small --out runs/repro-small --workers 2
    rlmin repro run --preset full --out runs/repro-full --shard 0/4     # on machine 0 of 4
    rlmin repro run --tasks hopper-medium --backbones mingru,bc --seeds 5 --out runs/x train.steps=2000
    rlmin repro report runs/repro-small                                  # report.md, scores.png, curves.png
    python scripts/repro.py ...                                          # the same commands

The grid
    Each run composes ``configs/tasks/<task>.yaml`` + ``configs/backbones/<backbone>.yaml`` + the
    preset's overrides + the command line's ``key=value`` overrides, and runs as its own process:
    ``python -m rlmin.cli train <task.yaml> <backbone.yaml> <overrides> run_dir=<out>/<task>/<backbone>/seed<k>
    train.seed=<k> train.progress=false [train.num_threads=<cores/workers>]``; its output goes to
    ``<run_dir>/train.log`` and its exact command line to ``<run_dir>/command.txt``. Every
    invocation of the driver is appended to ``<out>/repro_commands.txt`` and the whole plan is
    written to ``<out>/grid.json``. Runs are sequential, or ``--workers N`` at a time, each with
    ``train.num_threads = cores // N`` (unless the overrides set it).

Resuming and spreading the work (no new code needed)
    A run whose ``results.json`` exists is finished and skipped, so running the same command
    again resumes the grid. A run that was interrupted after writing a checkpoint continues from
    it (``rlmin train --resume <run_dir>``, with the config it started with); a run without one
    starts over. To spread a grid over processes or machines, give each a disjoint shard of
    it: ``--shard i/n`` (0 <= i < n) takes runs i, i+n, i+2n, ... of the full grid's fixed order
    (tasks, then backbones, then seeds), whatever is already finished, so the n shards always
    partition the grid. Run shard i on machine i with the same ``--out`` path (or a shared
    filesystem), copy the run folders into one folder, and ``rlmin repro report`` that folder.

Presets
    ``small``: hopper-medium; mingru, minlstm, transformer, bc; seeds 0, 1, 2 (12 runs), sized
    for a 2-core CPU in under an hour with ``--workers 2`` (see ``SMALL_OVERRIDES`` for the
    steps, batch and evaluation episodes, and what they cost). Not DT's protocol: a smoke-scale
    reproduction whose numbers say that the pipeline learns, not what the methods reach.
    ``full``: {hopper, halfcheetah, walker2d} x {medium, medium-replay, medium-expert}; mingru,
    minlstm, transformer, gru, lstm, and bc; seeds 0-4 (270 runs); the task configs' Decision
    Transformer defaults (100k steps, batch 64, lr 1e-4, 10k warmup, 100 eval episodes, an
    evaluation every 10k steps). Meant for a GPU box, or for many machines with ``--shard``.
    The datasets must be on disk (Minari's ``mujoco/<env>/<level>-v0`` via ``minari download``,
    or built with ``rlmin data build``); ``rlmin train`` builds a missing ``rlmin/...`` dataset
    from a shipped behaviour policy where there is one. Before a parallel grid starts, each task's
    dataset is loaded (built if need be) once, so that workers do not build it side by side.

The report (``report``): every ``results.json`` under the folder, one row per (dataset, agent,
training steps, target return). Headline: the last-iterate normalised score, mean ± std (ddof=1)
over seeds, with a 95% percentile-bootstrap CI of that mean and the IQM over seeds
(``rlmin.stats``); the raw return beside it; best-during-training only in its own labelled
column. Scores are Minari/Gymnasium-v5 numbers; the Decision Transformer paper's D4RL-v2 scores
sit in a separate column labelled as not comparable.
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
from typing import Callable, Iterable, Sequence

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
RESULTS = "results.json"
COMMAND_FILE = "command.txt"
LOG_FILE = "train.log"
DRIVER_LOG = "repro_commands.txt"
GRID_FILE = "grid.json"

# The small preset: the quickstart's model (d_model 64, 2 layers, DT's interleaved tokens, K=20)
# for 3k steps at lr 1e-3, every agent alike (BC: a 64x64 MLP, the behaviour actor's own size).
# On this project's 2-core CPU one step takes ~80 ms of one core under load, so a run is ~5
# core-minutes plus evaluation (10 episodes x the 2 hopper targets, every 1k steps); with
# --workers 2 the 12 runs take about half an hour.
SMALL_OVERRIDES = (
    "agent.d_model=64",
    "agent.n_layers=2",
    "train.steps=3000",
    "train.batch_size=64",
    "train.lr=1e-3",
    "train.warmup_steps=300",
    "train.eval_every=1000",
    "train.log_every=50",
    "train.checkpoint_every=500",
    "eval.episodes=10",
)
BACKBONE_ORDER = ("mingru", "minlstm", "transformer", "gru", "lstm", "bc")
ENVS = ("hopper", "halfcheetah", "walker2d")
LEVELS = ("medium", "medium-replay", "medium-expert")

# Decision Transformer paper (Chen et al. 2021), D4RL-v2 normalised scores (DESIGN.md). D4RL-v2 envs
# and reference returns: never comparable with rlmin's Minari / Gymnasium-v5 numbers.
DT_PAPER_D4RL_V2 = {
    ("halfcheetah", "medium"): 42.6, ("halfcheetah", "medium-replay"): 36.6,
    ("halfcheetah", "medium-expert"): 86.8,
    ("hopper", "medium"): 67.6, ("hopper", "medium-replay"): 82.7, ("hopper", "medium-expert"): 107.6,
    ("walker2d", "medium"): 74.0, ("walker2d", "medium-replay"): 66.6,
    ("walker2d", "medium-expert"): 108.1,
}
_TASK_LEVEL = re.compile(r"(?P<env>hopper|halfcheetah|walker2d)[-/](?P<level>medium-replay|"
                         r"medium-expert|medium)(?=$|-v\d|[^a-z-])")


class ReproError(ValueError):
    """A grid that cannot be planned or run as asked; the message says what to change."""


@dataclass(frozen=True)
class Preset:
    name: str
    tasks: tuple[str, ...]
    backbones: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()
    workers: int = 1
    description: str = ""


PRESETS = {
    "small": Preset("small", ("hopper-medium",), ("mingru", "minlstm", "transformer", "bc"),
                    (0, 1, 2), SMALL_OVERRIDES, workers=2,
                    description="hopper-medium, 4 agents x 3 seeds, 3k steps: a 2-core CPU "
                                "in under an hour"),
    "full": Preset("full", tuple(f"{e}-{lv}" for e in ENVS for lv in LEVELS),
                   ("mingru", "minlstm", "transformer", "gru", "lstm", "bc"), (0, 1, 2, 3, 4),
                   (), workers=1,
                   description="3 envs x 3 levels x 6 agents x 5 seeds, DT's defaults: a GPU box"),
}


# ============================================================================ the grid
@dataclass(frozen=True)
class Run:
    """One cell of the grid: a task, a backbone config and a seed."""

    task: str
    backbone: str
    seed: int
    run_dir: Path
    config_files: tuple[str, ...]
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.task}/{self.backbone}/seed{self.seed}"

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
         overrides: Sequence[str] = (), config_root: Path = CONFIG_ROOT) -> list[Run]:
    """The grid in its fixed order: tasks, then backbones, then seeds."""
    if not tasks or not backbones or not seeds:
        raise ReproError("a grid needs at least one task, one backbone and one seed")
    if len(set(seeds)) != len(seeds):
        raise ReproError(f"seeds repeat: {list(seeds)}")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ReproError(f"overrides must look like key=value, got {bad}")
    owned = [o for o in overrides if o.split("=", 1)[0] in ("run_dir", "train.seed")]
    if owned:
        raise ReproError(f"{owned}: the driver sets run_dir and train.seed for every run itself")
    out_dir = Path(out_dir)
    runs = []
    for task in tasks:
        task_file = _config_path("tasks", task, config_root)
        for backbone in backbones:
            bb_file = _config_path("backbones", backbone, config_root)
            for seed in seeds:
                runs.append(Run(task, backbone, int(seed), out_dir / task / backbone / f"seed{seed}",
                                (task_file, bb_file), tuple(overrides)))
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
        code = ("import sys; from rlmin.config import load_config; from rlmin.dataset import "
                "load_dataset_for; d = load_dataset_for(load_config(sys.argv[1:3], sys.argv[3:]).data); "
                "print('dataset ready:', d.dataset_id, d.data.num_steps, 'steps')")
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
            key = (r.config_files[0], r.overrides)
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
    for opt in ("preset", "out", "tasks", "backbones", "seeds", "workers", "cores", "shard"):
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
    doc = {**info, "runs": [{"name": r.name, "task": r.task, "backbone": r.backbone,
                             "seed": r.seed, "run_dir": str(r.run_dir),
                             "command": shlex.join(r.argv())} for r in runs]}
    (out_dir / GRID_FILE).write_text(json.dumps(doc, indent=1))


# ============================================================================ collecting
def _targets_of(block: dict | None) -> dict:
    return (block or {}).get("targets", {}) if isinstance(block, dict) else {}


def run_label(res: dict) -> str:
    """``mingru``, ``bc``, ... with what sets the run apart from the backbone config's defaults."""
    cfg = res.get("config") or {}
    label = "bc" if res.get("agent") == "bc" else str(res.get("backbone"))
    data, agent = cfg.get("data", {}), cfg.get("agent", {})
    if data.get("mode") == "episode":
        label += f" [episode L={data.get('seq_len')}]"
    if agent.get("token_layout") == "stacked" and res.get("agent") != "bc":
        label += " [stacked]"
    act = res.get("act_mode") or cfg.get("eval", {}).get("mode") or agent.get("act_mode")
    default = "window" if res.get("backbone") == "transformer" else "carry"
    if act and act != default and res.get("agent") != "bc":
        label += f" [act={act}]"
    return label


def task_level(*names: str | None) -> tuple[str, str] | None:
    for name in names:
        m = _TASK_LEVEL.search(name or "")
        if m:
            return m["env"], m["level"]
    return None


def load_run(path: Path) -> dict:
    """One results.json as a flat record for the report."""
    res = json.loads(Path(path).read_text())
    ds = res.get("dataset") or {}
    cfg = res.get("config") or {}
    run_dir = Path(path).parent
    targets = {}
    for key, t in _targets_of(res.get("last_iterate")).items():
        best = None
        for h in res.get("history") or []:  # best of this target over the evaluations
            v = (h.get("targets") or {}).get(key, {}).get("normalized_mean")
            if v is not None and (best is None or v > best):
                best = v
        if best is None:  # older layout: the best_during_training block only
            best = _targets_of(res.get("best_during_training")).get(key, {}).get("normalized_mean")
        targets[key] = {"target": t.get("target_return", float(key)), "raw": t.get("return_mean"),
                        "normalized": t.get("normalized_mean"), "best_normalized": best,
                        "episodes": t.get("episodes")}
    commands = []  # every launch of the run, in order (a resumed run has several)
    if (run_dir / COMMAND_FILE).is_file():
        commands = [ln for ln in (run_dir / COMMAND_FILE).read_text().splitlines()
                    if ln.strip() and not ln.startswith("#")]
    dataset_name = (cfg.get("data") or {}).get("dataset")
    return {
        "path": str(path), "run_dir": str(run_dir), "dataset_id": ds.get("id") or dataset_name,
        "dataset_name": dataset_name, "env_id": res.get("env_id") or ds.get("env_id"),
        "task_level": task_level(dataset_name, ds.get("id")),
        "label": run_label(res), "backbone": res.get("backbone"), "agent": res.get("agent"),
        "seed": res.get("seed"), "steps": res.get("step"), "targets": targets,
        "ref_min": ds.get("ref_min"), "ref_max": ds.get("ref_max"),
        "ref_source": ds.get("ref_source"), "behaviour_normalized": ds.get("behaviour_normalized"),
        "behaviour_return": ds.get("behaviour_return"),
        "eval_episodes": (res.get("last_iterate") or {}).get("episodes"), "commands": commands,
    }


def collect(out_dir) -> list[dict]:
    """Every results.json under ``out_dir`` (any depth), as :func:`load_run` records."""
    records = []
    for path in sorted(Path(out_dir).rglob(RESULTS)):
        try:
            records.append(load_run(path))
        except (json.JSONDecodeError, OSError, AttributeError, TypeError) as e:
            print(f"warning: skipping {path}: {e}", file=sys.stderr)
    return records


def _label_key(label: str):
    base = label.split(" ")[0]
    return (BACKBONE_ORDER.index(base) if base in BACKBONE_ORDER else len(BACKBONE_ORDER), label)


def aggregate(records: Sequence[dict], n_resamples: int | None = None, seed: int | None = None) -> list[dict]:
    """One row per (dataset, agent label, training steps, target), in a stable order."""
    from rlmin import stats

    kw = {}
    if n_resamples is not None:
        kw["n_resamples"] = n_resamples
    if seed is not None:
        kw["seed"] = seed
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    target_order: dict[tuple, list[str]] = {}
    for rec in records:
        for key, t in rec["targets"].items():
            gkey = (rec["dataset_id"], rec["label"], rec["steps"], key)
            groups.setdefault(gkey, []).append((rec, t))
            order = target_order.setdefault(rec["dataset_id"], [])
            if key not in order:
                order.append(key)
    datasets = sorted({g[0] for g in groups}, key=lambda d: (
        (ENVS.index(task_level(d)[0]), LEVELS.index(task_level(d)[1])) if task_level(d) else (9, 9),
        str(d)))
    rows = []
    for gkey in sorted(groups, key=lambda g: (datasets.index(g[0]), _label_key(g[1]), g[2] or 0,
                                              target_order[g[0]].index(g[3]))):
        members = sorted(groups[gkey], key=lambda m: (m[0]["seed"] is None, m[0]["seed"]))
        recs = [m[0] for m in members]
        norm = [m[1]["normalized"] for m in members]
        raw = [m[1]["raw"] for m in members]
        best = [m[1]["best_normalized"] for m in members]
        first = recs[0]
        tl = first["task_level"]
        row = {
            "dataset": gkey[0], "label": gkey[1], "steps": gkey[2], "target_key": gkey[3],
            "target": members[0][1]["target"], "seeds": [r["seed"] for r in recs], "n": len(recs),
            "run_dirs": [r["run_dir"] for r in recs], "env_id": first["env_id"],
            "eval_episodes": sorted({r["eval_episodes"] for r in recs if r["eval_episodes"]}),
            "normalized": stats.summarize(norm, **kw) if None not in norm else None,
            "raw": stats.summarize(raw, **kw) if None not in raw else None,
            "best_normalized": stats.summarize(best, **kw) if best and None not in best else None,
            "dt_paper_d4rl_v2": DT_PAPER_D4RL_V2.get(tuple(tl)) if tl else None,
            "ref": {"min": first["ref_min"], "max": first["ref_max"], "source": first["ref_source"]},
            "behaviour_normalized": first["behaviour_normalized"],
        }
        if len(set(row["seeds"])) != len(row["seeds"]):
            row["warning"] = f"repeated seeds {row['seeds']}: runs from different grids mixed?"
        rows.append(row)
    return rows


# ============================================================================ learning curves
CURVE_TAGS = ("train/loss", "eval/normalized_mean/target_")


def read_scalars(tb_dir, prefixes: Sequence[str] = CURVE_TAGS) -> dict[str, tuple[list, list]]:
    """{tag: (steps, values)} for the scalar tags starting with any of ``prefixes``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb_dir = Path(tb_dir)
    if not tb_dir.is_dir():
        return {}
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        if any(tag.startswith(p) for p in prefixes):
            events = acc.Scalars(tag)
            by_step = {e.step: e.value for e in events}  # last write of a step wins
            steps = sorted(by_step)
            out[tag] = (steps, [by_step[s] for s in steps])
    return out


def collect_curves(records: Sequence[dict]) -> dict:
    """{dataset: {label: {tag: [(steps, values) per run]}}} from each run's ``tb`` folder."""
    curves: dict = {}
    for rec in records:
        scalars = read_scalars(Path(rec["run_dir"]) / "tb")
        per = curves.setdefault(rec["dataset_id"], {}).setdefault(rec["label"], {})
        for tag, series in scalars.items():
            per.setdefault(tag, []).append(series)
    return curves


# ============================================================================ the report
def _pm(s: dict | None, digits: int) -> str:
    if not s:
        return "—"
    std = "n/a" if s["std"] is None else f"{s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {std}"


def _ci(s: dict | None) -> str:
    return "—" if not s else f"[{s['ci_low']:.1f}, {s['ci_high']:.1f}]"


def _cell(v, digits=1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def format_table(rows: Sequence[dict]) -> str:
    head = ("| dataset (Minari) | agent | target | steps | seeds | **normalised, last iterate** "
            "(mean ± std) | 95% CI of mean (bootstrap) | IQM | raw return, last iterate "
            "(mean ± std) | best during training (normalised; optimistic, not the headline) "
            "| DT paper (D4RL-v2, not comparable) |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n = r["normalized"]
        lines.append(
            f"| {r['dataset']} | {r['label']} | {r['target_key']} | {r['steps']} | {r['n']} | "
            f"{_pm(n, 1)} | {_ci(n)} | {_cell(n and n['iqm'])} | {_pm(r['raw'], 0)} | "
            f"{_pm(r['best_normalized'], 1)} | {_cell(r['dt_paper_d4rl_v2'])} |")
    return "\n".join(lines)


def _driver_commands(out_dir: Path) -> list[str]:
    path = out_dir / DRIVER_LOG
    if not path.is_file():
        return []
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def write_report(out_dir, rows: Sequence[dict], records: Sequence[dict], curves_ok: bool,
                 scores_ok: bool, n_resamples: int, seed: int) -> Path:
    out_dir = Path(out_dir)
    lines = [
        "# rlmin reproduction report", "",
        f"{len(records)} runs (results.json) under `{out_dir}`; written "
        f"{datetime.now().isoformat(timespec='seconds')} by `rlmin repro report {out_dir}`.", "",
        "**What the numbers are.** Minari datasets, evaluated in Gymnasium v5 MuJoCo envs. "
        "Normalised score = 100 · (R − ref_min) / (ref_max − ref_min) with each dataset's "
        "reference returns (listed below with their source). These are not D4RL-v2 scores: the "
        "DT paper column is on D4RL-v2 datasets, v2 envs and D4RL's reference returns, and is "
        "shown for orientation only.", "",
        "**Headline rule.** The last-iterate policy (after the final training step), one row "
        "per target return (the task's targets, the first the higher); mean ± sample std "
        f"(ddof=1) over seeds. 95% CI: percentile bootstrap of the mean over seeds "
        f"({n_resamples:,} resamples, seed {seed}); with 3-5 seeds it cannot show more spread "
        "than the seeds have. IQM: interquartile mean over seeds, the runs across the 25%/75% "
        "quantiles weighted by the fraction inside (with 4k runs this equals "
        "`scipy.stats.trim_mean(x, 0.25)`, rliable's IQM). Best during training: for each run "
        "the highest evaluation of that target at any evaluation during training (the final one "
        "included), then the mean ± std over seeds; it picks the best of several noisy "
        "evaluations, so it is optimistic, and is never the headline.", "",
        format_table(rows), "",
    ]
    warnings = [f"- {r['dataset']} / {r['label']} / {r['target_key']}: {r['warning']}"
                for r in rows if r.get("warning")]
    if warnings:
        lines += ["**Warnings**", "", *warnings, ""]
    lines += ["## Datasets and reference returns", "",
              "| dataset | env | ref_min | ref_max | behaviour policy (normalised) | "
              "eval episodes per target | reference source |", "|---|---|---:|---:|---:|---:|---|"]
    seen = set()
    for r in rows:
        if r["dataset"] in seen:
            continue
        seen.add(r["dataset"])
        eps = sorted({e for x in rows if x["dataset"] == r["dataset"] for e in x["eval_episodes"]})
        lines.append(f"| {r['dataset']} | {r['env_id']} | {_cell(r['ref']['min'], 2)} | "
                     f"{_cell(r['ref']['max'], 2)} | {_cell(r['behaviour_normalized'])} | "
                     f"{', '.join(map(str, eps)) or '—'} | {r['ref']['source'] or '—'} |")
    lines += ["", "## Plots", ""]
    lines.append("![scores](scores.png)" if scores_ok else "(no scores.png: no normalised scores)")
    lines.append("")
    lines.append("Bars: mean normalised last-iterate score over seeds; whiskers: the 95% bootstrap "
                 "CI; dots: the seeds.")
    lines += ["", "![learning curves](curves.png)" if curves_ok else
              "(no curves.png: no TensorBoard events found)", "",
              "Learning curves from each run's TensorBoard events (`<run_dir>/tb`): train/loss "
              "and eval/normalized_mean per target over training steps; lines are the mean over "
              "seeds, bands the min-max over seeds.", "", "## Commands", ""]
    driver = _driver_commands(out_dir)
    if driver:
        lines += ["The driver invocations that made this folder (`repro_commands.txt`):", "",
                  "```", *driver, "```", ""]
    lines += ["Each run's exact commands (`<run_dir>/command.txt`; a resumed run lists each "
              "launch):", "", "<details><summary>" + f"{len(records)} runs" + "</summary>", "",
              "```"]
    for rec in sorted(records, key=lambda r: r["run_dir"]):
        lines += rec["commands"] or [f"# {rec['run_dir']}: no command.txt (not run by the driver)"]
    lines += ["```", "", "</details>", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def report(out_dir, n_resamples: int | None = None, seed: int | None = None,
           echo: Callable[[str], None] = print) -> dict:
    """Collect the results under ``out_dir``; write report.md, report.json, scores.png, curves.png."""
    from rlmin import plots, stats

    out_dir = Path(out_dir)
    n_resamples = stats.DEFAULT_RESAMPLES if n_resamples is None else n_resamples
    seed = stats.DEFAULT_SEED if seed is None else seed
    records = collect(out_dir)
    if not records:
        raise ReproError(f"no {RESULTS} under {out_dir}: run the grid first "
                         f"(rlmin repro run --out {out_dir} ...)")
    rows = aggregate(records, n_resamples=n_resamples, seed=seed)
    scores_ok = plots.plot_scores(rows, out_dir / "scores.png")
    curves_ok = plots.plot_curves(collect_curves(records), out_dir / "curves.png")
    md = write_report(out_dir, rows, records, curves_ok, scores_ok, n_resamples, seed)
    (out_dir / "report.json").write_text(json.dumps({"rows": rows}, indent=1, default=float))
    echo(format_table(rows))
    echo(f"\nwrote {md}, {out_dir / 'report.json'}"
         + (f", {out_dir / 'scores.png'}" if scores_ok else "")
         + (f", {out_dir / 'curves.png'}" if curves_ok else ""))
    return {"rows": rows, "records": records, "report": md,
            "scores_png": out_dir / "scores.png" if scores_ok else None,
            "curves_png": out_dir / "curves.png" if curves_ok else None}


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
                       description="Run a datasets x backbones x seeds grid of `rlmin train` runs. "
                                   "Finished runs are skipped; --shard i/n splits the grid.")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="small: hopper-medium, 4 agents x 3 seeds on a 2-core CPU in < 1 h; "
                        "full: 9 datasets x 6 agents x 5 seeds, DT defaults (GPU)")
    p.add_argument("--out", required=True, help="grid folder: <out>/<task>/<backbone>/seed<k>")
    p.add_argument("--tasks", help="comma-separated configs/tasks names (replaces the preset's)")
    p.add_argument("--backbones", help="comma-separated configs/backbones names (replaces the preset's)")
    p.add_argument("--seeds", help="a count (3 = seeds 0,1,2) or a list (0,3,7)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs at a time (default: the preset's, else 1); each gets "
                        "train.num_threads = cores // workers")
    p.add_argument("--cores", type=int, default=None, help="cores to share (default: all usable)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only shard I of N (0 <= I < N): runs I, I+N, ... of the full grid")
    p.add_argument("--config-root", default=str(CONFIG_ROOT), help="folder with tasks/ and backbones/")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--no-report", action="store_true", help="do not write the report afterwards")
    p = sub.add_parser("report", help="collect every results.json under a folder into report.md "
                                      "(+ scores.png, curves.png, report.json)")
    p.add_argument("out_dir")
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed (default 0)")


def cmd_run(args, runner=None, echo=print) -> int:
    preset = PRESETS[args.preset] if args.preset else None
    tasks = _names(args.tasks) or (preset.tasks if preset else None)
    backbones = _names(args.backbones) or (preset.backbones if preset else None)
    seeds = _seeds(args.seeds) if args.seeds else (preset.seeds if preset else (0, 1, 2))
    if not tasks or not backbones:
        raise ReproError("give --preset small|full, or --tasks and --backbones")
    if len(seeds) < 3:
        echo(f"note: {len(seeds)} seed(s); the report's CI and IQM need 3 or more to mean much")
    overrides = list(preset.overrides if preset else ()) + list(args.overrides)
    workers = args.workers or (preset.workers if preset else 1)
    out = Path(args.out)
    runs = plan(tasks, backbones, seeds, out, overrides, Path(args.config_root))
    mine = shard(runs, *parse_shard(args.shard)) if args.shard else runs
    if args.dry_run:
        threads = max(1, (args.cores or available_cores()) // workers)
        for r in mine:
            state = "finished" if r.finished else "to run"
            echo(f"# {r.name} ({state})\n{shlex.join(r.argv(num_threads=threads))}")
        echo(f"{len(mine)} runs ({len(pending(mine))} to run) of a {len(runs)}-run grid")
        return 0
    line = record_invocation(out, invocation(args))
    write_grid(out, runs, {"command": line, "preset": args.preset, "tasks": list(tasks),
                           "backbones": list(backbones), "seeds": list(seeds),
                           "overrides": overrides, "shard": args.shard})
    outcome = run_grid(mine, workers=workers, runner=runner, cores=args.cores, echo=echo)
    echo(f"{len(outcome.succeeded)} run(s) finished now, {len(outcome.skipped)} already, "
         f"{len(outcome.failed)} failed")
    if not args.no_report and any(out.rglob(RESULTS)):
        report(out, echo=echo)
    return 1 if outcome.failed else 0


def run_command(args, runner=None, echo=print) -> int:
    """Dispatch parsed ``repro`` arguments (``rlmin repro ...`` and scripts/repro.py)."""
    try:
        if args.repro_command == "run":
            return cmd_run(args, runner, echo)
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
