"""A run dir belongs to one run: refused when it already holds one, locked while the run lives;
and no other command writes the run's own files (``check_output``, the check every writer makes).

The lock is ``filelock`` (an OS-level ``flock``: a crashed process releases it, so a lock is never
stale), held for the life of the run. Beside it, ``lock.owner`` says which process holds it, so a
second ``rlmin train`` on the same dir fails at once naming it.
"""
from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path

from filelock import FileLock, Timeout

from rlmin.checkpoint import TRAINING_KEYS, CheckpointError, checkpoint_dir, list_checkpoints, load_latest
from rlmin.errors import OutputError, RunDirError

#: Files a run writes beside its checkpoints/ and tb/; only the trainer writes them.
RUN_FILES = ("config.yaml", "results.json", "metrics.jsonl", "lock", "lock.owner")


def holds_run(run_dir: Path) -> bool:
    return (run_dir / "config.yaml").exists() or bool(list_checkpoints(run_dir))


def _run_owning(path: Path) -> Path | None:
    """The run dir whose own files (checkpoints/, tb/, config.yaml, results.json, ...) ``path``
    is, or None. Symlinks are followed: a link to a checkpoint is the checkpoint."""
    path = path.resolve()
    if path.name in RUN_FILES and holds_run(path.parent):
        return path.parent
    for folder in path.parents:
        if folder.name in ("checkpoints", "tb") and holds_run(folder.parent):
            return folder.parent
    return None


def check_output(out: Path, *, overwrite: bool = False, may_create: bool = False,
                 flag: str = "--out", source: Path | None = None) -> Path:
    """Before any work: ``out`` is a file path every ``rlmin`` writer may write (one check for all
    of them). Refused: a directory; a run's own files (``checkpoints/``, ``tb/``, config.yaml,
    results.json, metrics.jsonl: only the trainer writes there, not even ``--overwrite``
    replaces them); an existing file unless ``overwrite``; a folder that does not exist (a
    mistyped path creates nothing; ``may_create``: the default path, a run dir's ``eval/``,
    whose parent must exist) or cannot be written; the command's own input (``source``), even
    with ``overwrite``. ``flag`` names the argument in messages."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{flag} {out} is a directory: give a file name")
    if source is not None and out.exists() and out.resolve() == Path(source).resolve():
        raise OutputError(f"{flag} {out} is the file this command reads (--overwrite does not "
                          f"apply): write another file")
    run = _run_owning(out)
    if run is not None:
        raise OutputError(f"{flag} {out} is one of the run {run}'s own files (checkpoints/, tb/, "
                          f"{', '.join(RUN_FILES[:3])}), which only `rlmin train` writes, and "
                          f"--overwrite does not apply to them: write it somewhere else")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputError(f"{flag} {out} already exists: pass --overwrite to replace it, or "
                          f"write another file")
    folder = out.parent
    if not folder.is_dir():
        if not (may_create and folder.parent.is_dir()):
            raise OutputError(f"{flag} {out}: the folder {folder} does not exist; create it "
                              f"first or pick another {flag}")
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write to {folder}: pick another {flag}")
    return out


def read_results(run_dir: Path) -> tuple[dict | None, str | None]:
    """``run_dir/results.json``: (its contents, None); (None, why it cannot be used) for a file
    that is binary, truncated or not a JSON object; (None, None) when there is none."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return None, None
    try:
        doc = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        return None, f"{path} is not text (binary or damaged)"
    except ValueError as e:
        return None, f"{path} is not JSON (truncated?: {getattr(e, 'msg', e)})"
    except OSError as e:
        return None, f"{path} cannot be read ({e.strerror})"
    if not isinstance(doc, dict):
        return None, f"{path} holds a JSON {type(doc).__name__}, not the object a run writes"
    return doc, None


def nothing_to_resume(run_dir: Path, why: str) -> str:
    """The one wording for a run that cannot be resumed: what works is starting again."""
    return (f"the run in {run_dir} {why}, so there is nothing to resume: delete it "
            f"(rm -r {run_dir}) to start the run again there, or pick another run_dir")


