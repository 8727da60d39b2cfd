"""Minari datasets on disk: load (offline first), combine, list, clean up.

Everything here is local unless ``download=True`` is asked for: a missing dataset fails at once
with the command that builds it (``rlmin data build hopper medium``) or downloads it
(``minari download ID``), never after a round of HTTP errors.

Datasets live under ``MINARI_DATASETS_PATH`` (``~/.minari/datasets`` when unset), one folder per
id: ``<root>/<namespace>/<name>-vN/data/{metadata.json, main_data.hdf5}``.

Writing is all-or-nothing (``building``): a dataset is written in a hidden folder
``<root>/.rlmin-build-<id>/`` and moved into place only once complete, so a killed or failed
build never leaves a half dataset where a reader looks, and ``overwrite`` keeps the old dataset
until the new one is complete. The next build removes what a killed one left. A dataset folder
that is there but does not open (an interrupted copy, a build by an older rlmin) is reported as
incomplete by ``dataset_status``, ``load_minari`` and ``list_local``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from rlmin.errors import BadDatasetError, BuildLockedError, DatasetNotFoundError, IncompleteDatasetError

_ID_RE = re.compile(r"^(?:(?P<namespace>[-_\w][-_\w/]*[-_\w]+)/)?(?P<name>[-_\w]+?)-v(?P<version>\d+)$")
#: Metadata key (beside Minari's own) where rlmin stores the mean episode return of the data.
BEHAVIOUR_RETURN_KEY = "behaviour_mean_return"


# ------------------------------------------------------------------------- paths and ids

def datasets_root() -> Path:
    """Where local Minari datasets live (``MINARI_DATASETS_PATH`` or Minari's default)."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


def dataset_dir(dataset_id: str) -> Path:
    """The folder of ``dataset_id`` under the datasets root (not created)."""
    return datasets_root() / dataset_id


def check_dataset_id(dataset_id: str) -> str:
    """Return ``dataset_id`` if it is a valid Minari id ending in ``-vN``, else raise."""
    if not isinstance(dataset_id, str) or not _ID_RE.match(dataset_id):
        raise ValueError(f"malformed dataset id {dataset_id!r}: ids look like "
                         f"'(namespace/)name-vN', e.g. 'rlmin/hopper/medium-v0' (the -vN is required)")
    return dataset_id


def is_local(dataset_id: str) -> bool:
    """True if ``dataset_id`` is on disk and complete (see ``dataset_status``)."""
    return dataset_status(dataset_id) == "complete"


def _incomplete_reason(data_path: Path) -> str | None:
    """Why the Minari data folder ``data_path`` is not a complete dataset, or None if it is.

    Cheap: parses metadata.json and, for HDF5 data, opens the file and counts its episodes.
    """
    meta_file = data_path / "metadata.json"
    if not meta_file.exists():
        return "no metadata.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable metadata.json ({type(exc).__name__}: {exc})"
    if not isinstance(meta, dict) or not {"dataset_id", "total_episodes"} <= meta.keys():
        return "metadata.json lacks dataset_id/total_episodes"
    if meta.get("data_format", "hdf5") == "hdf5":
        main = data_path / "main_data.hdf5"
        if not main.exists():
            return "no main_data.hdf5"
        try:
            import h5py
            with h5py.File(main, "r") as f:
                n = len(f.keys())
        except Exception as exc:  # truncated or corrupt file
            return f"unreadable main_data.hdf5 ({type(exc).__name__})"
        if n != meta["total_episodes"]:
            return f"main_data.hdf5 holds {n} episodes, metadata.json says {meta['total_episodes']}"
    return None


def dataset_status(dataset_id: str) -> str:
    """``"missing"``, ``"complete"`` or ``"incomplete: <why>"`` for a local dataset id."""
    path = dataset_dir(check_dataset_id(dataset_id))
    if not path.exists():
        return "missing"
    reason = _incomplete_reason(path / "data")
    return "complete" if reason is None else f"incomplete: {reason}"


def how_to_get(dataset_id: str) -> str:
    """A sentence naming the command(s) that put ``dataset_id`` on disk."""
    parts = dataset_id.split("/")
    name = re.sub(r"-v\d+$", "", parts[-1])
    if len(parts) == 3 and parts[0] == "rlmin":
        return f"build it with `rlmin data build {parts[1]} {name}`"
    if len(parts) == 3 and parts[0] == "mujoco":
        return (f"download it with `minari download {dataset_id}` (needs network), or build a "
                f"local D4RL-style one with `rlmin data build {parts[1]} {name}` "
                f"(id rlmin/{parts[1]}/{name}-v0)")
    return f"download it with `minari download {dataset_id}` (needs network)"


def _data_path_of(path: Path) -> Path | None:
    """The ``data`` folder of a dataset directory, or the folder itself if it is one."""
    for candidate in (path / "data", path):
        if (candidate / "metadata.json").exists():
            return candidate
    return None


# ------------------------------------------------------------------------- load

def load_minari(dataset_id_or_path, download: bool = False):
    """Load a Minari dataset from a local id, a local dataset directory, or (opt-in) the network.

    ``dataset_id_or_path``: an id like ``rlmin/hopper/medium-v0`` looked up under
    ``MINARI_DATASETS_PATH``; a path to a dataset directory (the one holding ``data/``) or to its
    ``data`` folder; or an already loaded ``MinariDataset`` (returned as is).
    ``download``: if the id is not on disk, fetch it with ``minari.download_dataset``. Off by
    default, and nothing remote is contacted unless it is on.
    """
    import minari

    if isinstance(dataset_id_or_path, minari.MinariDataset):
        return dataset_id_or_path
    text = str(dataset_id_or_path)
    path = Path(text).expanduser()
    looks_like_path = (isinstance(dataset_id_or_path, os.PathLike) or path.is_absolute()
                       or text.startswith((".", "~")))
    if looks_like_path or (not _ID_RE.match(text) and path.exists()):
        data_path = _data_path_of(path)
        if data_path is None:
            raise DatasetNotFoundError(f"{path} is not a Minari dataset directory "
                                       f"(no metadata.json in it or in {path / 'data'})")
        return _open(data_path)

    dataset_id = check_dataset_id(text)
    status = dataset_status(dataset_id)
    if status.startswith("incomplete"):
        raise IncompleteDatasetError(
            f"dataset {dataset_id} at {dataset_dir(dataset_id)} is {status} (an interrupted "
            f"build or copy?): {how_to_get(dataset_id)} (a build replaces an incomplete dataset)")
    data_path = _data_path_of(dataset_dir(dataset_id))
    if data_path is None:
        if not download:
            raise DatasetNotFoundError(
                f"dataset {dataset_id} is not on this machine (looked in {dataset_dir(dataset_id)}; "
                f"set MINARI_DATASETS_PATH to look elsewhere): {how_to_get(dataset_id)}, "
                f"or allow downloading (config: data.download=true; Python: download=True).")
        try:
            minari.download_dataset(dataset_id)
        except Exception as exc:  # network, unknown id, auth: one line, the cause chained
            raise DatasetNotFoundError(f"could not download {dataset_id}: {type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        data_path = _data_path_of(dataset_dir(dataset_id))
        if data_path is None:
            raise DatasetNotFoundError(f"downloaded {dataset_id} but found no data in "
                                       f"{dataset_dir(dataset_id)}")
    return _open(data_path)


def _open(data_path: Path):
    """``minari.MinariDataset(data_path)``; metadata it cannot parse (a malformed env_spec or
    eval_env_spec, say) is one error naming the file, not a JSON traceback."""
    import minari

    try:
        return minari.MinariDataset(data_path)
    except Exception as exc:  # noqa: BLE001 (Minari parses metadata.json with json/gymnasium)
        raise BadDatasetError(
            f"{Path(data_path) / 'metadata.json'} cannot be read by Minari ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}): a key it parses (env_spec, eval_env_spec, ...) "
            f"is malformed; fix the file or rebuild the dataset") from exc


# ------------------------------------------------------------------------- writing helpers

def delete_local_dataset(dataset_id: str) -> bool:
    """Delete a local dataset's folder; True if there was one."""
    path = dataset_dir(check_dataset_id(dataset_id))
    if path.exists():
        shutil.rmtree(path)
        return True
    return False


@contextlib.contextmanager
def cleanup_on_failure(dataset_id: str) -> Iterator[Path]:
    """Remove the dataset folder if the block fails after creating it.

    Minari leaves a partial folder behind when creating a dataset fails, and a folder without
    valid metadata makes ``minari list local`` warn for ever after. A folder that existed before
    the block is left alone.
    """
    path = dataset_dir(dataset_id)
    existed = path.exists()
    try:
        yield path
    except BaseException:
        if not existed and path.exists():
            shutil.rmtree(path, ignore_errors=True)
        raise


#: Hidden (Minari skips dot-folders): ``<root>/.rlmin-build-<id with / as +>``, locked by
#: ``<root>/.rlmin-locks/.rlmin-build-<id with / as +>.lock``.
BUILD_PREFIX = ".rlmin-build-"
#: A Minari DataCollector cache folder (``<root>/tmpXXXX``) untouched this long is a killed build's.
STALE_CACHE_SECONDS = 3600


def _build_dir(root: Path, dataset_id: str) -> Path:
    return root / (BUILD_PREFIX + dataset_id.replace("/", "+"))  # '+' never occurs in an id


def _lock(build: Path):
    """The lock of a build folder, in ``<root>/.rlmin-locks/`` (lock files stay: deleting one
    races with its next user; they are empty)."""
    from filelock import FileLock  # an OS lock: released when its process dies, however it dies

    locks = build.parent / ".rlmin-locks"
    locks.mkdir(exist_ok=True)
    return FileLock(str(locks / (build.name + ".lock")), timeout=0)


def write_metadata(data_path: str | Path, updates: dict) -> dict:
    """Add ``updates`` to a dataset's metadata.json atomically (a kill leaves old or new, never
    a half file); returns the new metadata."""
    meta_file = Path(data_path) / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta.update(updates)
    fd, tmp = tempfile.mkstemp(dir=meta_file.parent, prefix=".metadata-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, meta_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return meta


def _json_default(obj):
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _fsync_tree(path: Path) -> None:
    """Flush every file under ``path`` to disk, so the move below publishes data that is there."""
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _discard_build(build: Path, root: Path) -> None:
    """Remove a build folder; first put back a dataset that a killed ``overwrite`` had moved
    aside (``build/replaced``) when nothing took its place."""
    replaced = build / "replaced"
    if replaced.exists():
        target = root / build.name[len(BUILD_PREFIX):].replace("+", "/")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(replaced, target)
    shutil.rmtree(build, ignore_errors=True)


def clean_stale_builds(root: Path | None = None) -> list[Path]:
    """Remove what killed builds left in the datasets root; returns the removed folders.

    That is every ``.rlmin-build-*`` folder whose build lock nobody holds, and every Minari
    DataCollector cache (``tmpXXXX`` holding metadata.json without a dataset_id, as older builds
    left them) untouched for ``STALE_CACHE_SECONDS``.
    """
    from filelock import Timeout

    root = Path(root) if root is not None else datasets_root()
    if not root.is_dir():
        return []
    removed = []
    for build in sorted(root.glob(BUILD_PREFIX + "*")):
        try:
            with _lock(build):
                _discard_build(build, root)
                removed.append(build)
        except Timeout:
            continue  # a build in progress
    now = time.time()
    for cache in sorted(root.glob("tmp*")):
        meta_file = cache / "metadata.json"
        try:
            if (not meta_file.is_file() or "dataset_id" in json.loads(meta_file.read_text())
                    or now - max(f.stat().st_mtime for f in cache.iterdir()) < STALE_CACHE_SECONDS):
                continue
        except (OSError, ValueError):
            continue
        shutil.rmtree(cache, ignore_errors=True)
        removed.append(cache)
    return removed


@contextlib.contextmanager
def building(dataset_id: str, overwrite: bool = False) -> Iterator[Path]:
    """Write ``dataset_id`` with Minari inside the block; it appears in place only if the block
    succeeds and the result opens as a complete dataset.

    Inside the block ``MINARI_DATASETS_PATH`` points at a hidden build folder in the datasets root
    (so Minari's own temporary files land there too, and the final move is a rename on one file
    system); Minari calls that take ``dataset_id`` write there. Yields the dataset's folder in
    the build. Holds a lock on the id for the whole build: a second build of it fails at once
    (``BuildLockedError``). Leftovers of killed builds are removed first (``clean_stale_builds``).
    ``overwrite``: replace an existing dataset, which stays in place until the new one is complete.
    An incomplete existing dataset (one that does not open) is always replaced.
    """
    from filelock import Timeout

    check_dataset_id(dataset_id)
    root = datasets_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / dataset_id
    build = _build_dir(root, dataset_id)
    lock = _lock(build)
    try:
        lock.acquire()
    except Timeout:
        raise BuildLockedError(f"another process is building {dataset_id} right now (it holds "
                               f"{lock.lock_file}); wait for it to finish") from None
    try:
        clean_stale_builds(root)
        status = dataset_status(dataset_id)
        if status == "complete" and not overwrite:
            raise FileExistsError(f"dataset {dataset_id} already exists at {target}; rebuild it "
                                  f"with `--overwrite` (Python: overwrite=True)")
        if status.startswith("incomplete"):
            warnings.warn(f"{dataset_id} at {target} is {status}; it is replaced once the new "
                          f"build is complete", UserWarning, stacklevel=3)
        if build.exists():
            _discard_build(build, root)
        (build / dataset_id).parent.mkdir(parents=True)  # minari.combine_datasets needs it
        old_root = os.environ.get("MINARI_DATASETS_PATH")
        os.environ["MINARI_DATASETS_PATH"] = str(build)
        try:
            yield build / dataset_id
        finally:
            if old_root is None:
                os.environ.pop("MINARI_DATASETS_PATH", None)
            else:
                os.environ["MINARI_DATASETS_PATH"] = old_root
        new = build / dataset_id
        reason = _incomplete_reason(new / "data") if new.exists() else "nothing was written"
        if reason is not None:
            raise RuntimeError(f"building {dataset_id} did not make a complete dataset: {reason}")
        _fsync_tree(new)
        ensure_namespace(dataset_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # overwrite (or an incomplete one): move it aside, then swap
            os.rename(target, build / "replaced")
            try:
                os.rename(new, target)
            except BaseException:
                os.rename(build / "replaced", target)
                raise
        else:
            os.rename(new, target)
    finally:
        try:
            if build.exists():
                _discard_build(build, root)  # puts a moved-aside dataset back if need be
        finally:
            lock.release()


def ensure_namespace(dataset_id: str) -> None:
    """Create the Minari namespace of ``dataset_id`` (with its metadata file) if missing."""
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.namespace import create_namespace, list_local_namespaces

    namespace = parse_dataset_id(dataset_id)[0]
    if namespace is not None and namespace not in list_local_namespaces():
        create_namespace(namespace)


def _agreed(values: Sequence[float | None], what: str) -> float | None:
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    if any(not math.isclose(v, present[0], rel_tol=1e-9, abs_tol=1e-9) for v in present):
        raise ValueError(f"the datasets to combine disagree on {what} ({present}); pass it "
                         f"explicitly")
    return present[0]


def combine_datasets(datasets: Iterable, new_dataset_id: str, ref_min: float | None = None,
                     ref_max: float | None = None, description: str | None = None,
                     overwrite: bool = False, metadata: dict | None = None):
    """``minari.combine_datasets`` that keeps what Minari drops when combining.

    Minari's combine keeps neither ``ref_min_score``/``ref_max_score`` nor ``eval_env_spec``;
    they are re-attached here (given explicitly, or taken from the sources when they agree), with
    a description and the mean episode return of the whole. ``datasets``: MinariDatasets, ids or
    paths. ``metadata``: more keys for the new dataset's metadata (``algorithm_name`` ...).
    Written through ``building``: a failure leaves nothing behind, ``overwrite`` keeps the old
    dataset until the new one is complete.
    """
    import minari

    check_dataset_id(new_dataset_id)
    sources = [load_minari(d) for d in datasets]  # opened from the real root, before building
    if len(sources) < 2:
        raise ValueError("combining needs at least two datasets")
    metas = [s.storage.metadata for s in sources]
    ref_min = ref_min if ref_min is not None else _agreed([m.get("ref_min_score") for m in metas],
                                                          "ref_min_score")
    ref_max = ref_max if ref_max is not None else _agreed([m.get("ref_max_score") for m in metas],
                                                          "ref_max_score")
    ids = [m["dataset_id"] for m in metas]
    extra: dict = {"description": description or f"combination of {', '.join(ids)}"}
    if ref_min is not None and ref_max is not None:
        extra.update(ref_min_score=float(ref_min), ref_max_score=float(ref_max))
        n_avg = [m.get("num_episodes_average_score") for m in metas]
        if n_avg[0] is not None:
            extra["num_episodes_average_score"] = n_avg[0]
    else:
        warnings.warn(f"combined dataset {new_dataset_id} has no reference scores: its sources "
                      f"carry none", UserWarning, stacklevel=2)
    eval_specs = {m.get("eval_env_spec") for m in metas} - {None}
    if len(eval_specs) == 1:
        extra["eval_env_spec"] = eval_specs.pop()
    returns = [m.get(BEHAVIOUR_RETURN_KEY) for m in metas]
    if all(r is not None for r in returns):
        episodes = [s.total_episodes for s in sources]
        extra[BEHAVIOUR_RETURN_KEY] = float(np.dot(returns, episodes) / sum(episodes))
    extra.update(metadata or {})

    with building(new_dataset_id, overwrite=overwrite):
        combined = minari.combine_datasets(sources, new_dataset_id)
        write_metadata(combined.storage.data_path, extra)
    return load_minari(new_dataset_id)


# ------------------------------------------------------------------------- listing

def episode_returns(dataset) -> np.ndarray:
    """Undiscounted return of every episode, reading only the rewards when the format allows."""
    storage = dataset.storage
    indices = np.asarray(dataset.episode_indices)
    if getattr(storage, "FORMAT", None) == "hdf5":
        import h5py
        with h5py.File(storage.data_path / "main_data.hdf5", "r") as f:
            return np.array([float(np.sum(f[f"episode_{i}"]["rewards"][:], dtype=np.float64))
                             for i in indices])
    return np.array([float(np.sum(ep.rewards, dtype=np.float64)) for ep in dataset])


def describe_dataset(dataset) -> dict:
    """Id, steps, episodes, behaviour mean return (raw and normalised) and reference scores (with
    where they came from, when the builder recorded it) of one dataset."""
    meta = dataset.storage.metadata
    returns = episode_returns(dataset) if dataset.total_episodes else np.zeros(0)
    behaviour = meta.get(BEHAVIOUR_RETURN_KEY)
    if behaviour is None and len(returns):
        behaviour = float(returns.mean())
    from rlmin.scores import checked_references

    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    status, normalised = "complete", None
    try:
        refs = checked_references(meta, str(Path(dataset.spec.data_path) / "metadata.json"))
    except ValueError as e:  # listed, and marked: a run on it refuses it with the same words
        status, refs = f"bad metadata: {e}", None
    if behaviour is not None and refs is not None and isinstance(behaviour, (int, float)):
        normalised = 100.0 * (behaviour - refs[0]) / (refs[1] - refs[0])
    spec = dataset.spec.env_spec
    return {"id": meta["dataset_id"], "status": status,
            "env_id": spec.id if spec is not None else None,
            "steps": int(dataset.total_steps), "episodes": int(dataset.total_episodes),
            "behaviour_return": behaviour,
            "behaviour_std": float(returns.std()) if len(returns) else None,
            "normalised": normalised, "ref_min": lo, "ref_max": hi,
            "build_seconds": (meta.get("rlmin_recipe") or {}).get("seconds"),
            "ref_min_source": meta.get("ref_min_source"),
            "ref_max_source": meta.get("ref_max_source"), "path": str(dataset.spec.data_path)}


def reference_note(row: dict) -> str:
    """One line naming the ref_min/ref_max that normalise ``row``'s scores (a
    ``describe_dataset`` row), with where they came from when recorded."""
    lo, hi = row.get("ref_min"), row.get("ref_max")
    if lo is None or hi is None:
        return (f"{row['id']} has no reference scores in its metadata: scores on it are normalised "
                f"with its task's table values")
    def source(key):
        return f" ({row[key]})" if row.get(key) else ""
    score = (f"normalised behaviour return {row['normalised']:.1f}. "
             if row.get("normalised") is not None else "")
    return (f"{score}Scores on {row['id']} are normalised as 100 * (R - ref_min) / (ref_max - "
            f"ref_min) with its ref_min {lo:.2f}{source('ref_min_source')} and ref_max "
            f"{hi:.2f}{source('ref_max_source')}")


def _dataset_folders(root: Path, prefix: str = "") -> Iterator[tuple[str, Path]]:
    """(id, folder) of every folder holding ``data/`` under ``root``, as Minari finds datasets
    (hidden folders skipped)."""
    folder = root / prefix if prefix else root
    if not folder.is_dir():
        return
    if (folder / "data").is_dir():
        yield prefix, folder
        return
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            yield from _dataset_folders(root, f"{prefix}/{child.name}" if prefix else child.name)


def list_local(prefix: str | None = None) -> list[dict]:
    """``describe_dataset`` for every dataset under the datasets root (sorted by id), with a
    ``status``: ``complete``, ``incomplete: <why>`` (a folder that does not open: its numbers are
    None), ``building`` or ``interrupted build`` (a killed build's leftovers, which the next
    build removes)."""
    from filelock import Timeout

    root = datasets_root()
    rows = []
    for dataset_id, folder in _dataset_folders(root):
        if prefix and not dataset_id.startswith(prefix):
            continue
        reason = _incomplete_reason(folder / "data")
        if reason is None:
            try:
                row = describe_dataset(load_minari(folder))
                if row["id"] != dataset_id:
                    reason = f"its metadata names {row['id']}"
            except Exception as exc:
                reason = f"does not open ({type(exc).__name__}: {exc})"
        if reason is not None:
            row = {"id": dataset_id, "status": f"incomplete: {reason}", "path": str(folder)}
        rows.append(row)
    for build in sorted(root.glob(BUILD_PREFIX + "*")) if root.is_dir() else []:
        dataset_id = build.name[len(BUILD_PREFIX):].replace("+", "/")
        if prefix and not dataset_id.startswith(prefix):
            continue
        try:
            with _lock(build):
                status = "interrupted build (the next `rlmin data build` removes it)"
        except Timeout:
            status = "building"
        rows.append({"id": dataset_id, "status": status, "path": str(build)})
    return rows


def read_metadata(dataset_id_or_path) -> dict:
    """The raw ``metadata.json`` of a local dataset, without opening its data."""
    text = str(dataset_id_or_path)
    path = Path(text) if not _ID_RE.match(text) else dataset_dir(text)
    data_path = _data_path_of(path)
    if data_path is None:
        raise DatasetNotFoundError(f"no Minari dataset at {path}")
    return json.loads((data_path / "metadata.json").read_text())
