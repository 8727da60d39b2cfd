"""Checkpoints: atomic saves, safe loads, and a fallback when the newest file is damaged.

Layout of a run directory::

    run_dir/checkpoints/step_00001000.pt
    run_dir/checkpoints/step_00002000.pt
    run_dir/checkpoints/latest            # text: the file name of the newest checkpoint

The order of checkpoints is their step number (the file name); ``latest`` is a convenience
pointer for people and scripts and is rewritten after every save.

A payload is a plain dict that must load with ``torch.load(..., weights_only=True)``: tensors,
dicts, lists, tuples, str, int, float, bool, None (plus the few torch types the safe unpickler
allows, such as ``torch.Size`` and ``torch.dtype``). No numpy arrays or numpy scalars, no
dataclasses or other custom objects. :func:`save_checkpoint` checks this before it replaces
anything, so a bad payload fails at save time, not at resume time.

RNG states: :func:`capture_rng_state` returns a weights_only-safe dict covering python
``random``, numpy's global RNG (``np.random.*``, not ``np.random.Generator`` instances), torch's
CPU generator and, when CUDA is available, every CUDA device's generator.
:func:`restore_rng_state` puts them back.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlmin.errors import CheckpointError

__all__ = [
    "CheckpointError",
    "checkpoint_dir",
    "checkpoint_path",
    "list_checkpoints",
    "save_checkpoint",
    "load_checkpoint",
    "load_latest",
    "TRAINING_KEYS",
    "capture_rng_state",
    "restore_rng_state",
]

CHECKPOINT_SUBDIR = "checkpoints"
LATEST_NAME = "latest"
_NAME_RE = re.compile(r"^step_(\d{8,})\.pt$")
_TMP_PREFIX = ".tmp-"


# --------------------------------------------------------------------------------------- paths


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """``run_dir/checkpoints``."""
    return Path(run_dir) / CHECKPOINT_SUBDIR


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """``run_dir/checkpoints/step_{step:08d}.pt``."""
    return checkpoint_dir(run_dir) / f"step_{int(step):08d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a run, oldest first (ordered by step). Temp files are never listed."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


# --------------------------------------------------------------------------------------- save


def _fsync_dir(d: Path) -> None:
    """Make a rename durable (POSIX). A no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(final: Path, write_fn, check_fn=None) -> None:
    """Write via ``write_fn(fileobj)`` to a temp file next to ``final``, fsync, optionally
    ``check_fn(tmp_path)``, then ``os.replace`` it onto ``final``. On any error the temp file is
    removed and ``final`` is untouched."""
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f"{_TMP_PREFIX}{final.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        if check_fn is not None:
            check_fn(tmp)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(final.parent)


def atomic_write_bytes(final: str | os.PathLike, write_fn) -> None:
    """Write a file atomically (temp file beside it, fsync, rename); nothing is left on failure.
    Disk-full errors say so."""
    final = Path(final)
    try:
        _atomic_write(final, write_fn)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CheckpointError(f"no space left on device while writing {final}: free some "
                                  f"disk space and try again") from e
        raise


def atomic_torch_save(obj: Any, final: str | os.PathLike) -> None:
    atomic_write_bytes(final, lambda f: torch.save(obj, f))


# Exact builtin types only: subclasses such as numpy.float64 (a float) or a str Enum are refused.
_SAFE_BUILTINS = (str, bytes, int, float, bool, complex, type(None))
_SAFE_TORCH = (torch.Tensor, torch.Size, torch.dtype, torch.device)


