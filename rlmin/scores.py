"""Normalised scores: 100 * (R - ref_min) / (ref_max - ref_min), with where the refs came from.

Reference returns are looked up in this order: the dataset's own metadata (``ref_min_score`` and
``ref_max_score``, both needed), then the task table. Raw returns should always be reported next
to normalised ones.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ReferenceScores:
    ref_min: float
    ref_max: float
    source: str  # e.g. "dataset metadata (rlmin/hopper/medium-v0)" or "task table (hopper): ..."

    def normalize(self, returns):
        return normalized_score(returns, self.ref_min, self.ref_max)


def normalized_score(returns, ref_min: float, ref_max: float):
    """100 * (R - ref_min) / (ref_max - ref_min); a float for a scalar, an array for an array."""
    if not ref_max > ref_min:
        raise ValueError(f"ref_max ({ref_max}) must exceed ref_min ({ref_min})")
    out = 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)
    return float(out) if out.ndim == 0 else out


def _metadata_of(dataset_metadata: Any) -> Mapping | None:
    """Accept a metadata mapping, a MinariDataset, or anything with a ``metadata`` mapping."""
    if dataset_metadata is None or isinstance(dataset_metadata, Mapping):
        return dataset_metadata
    storage = getattr(dataset_metadata, "storage", None)  # minari.MinariDataset
    if storage is not None and isinstance(getattr(storage, "metadata", None), Mapping):
        return storage.metadata
    meta = getattr(dataset_metadata, "metadata", None)  # rlmin.data.EpisodeData
    if isinstance(meta, Mapping):
        return meta
    raise TypeError(f"cannot read dataset metadata from {type(dataset_metadata).__name__}")


REFERENCE_KEYS = ("ref_min_score", "ref_max_score")


def checked_references(meta: Mapping, where: str) -> tuple[float, float] | None:
    """``(ref_min_score, ref_max_score)`` of a dataset's metadata, or None unless it has both.
    Refused (ValueError naming ``where``, the key and what to write): a value that is not a
    finite number, or ref_max_score <= ref_min_score, which would break a run's normalised
    scores only when they are computed (after the work)."""
    values = {k: meta.get(k) for k in REFERENCE_KEYS}
    if any(v is None for v in values.values()):
        return None  # both are needed; half a pair is not used (the task table's are)
    fix = ("set both to numbers with ref_max_score > ref_min_score, or remove both (the task "
           "table's references are then used)")
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value):
            raise ValueError(f"{where}: metadata key '{key}' is {value!r}, not a finite number: "
                             f"{fix}")
    lo, hi = float(values["ref_min_score"]), float(values["ref_max_score"])
    if not hi > lo:
        raise ValueError(f"{where}: metadata keys 'ref_max_score' ({hi:g}) and 'ref_min_score' "
                         f"({lo:g}) leave no range to normalise in: {fix}")
    return lo, hi


def reference_scores(dataset_metadata: Any = None, task=None) -> ReferenceScores:
    """Reference returns for normalising, with their provenance.

    ``dataset_metadata``: a Minari metadata dict (or a MinariDataset / rlmin EpisodeData); its
    ``ref_min_score`` and ``ref_max_score`` win when both are there. Otherwise ``task`` (an
    ``rlmin.task.Task``) provides ``ref_min``/``ref_max`` and its ``ref_source``.
    """
    meta = _metadata_of(dataset_metadata)
    if meta is not None:
        name = meta.get("dataset_id", "dataset")
        refs = checked_references(meta, f"dataset {name}")
        if refs is not None:
            return ReferenceScores(*refs, f"dataset metadata ({name})")
    if task is not None:
        return ReferenceScores(float(task.ref_min), float(task.ref_max),
                               f"task table ({task.name}): {task.ref_source}")
    name = meta.get("dataset_id", "the dataset") if meta is not None else "the dataset"
    raise ValueError(f"no reference scores: {name} has no ref_min_score/ref_max_score in its "
                     f"metadata and no task was given. Pass the task, or build the dataset with "
                     f"`rlmin data build`, which stores them.")
