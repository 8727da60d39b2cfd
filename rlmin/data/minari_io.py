"""Minari datasets on disk: load (offline first), combine, list, clean up.

Everything here is local unless ``download=True`` is asked for: a missing dataset fails at once
with the command that builds it (``rlmin data build hopper medium``) or downloads it
(``minari download ID``), never after a round of HTTP errors.

Datasets live under ``MINARI_DATASETS_PATH`` (``~/.minari/datasets`` when unset), one folder per
id: ``<root>/<namespace>/<name>-vN/data/{metadata.json, main_data.hdf5}``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

_ID_RE = re.compile(r"^(?:(?P<namespace>[-_\w][-_\w/]*[-_\w]+)/)?(?P<name>[-_\w]+?)-v(?P<version>\d+)$")
#: Metadata key (beside Minari's own) where rlmin stores the mean episode return of the data.
BEHAVIOUR_RETURN_KEY = "behaviour_mean_return"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk (and was not to be, or could not be, downloaded)."""


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
    return (dataset_dir(dataset_id) / "data" / "metadata.json").exists()


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
        return minari.MinariDataset(data_path)

    dataset_id = check_dataset_id(text)
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
    return minari.MinariDataset(data_path)


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
    A failure leaves no folder behind.
    """
    import minari

    check_dataset_id(new_dataset_id)
    sources = [load_minari(d) for d in datasets]
    if len(sources) < 2:
        raise ValueError("combining needs at least two datasets")
    if dataset_dir(new_dataset_id).exists():
        if not overwrite:
            raise FileExistsError(f"dataset {new_dataset_id} already exists at "
                                  f"{dataset_dir(new_dataset_id)}; pass overwrite=True to replace it")
        delete_local_dataset(new_dataset_id)
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

    with cleanup_on_failure(new_dataset_id):
        ensure_namespace(new_dataset_id)
        combined = minari.combine_datasets(sources, new_dataset_id)
        combined.storage.update_metadata(extra)
    return minari.MinariDataset(combined.storage.data_path)


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
    """Id, steps, episodes, behaviour mean return and reference scores of one dataset."""
    meta = dataset.storage.metadata
    behaviour = meta.get(BEHAVIOUR_RETURN_KEY)
    if behaviour is None and dataset.total_episodes:
        behaviour = float(episode_returns(dataset).mean())
    spec = dataset.spec.env_spec
    return {"id": meta["dataset_id"], "env_id": spec.id if spec is not None else None,
            "steps": int(dataset.total_steps), "episodes": int(dataset.total_episodes),
            "behaviour_return": behaviour, "ref_min": meta.get("ref_min_score"),
            "ref_max": meta.get("ref_max_score"), "path": str(dataset.spec.data_path)}


def list_local(prefix: str | None = None) -> list[dict]:
    """``describe_dataset`` for every dataset under the datasets root (sorted by id)."""
    import minari

    rows = []
    for dataset_id in minari.list_local_datasets(prefix=prefix):
        try:
            rows.append(describe_dataset(load_minari(dataset_id)))
        except Exception as exc:
            warnings.warn(f"skipping unreadable dataset {dataset_id}: {exc}", stacklevel=2)
    return rows


def read_metadata(dataset_id_or_path) -> dict:
    """The raw ``metadata.json`` of a local dataset, without opening its data."""
    text = str(dataset_id_or_path)
    path = Path(text) if not _ID_RE.match(text) else dataset_dir(text)
    data_path = _data_path_of(path)
    if data_path is None:
        raise DatasetNotFoundError(f"no Minari dataset at {path}")
    return json.loads((data_path / "metadata.json").read_text())