def _find_unsafe(obj: Any, path: str = "payload") -> str | None:
    """Path and type of the first value that weights_only loading would refuse (best effort)."""
    if type(obj) in _SAFE_BUILTINS or isinstance(obj, _SAFE_TORCH):
        return None
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if type(k) not in _SAFE_BUILTINS:
                return f"{path} has a key of type {type(k).__module__}.{type(k).__qualname__}"
            bad = _find_unsafe(v, f"{path}[{k!r}]")
            if bad:
                return bad
        if type(obj).__module__ not in ("builtins", "collections"):
            return f"{path} is a {type(obj).__module__}.{type(obj).__qualname__}"
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad = _find_unsafe(v, f"{path}[{i}]")
            if bad:
                return bad
        if type(obj) not in (list, tuple):
            return f"{path} is a {type(obj).__module__}.{type(obj).__qualname__}"
        return None
    return f"{path} is a {type(obj).__module__}.{type(obj).__qualname__}"


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    payload: dict,
    keep: int | None = 3,
    verify: bool = True,
) -> Path:
    """Save ``payload`` as ``run_dir/checkpoints/step_{step:08d}.pt`` and return its path.

    The write is atomic: ``torch.save`` into a temp file in the same directory, flush + fsync,
    then ``os.replace``. A crash at any point leaves either the old set of checkpoints or the
    new one, never a half-written ``step_*.pt``. Afterwards ``latest`` is rewritten (also
    atomically) and all but the newest ``keep`` checkpoints are deleted (``keep=None`` keeps all).

    With ``verify`` (default) the temp file is loaded back with ``weights_only=True`` before it
    replaces anything, so a payload holding numpy arrays or custom objects fails here with a
    :class:`CheckpointError` that names the offending entry.
    """
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint payload must be a dict, got {type(payload).__name__}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None (keep all), got {keep}")
    final = checkpoint_path(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)

    def check(tmp):
        try:
            torch.load(tmp, weights_only=True, map_location="cpu")
        except Exception as e:
            if not _refused_global(e):
                raise CheckpointError(f"checkpoint {final} did not load back after writing "
                                      f"({_loader_reason(e)}); is the disk full?") from e
            where = _find_unsafe(payload) or "an entry"
            raise CheckpointError(
                f"refusing to save {final}: {where}, which torch.load(weights_only=True) "
                f"cannot load. Store tensors, plain lists/dicts and python numbers instead "
                f"(e.g. torch.as_tensor(array), float(x), dataclasses.asdict(cfg)). "
                f"Loader said: {_loader_reason(e)}"
            ) from None

    try:
        _atomic_write(final, lambda f: torch.save(payload, f), check if verify else None)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CheckpointError(f"no space left on device while writing {final}: free some "
                                  f"disk space, then resume the run") from e
        raise
    _atomic_write(final.parent / LATEST_NAME, lambda f: f.write((final.name + "\n").encode()))
    if keep is not None:
        _prune(run_dir, keep)
    return final


def _prune(run_dir: str | os.PathLike, keep: int) -> None:
    ckpts = list_checkpoints(run_dir)
    for p in ckpts[:-keep]:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    # Temp files left by a process that was killed mid-save (one writer per run is assumed).
    for p in checkpoint_dir(run_dir).glob(f"{_TMP_PREFIX}*"):
        try:
            p.unlink()
        except OSError:
            pass


# --------------------------------------------------------------------------------------- load


def _loader_reason(e: BaseException) -> str:
    """The useful line of torch's (long) loader message."""
    msg = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", msg, re.S)
    if m:
        msg = m.group(1)
    msg = " ".join(msg.split())
    if "weights_only" in msg:  # torch's advice to load unsafely: rlmin never passes it on
        msg = ""
    if len(msg) > 300:
        msg = msg[:300] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _refused_global(e: BaseException) -> bool:
    """True when the safe unpickler refused a class/function (as opposed to unreadable bytes).

    torch words it "Unsupported global" or "unsupported GLOBAL" depending on the version, so
    both the exception type and a case-insensitive match on "global" are used.
    """
    return isinstance(e, pickle.UnpicklingError) and "global" in str(e).lower()


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``torch.load(path, weights_only=True, map_location="cpu")``.

    Raises :class:`CheckpointError` (naming the file and what to do) when the file is missing,
    truncated or corrupt, holds objects the safe unpickler refuses, or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        reason = _loader_reason(e)
        if _refused_global(e):
            raise CheckpointError(
                f"refused to load {path}: it holds Python code or objects, not only tensors and "
                f"plain values, and rlmin never runs code from a checkpoint. Use a file written "
                f"by rlmin (a run's checkpoints/step_*.pt or `rlmin export`).",
                reason="it holds Python code or objects, and rlmin never runs code from a "
                       "checkpoint") from e
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt, or not a torch file ({reason}): pass "
            f"another one (a run dir gives its newest loadable checkpoint)",
            reason=f"truncated or corrupt ({reason})") from e
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(payload).__name__}, expected a dict; "
            f"it was not written by rlmin.checkpoint.save_checkpoint",
            reason=f"a {type(payload).__name__}, not a checkpoint")
    return payload


