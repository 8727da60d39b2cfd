"""A run dir belongs to one run: refused when it already holds one, locked while the run lives.

The lock is ``filelock`` (an OS-level ``flock``: a crashed process releases it, so a lock is never
stale), held for the life of the run. Beside it, ``lock.owner`` says which process holds it, so a
second ``rlmin train`` on the same dir fails at once naming it.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from filelock import FileLock, Timeout

from rlmin.checkpoint import list_checkpoints


class RunDirError(ValueError):
    """A run dir that cannot be used for this run; the message says what to do instead."""


def holds_run(run_dir: Path) -> bool:
    return (run_dir / "config.yaml").exists() or bool(list_checkpoints(run_dir))


def check_new(run_dir: Path) -> None:
    """Before any work: the dir must not hold a run, and must be writable."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run_dir {run_dir} is a file: pick another run_dir")
    if run_dir.is_dir() and holds_run(run_dir):
        holder = _live_holder(run_dir)
        if holder:  # resuming would not help: say who is running it
            raise RunDirError(f"run_dir {run_dir} is in use by {holder}: wait for it to finish, "
                              f"or pick another run_dir")
        raise RunDirError(f"run_dir {run_dir} already holds a run: resume it with "
                          f"`rlmin train --resume {run_dir}`, or pick another run_dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create run_dir {run_dir} ({e.strerror}): pick a writable "
                          f"run_dir=...") from None
    if not os.access(run_dir, os.W_OK):
        raise RunDirError(f"run_dir {run_dir} is not writable: pick a writable run_dir=...")


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
