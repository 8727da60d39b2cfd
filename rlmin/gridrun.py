"""One run of a grid and its files: the file names, the run's state on disk, and one attempt at it
(start, end, outcome), shared by the grid driver (rlmin/grid.py), its submitit launcher
(rlmin/launch.py) and the report (rlmin/report.py)."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator, Sequence

RESULTS = "results.json"
COMMAND_FILE = "command.txt"
LOG_FILE = "train.log"
DRIVER_LOG = "repro_commands.txt"
GRID_FILE = "grid.json"
FAILED_FILE = "failed.json"
CLAIM_FILE = "attempt.lock"  # held by the driver of an attempt (the trainer holds "lock")
SUBMITIT_DIR = ".submitit"  # submitit's pickles and job logs, under <out>
# Exit codes of a run stopped from outside (a signal), not by an error of its own: the trainer's
# 130/143 after saving on SIGINT/SIGTERM, a shell's 128+9, or killed outright (SIGKILL: the OOM
# killer, a scheduler). Such a run resumes from its last checkpoint; it has not failed.
STOPPED_CODES = frozenset({130, 143, 137, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL})
# Written before each recorded command line: they change what a run does.
RECORDED_ENV = ("MINARI_DATASETS_PATH", "CUDA_VISIBLE_DEVICES")


def _env_prefix() -> list[str]:
    """``NAME=value`` for the environment variables that change what a run does, when set."""
    return [f"{k}={os.environ[k]}" for k in RECORDED_ENV if os.environ.get(k)]


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
        """A readable results.json: the trainer writes it last, atomically, as one JSON object."""
        path = self.run_dir / RESULTS
        return path.is_file() and results_problem(path) is None

    def failure(self) -> dict | None:
        """What ``failed.json`` says of this run's last attempt, or None (no failure recorded)."""
        return read_failure(self.run_dir)

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


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ============================================================================ a run's state on disk
def results_problem(path: Path) -> str | None:
    """Why an existing results.json is not a finished run's, or None when it is one. The trainer
    writes it atomically as one JSON object: anything else was damaged (a truncated copy, a disk
    error) or put there by hand."""
    try:
        doc = json.loads(path.read_bytes())
    except UnicodeDecodeError:  # before ValueError: it is one
        return "is not text"
    except ValueError as e:
        return f"is not JSON ({getattr(e, 'msg', e)})"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not isinstance(doc, dict):
        return f"holds a JSON {type(doc).__name__}, not an object"
    if not isinstance(doc.get("last_iterate"), dict):  # what every report reads first
        return "has no last_iterate scores (not a trainer's results)"
    return None


def read_failure(run_dir: Path) -> dict | None:
    path = Path(run_dir) / FAILED_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = None
    return doc if isinstance(doc, dict) else {"error": f"{FAILED_FILE} is unreadable"}