#: What a checkpoint written by the trainer holds (``rlmin train --resume`` needs all of it); an
#: exported policy has the agent and weights but none of the training state.
TRAINING_KEYS = ("step", "model", "optimizer", "scheduler", "sampler", "rng_per_rank", "config",
                 "agent", "eval_spec", "dataset", "eval_history")


def load_latest(run_dir: str | os.PathLike, required: tuple[str, ...] = ()) -> tuple[dict, Path]:
    """Load the newest loadable checkpoint of a run; returns ``(payload, path)``.

    If the newest file is damaged, warns (naming it) and tries the one before, and so on. A file
    that lacks any of the ``required`` keys (e.g. :data:`TRAINING_KEYS`: an exported policy that
    was put into ``checkpoints/``) is skipped the same way. Raises :class:`CheckpointError` when
    the run has no checkpoints, or none of them loads.
    """
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise CheckpointError(
            f"no checkpoints in {checkpoint_dir(run_dir)}: this run never saved one "
            f"(or the directory is wrong)")
    failures: list[str] = []
    for p in reversed(ckpts):
        try:
            payload = load_checkpoint(p)
            missing = [k for k in required if k not in payload]
            if missing:
                what = (f"not a training checkpoint ({payload.get('format') or 'no training state'}"
                        f": it lacks {', '.join(missing)})")
                raise CheckpointError(f"{p} is {what}", reason=what)
        except CheckpointError as e:
            failures.append(f"{p.name}: {e.reason or e}")
            warnings.warn(f"skipping unloadable checkpoint {p}: {e}", RuntimeWarning, stacklevel=2)
            continue
        return payload, p
    raise CheckpointError(
        f"none of the {len(ckpts)} checkpoints in {checkpoint_dir(run_dir)} could be loaded "
        f"(newest first: {'; '.join(failures)})")


# --------------------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict:
    """The state of python ``random``, numpy's global RNG, torch CPU and (if available) CUDA.

    Everything is a tensor, list, int, float, str or None, so the dict can go into a checkpoint
    and be loaded back with ``torch.load(..., weights_only=True)``.
    """
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "python": {"version": int(py_version), "state": [int(x) for x in py_state],
                   "gauss_next": None if py_gauss is None else float(py_gauss)},
        "numpy": {"bit_generator": str(np_name),
                  "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.uint32).astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                  "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`capture_rng_state` captured. Missing parts are left alone.

    CUDA states are restored when CUDA is available; if the number of devices differs from
    the number captured, the common prefix is restored and a warning says so.
    """
    if "python" in state:
        s = state["python"]
        random.setstate((int(s["version"]), tuple(int(x) for x in s["state"]), s["gauss_next"]))
    if "numpy" in state:
        s = state["numpy"]
        keys = torch.as_tensor(s["keys"]).numpy().astype(np.uint32)
        np.random.set_state((s["bit_generator"], keys, int(s["pos"]), int(s["has_gauss"]),
                             float(s["cached_gaussian"])))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    cuda = state.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            warnings.warn("checkpoint has CUDA RNG states but CUDA is not available; "
                          "they were not restored", RuntimeWarning, stacklevel=2)
            return
        n = torch.cuda.device_count()
        if n != len(cuda):
            warnings.warn(f"checkpoint has CUDA RNG states for {len(cuda)} devices, this machine "
                          f"has {n}; restoring the first {min(n, len(cuda))}",
                          RuntimeWarning, stacklevel=2)
        for i in range(min(n, len(cuda))):
            torch.cuda.set_rng_state(torch.as_tensor(cuda[i], dtype=torch.uint8), device=i)
