"""Build D4RL-style datasets locally, in Minari format, from behaviour policies.

Levels (D4RL's, on the Gymnasium v5 envs):

* ``random``: uniformly random actions (the env's action space, seeded).
* ``medium`` / ``expert``: stochastic actions of a SAC actor (``envs.behaviour.GaussianActor``);
  the shipped ``envs/policies/<env>-<level>.pt`` unless ``policy_path`` is given.
* ``medium-replay``: the replay buffer of the SAC run that produced the medium policy
  (``<sac_run_dir>/replay.pkl``), cut at episode ends.
* ``medium-expert``: ``medium`` and ``expert`` combined (each built first if missing).

Datasets go to ``MINARI_DATASETS_PATH`` (Minari's default ``~/.minari/datasets`` if unset) under
``rlmin/<env>/<level>-v0``. Every dataset stores both reference scores, so it normalises on its
own: ``ref_min_score`` = a uniform-random policy's mean return (the task table's measured
value), ``ref_max_score`` = the expert policy's mean return (read from the policy's metadata).
A failed build removes its partial folder (which would otherwise break ``minari list local``).

The CLI (``rlmin data build hopper medium``, ``rlmin data list``) calls ``build_dataset`` and
``list_local_datasets``.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from envs.behaviour import load_actor, shipped_policy_path
from rlmin.data.minari_io import (
    BEHAVIOUR_RETURN_KEY,
    check_dataset_id,
    cleanup_on_failure,
    combine_datasets,
    dataset_dir,
    delete_local_dataset,
    ensure_namespace,
    is_local,
    list_local,
    read_metadata,
)
from rlmin.tasks import Task, get_task

LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
#: Steps collected per level when ``n_steps`` is not given (D4RL's and Minari's ~1M).
DEFAULT_STEPS = 1_000_000
AUTHOR = "rlmin"
CODE = "envs/builder.py (rlmin)"
#: Keys of a policy's metadata that may hold its mean return, in order of preference. Data is
#: collected with stochastic actions, so the stochastic return comes first.
RETURN_KEYS = ("mean_return", "return_stochastic", "return_deterministic", "return")


# ------------------------------------------------------------------------- policies and refs

def _policy_return(meta: dict) -> tuple[float, str] | None:
    for key in RETURN_KEYS:
        if meta.get(key) is not None:
            return float(meta[key]), key
    return None


def _load_policy(path: str | Path, task: Task):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"behaviour policy {path} does not exist")
    actor, meta = load_actor(path)
    obs_dim, act_dim = actor.latent_pi[0].in_features, actor.mu.out_features
    env = gym.make(task.env_id)
    want = (env.observation_space.shape, env.action_space.shape)
    env.close()
    if ((obs_dim,), (act_dim,)) != want:
        raise ValueError(f"policy {path} takes observations ({obs_dim},) and gives actions "
                         f"({act_dim},), but {task.env_id} has observations {want[0]} and "
                         f"actions {want[1]}")
    if meta.get("env_id") not in (None, task.env_id):
        raise ValueError(f"policy {path} was trained on {meta['env_id']}, not {task.env_id}")
    return actor, meta


def _policy_for(task: Task, level: str, policy_path) -> tuple[Path, Any, dict]:
    path = Path(policy_path) if policy_path is not None else shipped_policy_path(task.name, level)
    if not path.exists():
        raise FileNotFoundError(
            f"no behaviour policy for {task.name} {level}: {path} does not exist. Pass "
            f"policy_path= (an actor exported by envs.behaviour.save_actor, e.g. a SAC run's "
            f"actor_<step>.pt from envs.sac.train_sac)")
    actor, meta = _load_policy(path, task)
    return path, actor, meta


def _reference_scores(task: Task, ref_min, ref_max, expert: tuple[Path, dict] | None):
    """(ref_min, ref_max, provenance text). ref_max: the expert policy's mean return."""
    if ref_min is None:
        ref_min, min_how = task.ref_min, f"task table: {task.ref_source.split(';')[0]}"
    else:
        min_how = "given by the caller"
    if ref_max is not None:
        max_how = "given by the caller"
    elif expert is not None and _policy_return(expert[1]) is not None:
        ref_max, key = _policy_return(expert[1])
        max_how = f"expert policy {expert[0].name}: metadata '{key}'"
    else:
        ref_max = task.ref_max
        max_how = (f"no expert policy with a recorded return was found, so the task table's: "
                   f"{task.ref_source.split(';')[-1].strip()}")
    ref_min, ref_max = float(ref_min), float(ref_max)
    if not ref_max > ref_min:
        raise ValueError(f"ref_max_score {ref_max} ({max_how}) must exceed ref_min_score "
                         f"{ref_min} ({min_how})")
    return ref_min, ref_max, f"ref_min_score {ref_min:.2f} ({min_how}); " \
                             f"ref_max_score {ref_max:.2f} ({max_how})"