NO_CHECKPOINT = "saved no checkpoint (it stopped before its first save)"


def unloadable(error: CheckpointError) -> str:
    """``nothing_to_resume``'s reason when no checkpoint of a run loads (``load_latest``'s error)."""
    return f"has no checkpoint that loads as a training checkpoint ({' '.join(str(error).split())})"


def resume_problem(run_dir: Path) -> str | None:
    """Why ``rlmin train --resume run_dir`` cannot continue, said with the one thing that works
    (no checkpoint, or none that loads as a training checkpoint: start again), or None."""
    if not list_checkpoints(run_dir):
        return nothing_to_resume(run_dir, NO_CHECKPOINT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            load_latest(run_dir, required=TRAINING_KEYS)
        except CheckpointError as e:
            return nothing_to_resume(run_dir, unloadable(e))
    return None


def check_new(run_dir: Path) -> None:
    """Before any work: the dir must not hold a run, and must be writable. A refusal says the one
    thing that works for the run the dir holds: resume it, or (nothing to resume) start again."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run_dir {run_dir} is a file: pick another run_dir")
    if run_dir.is_dir() and holds_run(run_dir):
        holder = _live_holder(run_dir)
        if holder:  # resuming would not help: say who is running it
            raise RunDirError(f"run_dir {run_dir} is in use by {holder}: wait for it to finish, "
                              f"or pick another run_dir")
        results, _ = read_results(run_dir)
        if results is not None:
            raise RunDirError(f"run_dir {run_dir} already holds a run (finished at step "
                              f"{results.get('step', '?')}: results.json): pick another run_dir "
                              f"(`rlmin train --resume {run_dir} train.steps=N` would extend it)")
        problem = resume_problem(run_dir)
        if problem:
            raise RunDirError(f"run_dir {run_dir} already holds a run: {problem}")
        raise RunDirError(f"run_dir {run_dir} already holds a run: resume it with "
                          f"`rlmin train --resume {run_dir}`, or pick another run_dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create run_dir {run_dir} ({e.strerror}): pick a writable "
                          f"run_dir=...") from None
    if not os.access(run_dir, os.W_OK):
        raise RunDirError(f"run_dir {run_dir} is not writable: pick a writable run_dir=...")
    check_writable(run_dir)


def check_writable(run_dir: Path) -> None:
    """Before the first step (new or resumed run): the run dir and its checkpoints/ folder can be
    written, so the first save does not fail after the work."""
    ckpts = checkpoint_dir(run_dir)
    for folder in (run_dir, ckpts):
        if folder.exists() and not folder.is_dir():
            raise RunDirError(f"{folder} is a file, not a folder: the run cannot save there; "
                              f"move it away or pick another run_dir")
        if folder.is_dir() and not os.access(folder, os.W_OK):
            raise RunDirError(f"{folder} is not writable (a read-only mount or permissions): the "
                              f"run could not save its checkpoints; make it writable, or copy "
                              f"the run dir somewhere writable and resume it there")


def _live_holder(run_dir: Path) -> str | None:
    """Who holds the run's lock right now (``lock.owner``), or None when nobody does."""
    if not (run_dir / "lock").exists():
        return None
    probe = FileLock(str(run_dir / "lock"))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        owner = run_dir / "lock.owner"
        return owner.read_text().strip() if owner.exists() else "another process"
    except OSError:  # a read-only run dir: nobody can be writing to it
        return None
    probe.release()
    return None


class RunLock:
    """``with RunLock(run_dir):`` holds the run's lock, or fails at once naming the holder."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.lock = FileLock(str(self.run_dir / "lock"))
        self.owner = self.run_dir / "lock.owner"

    def __enter__(self) -> "RunLock":
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            holder = self.owner.read_text().strip() if self.owner.exists() else "another process"
            raise RunDirError(f"run_dir {self.run_dir} is in use by {holder}: wait for it to "
                              f"finish, or pick another run_dir") from None
        self.owner.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
        return self

    def __exit__(self, *exc) -> None:
        self.owner.unlink(missing_ok=True)
        self.lock.release()
