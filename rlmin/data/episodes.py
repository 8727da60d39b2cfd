"""Episodes as flat arrays: every step of every episode in one array, plus episode offsets.

Episode ``e`` occupies rows ``offsets[e]:offsets[e + 1]`` of every per-step array.

Observations: a Minari episode of T steps carries T + 1 observations (the last one is the
observation after the last action). ``observations`` keeps the first T, aligned with
``actions``, ``rewards`` and the rest (row t is the observation the action of row t was taken
in). The T + 1-th is kept separately, one row per episode, in ``final_observations``.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from rlmin.data.minari_io import BEHAVIOUR_RETURN_KEY
from rlmin.errors import DataError

#: Floor for the per-feature observation std, so constant features do not divide by zero.
STD_FLOOR = 1e-6


@dataclass
class EpisodeData:
    """All steps of a dataset as flat arrays (N steps, E episodes).

    observations [N, obs_dim] float32   observation the action was taken in (the first T per episode)
    actions [N, act_dim] float32
    rewards [N] float32
    terminations [N] bool                True on an episode's last step if the MDP ended there
    truncations [N] bool                 True on an episode's last step if it was cut (time limit,
                                         step budget); distinct from terminations
    returns_to_go [N] float32            undiscounted sum of this and later rewards in the episode
    timesteps [N] int64                  step index within the episode, from 0
    offsets [E + 1] int64                episode e is rows offsets[e]:offsets[e+1]
    final_observations [E, obs_dim]      the observation after each episode's last action
    episode_ids [E] int64                the episode's id in the source dataset
    episode_returns [E] float64
    obs_mean, obs_std [obs_dim] float32  over ``observations``; std floored at ``STD_FLOOR``
    metadata                             dataset_id, env_id, env_spec (JSON), ref_min_score,
                                         ref_max_score, behaviour_return (mean episode return),
                                         num_episodes, num_steps, and what the source had
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    returns_to_go: np.ndarray
    timesteps: np.ndarray
    offsets: np.ndarray
    final_observations: np.ndarray
    episode_ids: np.ndarray
    episode_returns: np.ndarray
    obs_mean: np.ndarray
    obs_std: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    # ---- sizes and views
    @property
    def num_steps(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_episodes(self) -> int:
        return len(self.offsets) - 1

    def __len__(self) -> int:
        return self.num_steps

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episode_starts(self) -> np.ndarray:
        return self.offsets[:-1]

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def dataset_id(self) -> str | None:
        return self.metadata.get("dataset_id")

    @property
    def env_id(self) -> str | None:
        return self.metadata.get("env_id")

    @property
    def behaviour_return(self) -> float:
        return float(self.episode_returns.mean())

    def episode(self, e: int) -> dict[str, np.ndarray]:
        """Per-step arrays of episode ``e`` (views, not copies)."""
        sl = slice(int(self.offsets[e]), int(self.offsets[e + 1]))
        return {k: getattr(self, k)[sl] for k in
                ("observations", "actions", "rewards", "terminations", "truncations",
                 "returns_to_go", "timesteps")}

    def normalize_obs(self, obs) -> np.ndarray:
        """(obs - obs_mean) / obs_std, as float32: what the sampler feeds the agent."""
        return ((np.asarray(obs, dtype=np.float32) - self.obs_mean) / self.obs_std).astype(np.float32)

    # ---- constructors
    @classmethod
    def from_episodes(cls, episodes: Iterable[Mapping[str, Any]], metadata: Mapping | None = None,
                      std_floor: float = STD_FLOOR, dataset_name: str = "dataset") -> "EpisodeData":
        """Build from episode dicts (``observations`` with T + 1 rows, ``actions``, ``rewards``,
        ``terminations``, ``truncations``, optional ``id``), checking every one."""
        obs_l, final_l, act_l, rew_l, term_l, trunc_l = [], [], [], [], [], []
        rtg_l, ts_l, ids, rets, lengths = [], [], [], [], []
        obs_dim = act_dim = None
        for k, ep in enumerate(episodes):
            ep_id = int(ep.get("id", k)) if ep.get("id", k) is not None else k
            where = f"episode {ep_id} of {dataset_name}"
            obs = np.asarray(ep["observations"])
            act = np.asarray(ep["actions"])
            rew = np.asarray(ep["rewards"], dtype=np.float64).reshape(-1)
            T = len(rew)
            if T == 0:
                warnings.warn(f"{where} has no steps and is skipped", stacklevel=2)
                continue
            if obs.ndim != 2 or act.ndim != 2:
                raise DataError(f"{where}: expected 2-D observations and actions "
                                 f"(steps x features), got shapes {obs.shape} and {act.shape}")
            if obs.shape[0] != T + 1 or act.shape[0] != T:
                raise DataError(f"{where}: {T} rewards need {T + 1} observations and {T} actions, "
                                 f"got {obs.shape[0]} and {act.shape[0]}")
            if obs_dim is None:
                obs_dim, act_dim = obs.shape[1], act.shape[1]
            elif (obs.shape[1], act.shape[1]) != (obs_dim, act_dim):
                raise DataError(f"{where}: observation/action shape ({obs.shape[1]},)/"
                                 f"({act.shape[1]},) differs from earlier episodes' "
                                 f"({obs_dim},)/({act_dim},)")
            for name, arr in (("observations", obs), ("actions", act), ("rewards", rew)):
                if not np.issubdtype(arr.dtype, np.number):
                    raise DataError(f"{where}: {name} are not numbers (dtype {arr.dtype})")
                bad = ~np.isfinite(arr)
                if bad.any():
                    step = int(np.argwhere(bad)[0][0])
                    raise DataError(f"{where}: {name} contain NaN or inf (first at step {step})")
            term = np.asarray(ep["terminations"], dtype=bool).reshape(-1)
            trunc = np.asarray(ep["truncations"], dtype=bool).reshape(-1)
            if len(term) != T or len(trunc) != T:
                raise DataError(f"{where}: terminations/truncations have {len(term)}/{len(trunc)} "
                                 f"entries for {T} steps")
            obs_l.append(obs[:T].astype(np.float32))
            final_l.append(obs[T].astype(np.float32))
            act_l.append(act.astype(np.float32))
            rew_l.append(rew.astype(np.float32))
            term_l.append(term)
            trunc_l.append(trunc)
            rtg_l.append(np.cumsum(rew[::-1])[::-1])  # float64 per episode, cast once below
            ts_l.append(np.arange(T, dtype=np.int64))
            ids.append(ep_id)
            rets.append(float(rew.sum()))
            lengths.append(T)
        if not lengths:
            raise DataError(f"{dataset_name} has no steps: nothing to train on")

        observations = np.concatenate(obs_l)
        mean = observations.mean(axis=0, dtype=np.float64)
        std = np.maximum(observations.std(axis=0, dtype=np.float64), std_floor)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        episode_returns = np.asarray(rets, dtype=np.float64)
        meta = dict(metadata or {})
        meta.update(num_episodes=len(lengths), num_steps=int(offsets[-1]),
                    behaviour_return=float(episode_returns.mean()))
        return cls(
            observations=observations,
            actions=np.concatenate(act_l),
            rewards=np.concatenate(rew_l),
            terminations=np.concatenate(term_l),
            truncations=np.concatenate(trunc_l),
            returns_to_go=np.concatenate(rtg_l).astype(np.float32),
            timesteps=np.concatenate(ts_l),
            offsets=offsets,
            final_observations=np.stack(final_l),
            episode_ids=np.asarray(ids, dtype=np.int64),
            episode_returns=episode_returns,
            obs_mean=mean.astype(np.float32),
            obs_std=std.astype(np.float32),
            metadata=meta,
        )

    @classmethod
    def from_minari(cls, dataset, env_id: str | None = None, std_floor: float = STD_FLOOR):
        return from_minari(dataset, env_id=env_id, std_floor=std_floor)


# ------------------------------------------------------------------------- Minari

def _check_box(space, what: str, dataset_id: str):
    import gymnasium as gym

    if not isinstance(space, gym.spaces.Box):
        raise DataError(f"{dataset_id}: only Box observation and action spaces are supported, but "
                        f"its {what} space is {type(space).__name__} ({space}). Flatten it into a "
                        f"Box when collecting the data.")
    if len(space.shape) != 1:
        raise DataError(f"{dataset_id}: only flat (1-D) Box {what} spaces are supported, got shape "
                        f"{space.shape}")


def _env_spaces(env_or_spec, dataset_id: str, strict: bool):
    """Observation and action spaces of an env id / EnvSpec, or None if it cannot be made."""
    import gymnasium as gym

    try:
        env = gym.make(env_or_spec)
    except Exception as exc:
        name = getattr(env_or_spec, "id", env_or_spec)
        if strict:
            raise DataError(f"cannot make env {name!r} to check {dataset_id} against it: "
                             f"{exc}") from exc
        warnings.warn(f"{dataset_id}: could not make its env {name!r} ({exc}); observation and "
                      f"action shapes are not checked against it", stacklevel=3)
        return None
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def from_minari(dataset, env_id: str | None = None, std_floor: float = STD_FLOOR) -> EpisodeData:
    """Convert a Minari dataset (a MinariDataset, a local id, or a dataset path) to EpisodeData.

    Shapes are checked against ``env_id`` if given, else against the dataset's own env spec.
    Raises on: Dict/Tuple/Discrete spaces (only flat Box is supported), NaN or inf in
    observations/actions/rewards (naming the episode), shapes that disagree with the env
    (naming both), and an empty dataset.
    """
    from rlmin.data.minari_io import load_minari

    dataset = load_minari(dataset)
    meta = dataset.storage.metadata
    dataset_id = meta.get("dataset_id", str(dataset.spec.data_path))
    _check_box(dataset.observation_space, "observation", dataset_id)
    _check_box(dataset.action_space, "action", dataset_id)
    if dataset.total_episodes == 0 or dataset.total_steps == 0:
        raise DataError(f"{dataset_id} is empty ({dataset.total_episodes} episodes, "
                         f"{dataset.total_steps} steps): nothing to train on")

    spec = dataset.spec.env_spec
    target = env_id if env_id is not None else spec
    expected = _env_spaces(target, dataset_id, strict=env_id is not None) if target else None
    if expected is not None:
        name = env_id or spec.id
        for what, have, want in (("observation", dataset.observation_space, expected[0]),
                                 ("action", dataset.action_space, expected[1])):
            if tuple(have.shape) != tuple(want.shape):
                raise DataError(f"{dataset_id}: {what} shape {tuple(have.shape)} disagrees with "
                                 f"env {name}'s {what} shape {tuple(want.shape)}")

    obs_dim, act_dim = dataset.observation_space.shape[0], dataset.action_space.shape[0]

    def checked(episodes):
        for ep in episodes:  # arrays must match the declared spaces too
            obs, act = np.asarray(ep.observations), np.asarray(ep.actions)
            if obs.ndim != 2 or obs.shape[1] != obs_dim or act.ndim != 2 or act.shape[1] != act_dim:
                raise DataError(
                    f"episode {ep.id} of {dataset_id}: observations {obs.shape} / actions "
                    f"{act.shape} disagree with the dataset's spaces, observation shape "
                    f"({obs_dim},) and action shape ({act_dim},)")
            yield {"id": ep.id, "observations": obs, "actions": act, "rewards": ep.rewards,
                   "terminations": ep.terminations, "truncations": ep.truncations}

    # Metadata the run uses, checked now (naming the file and key), not when a score is computed.
    from rlmin.scores import checked_references

    meta_file = Path(dataset.spec.data_path) / "metadata.json"
    try:
        checked_references(meta, f"{dataset_id} ({meta_file})")
    except ValueError as e:
        raise DataError(str(e)) from None
    eval_env_id = None
    if isinstance(meta.get("eval_env_spec"), str):
        try:
            eval_env_id = json.loads(meta["eval_env_spec"]).get("id")
        except (ValueError, AttributeError):
            raise DataError(f"{dataset_id} ({meta_file}): metadata key 'eval_env_spec' is not a "
                            f"JSON env spec: fix it or remove the key") from None
    keep = {k: meta[k] for k in ("ref_min_score", "ref_max_score", "combined_datasets",
                                 "description", "algorithm_name", BEHAVIOUR_RETURN_KEY)
            if k in meta}
    metadata = {
        "dataset_id": dataset_id,
        "env_id": env_id or (spec.id if spec is not None else None),
        "env_spec": spec.to_json() if spec is not None else None,
        "eval_env_id": eval_env_id,
        "ref_min_score": None, "ref_max_score": None,
        **keep,
    }
    return EpisodeData.from_episodes(checked(dataset.iterate_episodes()), metadata=metadata,
                                     std_floor=std_floor, dataset_name=dataset_id)