def _expert_for_refs(task: Task, level: str, policy_path, policy_meta) -> tuple[Path, dict] | None:
    if level == "expert" and policy_path is not None:
        return Path(policy_path), policy_meta
    path = shipped_policy_path(task.name, "expert")
    if path.exists():
        return path, load_actor(path)[1]
    return None


def _unscale(action: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """[-1, 1] policy output -> the env's action bounds (identity for [-1, 1] boxes)."""
    if np.all(space.low == -1) and np.all(space.high == 1):
        return action.astype(space.dtype)
    return (space.low + 0.5 * (action + 1.0) * (space.high - space.low)).astype(space.dtype)


# ------------------------------------------------------------------------- writing

def _quiet_create():
    """Silence Minari's advice about fields we leave unset on purpose (author e-mail ...)."""
    warnings.filterwarnings("ignore", message=r".*is set to None.*")


def _action_space(task: Task) -> gym.spaces.Box:
    env = gym.make(task.env_id)
    try:
        return env.action_space
    finally:
        env.close()


def _collect(task: Task, dataset_id: str, act: Callable[[np.ndarray], np.ndarray] | None,
             n_steps: int, seed: int, max_episode_steps: int | None, algorithm_name: str,
             description: str, ref_min: float, ref_max: float) -> None:
    import minari

    env = gym.make(task.env_id, max_episode_steps=max_episode_steps or task.max_episode_steps)
    collector = minari.DataCollector(env, record_infos=False)
    reset_seeds = np.random.default_rng(seed)
    env.action_space.seed(seed)
    returns, ep_return = [], 0.0
    try:
        with cleanup_on_failure(dataset_id):
            obs, _ = collector.reset(seed=int(reset_seeds.integers(2**31)))
            for t in range(n_steps):
                action = env.action_space.sample() if act is None else act(obs)
                obs, reward, terminated, truncated, _ = collector.step(action)
                ep_return += float(reward)
                if terminated or truncated:
                    returns.append(ep_return)
                    ep_return = 0.0
                    if t + 1 < n_steps:
                        obs, _ = collector.reset(seed=int(reset_seeds.integers(2**31)))
            partial = not (terminated or truncated)
            if partial:  # cut by the step budget: DataCollector marks it truncated
                returns.append(ep_return)
            with warnings.catch_warnings():
                _quiet_create()
                dataset = collector.create_dataset(
                    dataset_id=dataset_id, eval_env=task.env_id, algorithm_name=algorithm_name,
                    author=AUTHOR, code_permalink=CODE, description=description,
                    ref_min_score=ref_min, ref_max_score=ref_max)
            dataset.storage.update_metadata({BEHAVIOUR_RETURN_KEY: float(np.mean(returns))})
    finally:
        collector.close()


def _load_replay(path: Path):
    """Unpickle an SB3 ReplayBuffer without needing stable-baselines3 installed.

    (Unpickling runs code from the file: only use replay buffers you made.)
    """
    class _Stub:  # stands in for every stable_baselines3 class in the pickle
        def __setstate__(self, state):
            self.__dict__.update(state if isinstance(state, dict) else {})

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module.startswith("stable_baselines3"):
                return _Stub
            return super().find_class(module, name)

    with open(path, "rb") as f:
        return _Unpickler(f).load()


def replay_episodes(path: str | Path, action_space: gym.spaces.Box | None = None,
                    max_steps: int | None = None) -> list[dict]:
    """Episodes (Minari layout: T + 1 observations) from an SB3 ReplayBuffer pickle.

    Reads observations, next_observations, actions, rewards, dones and timeouts up to the
    buffer's ``pos`` (in time order when the buffer wrapped; the first, overwritten episode is
    then dropped), for at most ``max_steps`` transitions per env. Cut at every ``done``:
    ``terminations = done and not timeout``, ``truncations = timeout``; a last, unfinished
    episode is kept and marked truncated. Actions are mapped back from SB3's [-1, 1] to the
    env's bounds.
    """
    buf = _load_replay(Path(path))
    size, pos, full = int(buf.buffer_size), int(buf.pos), bool(buf.full)
    order = np.r_[pos:size, 0:pos] if full else np.arange(pos)
    if max_steps is not None:
        order = order[:max_steps]
    if len(order) == 0:
        return []
    next_obs = getattr(buf, "next_observations", None)
    timeouts = getattr(buf, "timeouts", np.zeros_like(buf.dones))
    episodes = []
    for j in range(buf.dones.shape[1]):
        done = buf.dones[order, j] > 0.5
        timeout = timeouts[order, j] > 0.5
        ends = list(np.flatnonzero(done))
        if not ends or ends[-1] != len(order) - 1:
            ends.append(len(order) - 1)  # the unfinished last episode, truncated
        start = 0
        for k, end in enumerate(ends):
            rows = order[start:end + 1]
            start = end + 1
            if full and k == 0:
                continue  # its beginning was overwritten
            if next_obs is not None:
                final = next_obs[rows[-1], j]
            else:  # optimize_memory_usage buffers keep no next obs: the next row is the best guess
                final = buf.observations[(rows[-1] + 1) % size, j]
            actions = buf.actions[rows, j].astype(np.float32)
            if action_space is not None:
                actions = _unscale(actions, action_space)
            idx = np.arange(end + 1 - len(rows), end + 1)  # positions within ``order``
            term = done[idx] & ~timeout[idx]
            trunc = timeout[idx] & done[idx]
            if not done[idx[-1]]:
                trunc[-1] = True
            episodes.append({
                "observations": np.concatenate([buf.observations[rows, j], final[None]]),
                "actions": actions,
                "rewards": buf.rewards[rows, j].astype(np.float64),
                "terminations": term, "truncations": trunc,
            })
    return episodes


def _write_buffers(task: Task, dataset_id: str, episodes: list[dict], algorithm_name: str,
                   description: str, ref_min: float, ref_max: float) -> None:
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    if not episodes:
        raise ValueError(f"no episodes to write to {dataset_id}")
    buffers = [EpisodeBuffer(id=i, observations=ep["observations"], actions=ep["actions"],
                             rewards=list(ep["rewards"]), terminations=list(ep["terminations"]),
                             truncations=list(ep["truncations"]))
               for i, ep in enumerate(episodes)]
    with cleanup_on_failure(dataset_id):
        ensure_namespace(dataset_id)
        with warnings.catch_warnings():
            _quiet_create()
            dataset = minari.create_dataset_from_buffers(
                dataset_id=dataset_id, buffer=buffers, env=task.env_id, eval_env=task.env_id,
                algorithm_name=algorithm_name, author=AUTHOR, code_permalink=CODE,
                description=description, ref_min_score=ref_min, ref_max_score=ref_max)
        mean_return = float(np.mean([np.sum(ep["rewards"]) for ep in episodes]))
        dataset.storage.update_metadata({BEHAVIOUR_RETURN_KEY: mean_return})


# ------------------------------------------------------------------------- public API

def build_dataset(env_name: str, level: str, n_steps: int | None = None,
                  policy_path: str | Path | None = None, sac_run_dir: str | Path | None = None,
                  seed: int = 0, overwrite: bool = False, *, version: int = 0,
                  max_episode_steps: int | None = None, ref_min: float | None = None,
                  ref_max: float | None = None, dataset_id: str | None = None) -> str:
    """Build the ``level`` dataset of task ``env_name`` locally and return its Minari id.

    ``n_steps``: environment steps to collect (default 1M; episodes run to their end except the
    last, which the budget may cut: it is marked truncated). For ``medium-replay`` it caps the
    transitions read from the replay buffer (default: all of them up to the buffer's position).
    ``policy_path``: behaviour actor for ``medium``/``expert`` (default: the shipped one).
    ``sac_run_dir``: the SAC run whose ``replay.pkl`` makes ``medium-replay``.
    ``seed``: seeds the env resets (numpy ``default_rng(seed)`` draws one seed per episode), the
    actor's action noise (``torch.Generator().manual_seed(seed)``) and random actions.
    ``overwrite``: replace an existing dataset of the same id; the old one is deleted before the
    build starts (for ``medium-expert`` only the combined one: existing ``medium``/``expert``
    parts are reused).
    ``ref_min``/``ref_max``: override the reference scores stored in the metadata.
    """
    task = get_task(env_name)
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; levels: {', '.join(LEVELS)}")
    if n_steps is not None and (int(n_steps) != n_steps or n_steps <= 0):
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    dataset_id = check_dataset_id(dataset_id or task.local_dataset_id(level, version))
    if dataset_dir(dataset_id).exists():
        if not overwrite:
            raise FileExistsError(f"dataset {dataset_id} already exists at "
                                  f"{dataset_dir(dataset_id)}; pass overwrite=True "
                                  f"(`--overwrite`) to rebuild it")
        delete_local_dataset(dataset_id)

    if level == "medium-expert":
        if policy_path is not None:
            raise ValueError("medium-expert combines the medium and expert datasets; build those "
                             "with their policies first (policy_path applies to one level)")
        parts = []
        for part in ("medium", "expert"):
            part_id = task.local_dataset_id(part, version)
            if not is_local(part_id):
                build_dataset(env_name, part, n_steps=n_steps, seed=seed, version=version,
                              max_episode_steps=max_episode_steps, ref_min=ref_min,
                              ref_max=ref_max)
            parts.append(part_id)
        # The expert part's reference scores (ref_max = the expert's return) unless given.
        medium_meta, expert_meta = (read_metadata(p) for p in parts)
        lo = ref_min if ref_min is not None else expert_meta.get("ref_min_score")
        hi = ref_max if ref_max is not None else expert_meta.get("ref_max_score")
        if (medium_meta.get("ref_min_score"), medium_meta.get("ref_max_score")) != (lo, hi):
            warnings.warn(f"{parts[0]} has reference scores ({medium_meta.get('ref_min_score')}, "
                          f"{medium_meta.get('ref_max_score')}) unlike {dataset_id}'s ({lo}, {hi}),"
                          f" taken from {parts[1] if ref_max is None else 'the caller'}",
                          UserWarning, stacklevel=2)
        combine_datasets(parts, dataset_id, ref_min=lo, ref_max=hi,
                         description=f"D4RL-style medium-expert on {task.env_id}: "
                                     f"{' + '.join(parts)} combined with minari.combine_datasets; "
                                     f"reference scores re-attached from the parts",
                         metadata={"algorithm_name": "medium + expert (rlmin builder)"})
        return dataset_id

    if level == "medium-replay":
        if sac_run_dir is None:
            raise ValueError(
                "medium-replay needs the SAC run that trained the medium policy: pass "
                "sac_run_dir= (`--sac-run-dir`), a directory written by envs.sac.train_sac that "
                "holds replay.pkl")
        replay = Path(sac_run_dir) / "replay.pkl"
        if not replay.exists():
            raise FileNotFoundError(f"{replay} does not exist: sac_run_dir must be a run directory "
                                    f"of envs.sac.train_sac (with replay.pkl)")
        episodes = replay_episodes(replay, _action_space(task), max_steps=n_steps)
        expert = _expert_for_refs(task, level, None, None)
        lo, hi, how = _reference_scores(task, ref_min, ref_max, expert)
        steps = sum(len(ep["rewards"]) for ep in episodes)
        _write_buffers(task, dataset_id, episodes, algorithm_name="SAC replay buffer",
                       description=(f"D4RL-style medium-replay on {task.env_id}: the replay buffer "
                                    f"of the SAC run {Path(sac_run_dir).resolve()} ({steps} "
                                    f"transitions, cut at episode ends; the last unfinished "
                                    f"episode marked truncated), written with "
                                    f"minari.create_dataset_from_buffers. {how}."),
                       ref_min=lo, ref_max=hi)
        return dataset_id

    n_steps = int(n_steps or DEFAULT_STEPS)
    if level == "random":
        act, policy_text, meta, algorithm = None, "uniformly random actions " \
            f"(env.action_space.seed({seed}))", {}, "uniform random"
        expert = _expert_for_refs(task, level, None, None)
    else:
        path, actor, meta = _policy_for(task, level, policy_path)
        gen = torch.Generator().manual_seed(seed)
        space = _action_space(task)

        def act(obs, actor=actor, gen=gen, space=space):
            return _unscale(actor.act(obs, deterministic=False, generator=gen), space)

        shown = {k: meta[k] for k in ("sac_steps", "seed", "hidden", *RETURN_KEYS) if k in meta}
        policy_text = (f"stochastic actions of the SAC actor {path.resolve()} (metadata {shown}), "
                       f"action noise torch.Generator().manual_seed({seed})")
        algorithm = f"SAC actor, stochastic ({level})"
        expert = _expert_for_refs(task, level, policy_path, meta)
    lo, hi, how = _reference_scores(task, ref_min, ref_max, expert)
    description = (f"D4RL-style {level} data on {task.env_id}: {n_steps} steps collected with "
                   f"minari.DataCollector by rlmin's builder; {policy_text}; env resets seeded "
                   f"from numpy.random.default_rng({seed}); episodes capped at "
                   f"{max_episode_steps or task.max_episode_steps} steps. {how}.")
    _collect(task, dataset_id, act, n_steps, seed, max_episode_steps, algorithm, description,
             lo, hi)
    return dataset_id


def list_local_datasets(prefix: str | None = None) -> list[dict]:
    """Every local Minari dataset: id, env_id, steps, episodes, behaviour_return (mean episode
    return), ref_min, ref_max, path."""
    return list_local(prefix=prefix)