def last_error_line(log_path: Path, limit: int = 300) -> str | None:
    """The last non-empty line of a train.log (the trainer's `error: ...` line, or a traceback's
    exception line), at most ``limit`` characters."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))  # the tail is enough
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    line = next((ln.strip() for ln in reversed(lines) if ln.strip()), None)
    return line if line is None or len(line) <= limit else line[:limit - 3] + "..."


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def set_aside(path: Path, tag: str) -> Path:
    """Rename ``path`` to ``<name>.<tag>-<time>`` (never over an existing file); returns the new path."""
    target = path.with_name(f"{path.name}.{tag}-{_stamp()}")
    n = 1
    while target.exists():  # rename() would replace a file of the same second
        target, n = path.with_name(f"{path.name}.{tag}-{_stamp()}-{n}"), n + 1
    path.rename(target)
    return target


def _held(lock: Path) -> bool:
    """Whether a process holds the OS lock on ``lock``: probed without waiting and released at once
    (as rlmin.rundir does)."""
    from filelock import FileLock, Timeout

    if not lock.exists():
        return False
    probe = FileLock(str(lock))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:  # a read-only copy of a grid: nobody trains in it
        return False
    probe.release()
    return False


def lock_holder(run_dir: Path) -> str | None:
    """Who holds the run's lock (``lock.owner``: "pid N on HOST") while a trainer runs in it, else
    None."""
    if not _held(Path(run_dir) / "lock"):
        return None
    try:
        return (Path(run_dir) / "lock.owner").read_text().strip() or "another process"
    except OSError:
        return "another process"


def claimed(run_dir: Path) -> bool:
    """Whether a grid driver holds the run's attempt lock: true from before its trainer starts (and
    takes ``lock``) until the trainer exits."""
    return _held(Path(run_dir) / CLAIM_FILE)


@contextlib.contextmanager
def claim_attempt(run: Run) -> Iterator[str | None]:
    """``with claim_attempt(run) as taken:`` holds the run's attempt lock for one attempt, from
    before :func:`begin_attempt` until the trainer exits. ``taken`` is None when the attempt is
    ours, else why not: "finished elsewhere" or "running elsewhere". Two drivers of one grid (a second
    terminal, a resubmitted job array) then never both start a run: the trainer takes its own lock
    only seconds after it starts, and in between begin_attempt would set aside the files of the
    other's run (its tb/ vanishes under it, and it dies)."""
    from filelock import FileLock, Timeout

    run.run_dir.mkdir(parents=True, exist_ok=True)
    claim = FileLock(str(run.run_dir / CLAIM_FILE))
    try:
        claim.acquire(timeout=0)
    except Timeout:
        yield "running elsewhere"
        return
    try:
        if run.finished:  # another driver finished it since this one looked
            yield "finished elsewhere"
        elif lock_holder(run.run_dir):  # a trainer started by hand, not by a driver
            yield "running elsewhere"
        else:
            yield None
    finally:
        claim.release()


def begin_attempt(run: Run, argv: Sequence[str]) -> None:
    """Before a run (re)starts: drop its failure record (train.log keeps the story), set aside what
    an attempt without a checkpoint left (the trainer refuses a run dir that holds a config.yaml it
    cannot resume), and append the command to command.txt."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / FAILED_FILE).unlink(missing_ok=True)
    if not run.has_checkpoint() and (run.run_dir / "config.yaml").exists():
        for name in ("config.yaml", "metrics.jsonl", "tb"):
            if (run.run_dir / name).exists():
                set_aside(run.run_dir / name, "earlier")
    stamp = datetime.now().isoformat(timespec="seconds")
    with open(run.run_dir / COMMAND_FILE, "a") as f:
        f.write(f"# {stamp} on {platform.node()}, cwd {os.getcwd()}\n"
                f"{shlex.join([*_env_prefix(), *argv])}\n")


def finish_attempt(run: Run, code: int, error: str | None = None) -> str:
    """"finished", "interrupted" (a signal stopped it: it resumes) or "failed" (``failed.json``
    written, with ``error`` or the last line of train.log)."""
    if code == 0 and run.finished:
        return "finished"
    if code in STOPPED_CODES:
        return "interrupted"
    from rlmin.checkpoint import atomic_write_bytes

    doc = {"exit_code": code, "time": datetime.now().isoformat(timespec="seconds"),
           "host": platform.node(),
           "error": error or last_error_line(run.run_dir / LOG_FILE)
           or (f"exit 0 but no readable {RESULTS}" if code == 0 else None)}
    run.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run.run_dir / FAILED_FILE,
                       lambda f: f.write(json.dumps(doc, indent=1).encode()))
    return "failed"


@dataclass
class Triage:
    """A launch's runs sorted before anything starts."""

    finished: list[Run] = field(default_factory=list)
    running: list[Run] = field(default_factory=list)  # a live trainer holds the run dir's lock
    failed: list[Run] = field(default_factory=list)  # failed before and left alone
    todo: list[Run] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.finished)} finished (skipped)"]
        if self.running:
            parts.append(f"{len(self.running)} running elsewhere (skipped)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed before (left alone: --rerun-failed runs "
                         "them again)")
        return ", ".join(parts) + f", {len(self.todo)} to run"


