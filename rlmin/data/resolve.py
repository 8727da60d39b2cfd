"""Which dataset a config means, loaded with everything training needs about it (rlmin.data.resolve).

``load_dataset_for(cfg.data)`` resolves the name (a task shorthand such as ``hopper-medium``, a
D4RL-v2 name, a Minari id or a local path), loads it offline, builds it from the shipped
behaviour policy when that is allowed and possible, and returns a ``LoadedDataset``: the flat
episode arrays plus the eval env, the reference scores with their provenance, and the target
returns.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass

import numpy as np

from rlmin.data.episodes import EpisodeData
from rlmin.data.minari_io import BuildLockedError, DatasetNotFoundError, is_local, load_minari
from rlmin.data.sampler import SegmentSampler
from rlmin.registry import RegistryError, load_builder
from rlmin.scores import normalized_score, reference_scores
from rlmin.spec import DataSpec, EvalSpec
from rlmin.task import D4RL_LEVELS, LOCAL_NAMESPACE, Task, all_tasks, resolve_dataset

_SHORTHAND = re.compile(r"^(?P<env>[a-z0-9_]+)-(?P<level>" + "|".join(D4RL_LEVELS) + r")$")
# Steps collected when a missing local dataset is built on the fly (the quickstart's budget).
AUTO_BUILD_STEPS = 100_000


@dataclass
class LoadedDataset:
    data: EpisodeData
    eval_spec: EvalSpec

    def agent_spec(self, seq_len: int) -> DataSpec:
        """What an agent trained on segments of ``seq_len`` steps of this data is built for."""
        longest = int(self.data.episode_lengths.max()) if self.data.num_episodes else 1
        return DataSpec(self.data.obs_dim, self.data.act_dim, self.data.obs_mean,
                        self.data.obs_std, seq_len=int(seq_len),
                        max_episode_steps=max(self.eval_spec.max_episode_steps or 0, longest))

    def sampler(self, data_cfg, batch_size: int, seed: int) -> SegmentSampler:
        return SegmentSampler(self.data, data_cfg.seq_len, batch_size, mode=data_cfg.mode,
                              seed=seed, burn_in=data_cfg.burn_in)

    def summary(self) -> dict:
        """The data itself, as plain values (checkpoints, results.json): its id, size, behaviour
        return and a fingerprint that changes when the data does."""
        spec, behaviour = self.eval_spec, self.data.behaviour_return
        return {
            "id": spec.dataset_id, "steps": self.data.num_steps,
            "episodes": self.data.num_episodes, "behaviour_return": behaviour,
            "behaviour_normalized": (normalized_score(behaviour, spec.ref_min, spec.ref_max)
                                     if spec.ref_min is not None else None),
            "fingerprint": self.fingerprint,
        }

    @functools.cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.data)  # once: summary() is written at every checkpoint


def fingerprint(data: EpisodeData) -> str:
    """A cheap hash of the data: sizes, metadata and a fixed sample of the arrays."""
    h = hashlib.sha256(f"{data.num_episodes}/{data.num_steps}".encode())
    h.update(json.dumps(data.metadata, sort_keys=True, default=str).encode())
    rows = np.linspace(0, max(data.num_steps - 1, 0), num=min(1000, data.num_steps)).astype(int)
    for array in (data.observations, data.actions, data.rewards):
        h.update(np.ascontiguousarray(array[rows], dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def resolve_name(name: str) -> tuple[Task | None, str]:
    """(task, dataset id or path). ``hopper-medium`` means the official Minari dataset when it
    is on disk, else the local builder's ``rlmin/hopper/medium-v0``."""
    match = _SHORTHAND.match(name)
    tasks = all_tasks()
    if match and match["env"] in tasks:
        task, level = tasks[match["env"]], match["level"]
        official = task.dataset_ids.get(level)
        if official and is_local(official):
            return task, official
        return task, task.local_dataset_id(level)
    try:
        return resolve_dataset(name)
    except ValueError:
        return None, name  # any Minari id: its own env spec and metadata must do


def _build_missing(task: Task | None, dataset_id: str, error: DatasetNotFoundError) -> None:
    parts = dataset_id.split("/")
    if task is None or len(parts) != 3 or parts[0] != LOCAL_NAMESPACE:
        raise error
    level = re.sub(r"-v\d+$", "", parts[2])
    try:
        build = load_builder()
    except RegistryError:
        raise error from None
    print(f"{dataset_id} is not on this machine: building it from the behaviour policy that "
          f"ships with the project ({AUTO_BUILD_STEPS:,} steps)...", flush=True)
    try:
        build(task.name, level, n_steps=AUTO_BUILD_STEPS)
    except FileNotFoundError as exc:  # no shipped policy for this task/level
        raise DatasetNotFoundError(f"{error} (automatic build failed: {exc})") from None
    except BuildLockedError as exc:  # another process builds it right now
        raise DatasetNotFoundError(f"{exc}; wait for that build, then start again") from None


def load_dataset_for(data_cfg) -> LoadedDataset:
    task, dataset_id = resolve_name(data_cfg.dataset)
    if data_cfg.task:
        task = all_tasks().get(data_cfg.task) or _unknown_task(data_cfg.task)
    try:
        minari_ds = load_minari(dataset_id, download=data_cfg.download)
    except DatasetNotFoundError as exc:
        if not data_cfg.build_if_missing:
            raise
        _build_missing(task, dataset_id, exc)
        minari_ds = load_minari(dataset_id)
    data = EpisodeData.from_minari(minari_ds, env_id=task.env_id if task else None)
    env_id = (task.env_id if task else None) or data.env_id
    if env_id is None:
        raise DatasetNotFoundError(f"dataset {dataset_id} records no environment; pass "
                                   "data.task=<hopper|halfcheetah|walker2d> to choose one")
    ref = reference_scores(data.metadata, task)
    targets = task.target_returns if task else (float(np.max(data.episode_returns)),)
    spec = EvalSpec(env_id=env_id, max_episode_steps=task.max_episode_steps if task else None,
                    target_returns=tuple(float(t) for t in targets), ref_min=ref.ref_min,
                    ref_max=ref.ref_max, ref_source=ref.source, obs_dim=data.obs_dim,
                    act_dim=data.act_dim, dataset_id=dataset_id, task=task and task.name,
                    level=level_of(dataset_id))
    return LoadedDataset(data, spec)


def level_of(dataset_id: str) -> str | None:
    """``medium-replay`` for ``rlmin/hopper/medium-replay-v0`` (D4RL levels only), else None."""
    match = re.match(r"^(?P<level>[a-z-]+?)(-v\d+)?$", dataset_id.rstrip("/").split("/")[-1])
    return match["level"] if match and match["level"] in D4RL_LEVELS else None


def _unknown_task(name: str):
    raise ValueError(f"data.task={name!r} is not a known task; known: {sorted(all_tasks())}")