def triage(runs: Sequence[Run], skip_failed: bool = False, echo=print) -> Triage:
    """Sort runs into finished, running elsewhere, failed (left alone when ``skip_failed``) and to
    run. A results.json that is not a finished run's is moved aside first (one line each)."""
    out = Triage()
    for r in runs:
        path = r.run_dir / RESULTS
        problem = results_problem(path) if path.is_file() else None
        if problem and not lock_holder(r.run_dir):
            moved = set_aside(path, "broken")
            echo(f"{r.name}: {RESULTS} {problem}, so the run is not finished: moved it to "
                 f"{moved.name} and the run goes again")
        if r.finished:
            out.finished.append(r)
        elif lock_holder(r.run_dir):
            out.running.append(r)
        elif skip_failed and r.failure() is not None:
            out.failed.append(r)
        else:
            out.todo.append(r)
    return out


# ============================================================================ attempts
class SubprocessRunner:
    """Runs ``rlmin train`` commands as child processes (the driver's default runner)."""

    def prepare(self, run: Run) -> int:
        """Load (and, where the config allows, build) the run's dataset once, in a child process."""
        return subprocess.call([sys.executable, "-m", "rlmin.data.prepare", *run.config_files,
                                *run.overrides])

    def run(self, run: Run, argv: list[str], log_path: Path) -> int:
        with open(log_path, "a") as log:
            return subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)


@dataclass
class GridOutcome:
    planned: list[Run]
    skipped: list[Run] = field(default_factory=list)
    succeeded: list[Run] = field(default_factory=list)
    failed: list[tuple[Run, int]] = field(default_factory=list)
    interrupted: list[Run] = field(default_factory=list)  # stopped by a signal: they resume
    left_failed: list[Run] = field(default_factory=list)  # failed before, not rerun
    running: list[Run] = field(default_factory=list)  # running elsewhere, not started
    submitted: list[Run] = field(default_factory=list)  # on Slurm, not waited for

    @property
    def complete(self) -> bool:
        return not (self.failed or self.interrupted or self.left_failed or self.running
                    or self.submitted)


def prepare_datasets(todo: Sequence[Run], runner=None, echo=print) -> None:
    """Load (building it if missing) each dataset of ``todo`` once, before runs start side by
    side: parallel runs would otherwise build one dataset at once, and all but one would fail."""
    runner = runner or SubprocessRunner()
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


def report_attempt(outcome: GridOutcome, run: Run, state: str, code: int | None, prefix: str,
                   echo) -> None:
    """File one attempt's end (``finish_attempt``'s or ``claim_attempt``'s state) in ``outcome``
    and say it in a line."""
    if state == "running elsewhere":
        outcome.running.append(run)
        echo(f"{prefix} skipped {run.name}: {lock_holder(run.run_dir) or 'another driver'} "
             "is running it")
    elif state == "finished elsewhere":
        outcome.skipped.append(run)
        echo(f"{prefix} skipped {run.name}: another driver finished it")
    elif state == "finished":
        outcome.succeeded.append(run)
        echo(f"{prefix} done  {run.name}")
    elif state == "interrupted":
        outcome.interrupted.append(run)
        echo(f"{prefix} stopped {run.name} (exit {code}): the same command resumes it from its "
             "last checkpoint")
    else:
        outcome.failed.append((run, code))
        error = (run.failure() or {}).get("error")
        echo(f"{prefix} FAILED {run.name} (exit {code}, {'no ' if not run.finished else ''}"
             f"results.json){': ' + error if error else ''}; see {run.run_dir / LOG_FILE}")
