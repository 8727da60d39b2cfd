"""Build D4RL-style datasets locally, in Minari format, from behaviour policies, offline.

Levels (D4RL's, on the Gymnasium v5 envs), with their default sizes (D4RL's):

* ``random``: uniformly random actions (the env's action space, seeded); 1M steps.
* ``medium`` / ``expert``: stochastic actions of a SAC actor (``envs.behaviour.GaussianActor``),
  ``<policies dir>/<task>-<level>.pt`` unless ``policy_path`` is given; 1M steps.
* ``medium-replay``: the data of the SAC run up to the medium policy. Two sources:
  - the default, offline: the run's snapshot series ``<policies dir>/<task>-replay/`` (a few
    actor snapshots and a ``manifest.json``, made by ``make_replay_series``). Every step of the
    run up to the medium step is represented by the snapshot nearest to it in SAC steps; each
    snapshot is rolled out (stochastic actions) for its share of the run's steps, and the steps
    SAC took before ``learning_starts`` are uniformly random actions, as SAC's were. Default size:
    the run's steps up to the medium policy. Unlike D4RL's medium-replay (the replay buffer
    itself: a policy that changed at every update, explored with SAC's noise at every step), this
    holds a few fixed policies' rollouts, so it is less varied within each stage of training;
  - ``sac_run_dir`` (``--sac-run``): that run's SB3 ``replay.pkl``, cut at episode ends (the
    buffer itself, as D4RL; hundreds of MB, never shipped).
* ``medium-expert``: ``medium`` and ``expert`` combined (each built first if missing).

The policies dir is ``envs/policies`` (shipped), or ``policies_dir`` / ``RLMIN_POLICIES_DIR``.
Datasets go to ``MINARI_DATASETS_PATH`` (Minari's default ``~/.minari/datasets`` if unset) under
``rlmin/<task>/<level>-v0``, written through ``minari.DataCollector(...).create_dataset`` (the
SB3 buffer: ``minari.create_dataset_from_buffers``; medium-expert: ``minari.combine_datasets``).
Every dataset stores both reference scores, so it normalises on its own, and says where they
came from (``ref_min_source``/``ref_max_source``): ``ref_min_score`` = a uniform-random policy's
mean return (the task table's measured value), ``ref_max_score`` = the task's expert policy's
mean stochastic return (from its metadata). The recipe (policy files with their metadata and
sha256, seed, steps, versions) is in the metadata under ``rlmin_recipe``.

Writes are all-or-nothing (``rlmin.data.minari_io.building``): a dataset appears only once
complete, ``overwrite`` keeps the old one until then, and a killed build costs only a restart.

The CLI's ``rlmin data build hopper medium`` calls ``build_dataset``.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import gymnasium as gym
import numpy as np
import torch

from envs.behaviour import load_actor, replay_series_path, shipped_policy_path, weights_digest
from rlmin.data.minari_io import (
    BEHAVIOUR_RETURN_KEY,
    building,
    check_dataset_id,
    combine_datasets,
    dataset_dir,
    dataset_status,
    is_local,
    read_metadata,
    write_metadata,
)
from rlmin.task import Task, get_task

LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
#: Steps collected for random/medium/expert when ``n_steps`` is not given (D4RL's and Minari's 1M).
DEFAULT_STEPS = 1_000_000
AUTHOR = "rlmin"
CODE = "envs/builder.py (rlmin)"
#: Keys of a policy's metadata that may hold its mean return, in order of preference. Data is
#: collected with stochastic actions, so the stochastic return comes first.
RETURN_KEYS = ("mean_return", "return_stochastic", "return_deterministic", "return")
RECIPE_KEY = "rlmin_recipe"
MANIFEST = "manifest.json"
SERIES_FORMAT = "rlmin-replay-series/1"
#: How a snapshot series represents the run (in the manifest and in the dataset description).
SERIES_HOW = ("every step of the SAC run up to the medium step is represented by the chosen "
              "snapshot nearest to it in SAC steps, rolled out with stochastic actions for its "
              "share of the run's steps; the steps before SAC's learning_starts are uniformly "
              "random actions, as SAC's were")
DIFFERS_FROM_D4RL = ("Unlike D4RL's medium-replay, which is the run's replay buffer itself (a "
                     "policy that changed at every SAC update, with SAC's exploration noise at "
                     "every step), this holds the rollouts of a few fixed snapshots, so it is "
                     "less varied within each stage of training")


# ------------------------------------------------------------------------- policies and refs

def _policy_return(meta: dict) -> tuple[float, str] | None:
    for key in RETURN_KEYS:
        if meta.get(key) is not None:
            return float(meta[key]), key
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("rlmin", "minari", "gymnasium", "mujoco", "torch", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _load_policy(path: str | Path, task: Task):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"behaviour policy {path} does not exist")
    try:
        actor, meta = load_actor(path)
    except Exception as e:  # noqa: BLE001 (any file that is not an actor: one line, never torch's advice)
        raise ValueError(f"--policy {path} is not a behaviour actor ({_what_file(path, e)}): "
                         f"pass an actor written by envs.behaviour.save_actor (a SAC run's "
                         f"actor_<step>.pt from scripts/train_behaviour.py, or envs/policies/"
                         f"<task>-<level>.pt)") from None
    obs_dim, act_dim = actor.latent_pi[0].in_features, actor.mu.out_features
    want = ((task.obs_dim,), (task.act_dim,)) if task.obs_dim else _spaces_shapes(task)
    if ((obs_dim,), (act_dim,)) != want:
        raise ValueError(f"policy {path} takes observations ({obs_dim},) and gives actions "
                         f"({act_dim},), but {task.env_id} has observations {want[0]} and "
                         f"actions {want[1]}")
    if meta.get("env_id") not in (None, task.env_id):
        raise ValueError(f"policy {path} was trained on {meta['env_id']}, not {task.env_id}")
    return actor, meta


def _what_file(path: Path, error: BaseException) -> str:
    """What a file that ``load_actor`` refused is, in a few words (rlmin's own files by their
    keys; the safe loader's refusal without its advice to load unsafely)."""
    from rlmin.checkpoint import TRAINING_KEYS, _loader_reason

    if isinstance(error, pickle.UnpicklingError):
        if "global" in str(error).lower():
            return "it holds Python code or objects, and rlmin never runs code from a file"
        return f"not a torch file, or a damaged one: {_loader_reason(error)}"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        return f"not a torch file, or a damaged one: {_loader_reason(e)}"
    if not isinstance(payload, dict):
        return f"it holds a {type(payload).__name__}"
    if all(k in payload for k in TRAINING_KEYS):
        return "it is an rlmin training checkpoint"
    if "agent" in payload and "eval_spec" in payload:
        return f"it is an exported policy ({payload.get('format', 'rlmin')}), not an actor"
    return f"its keys are {', '.join(sorted(map(str, payload))[:6])}"


def _spaces_shapes(task: Task):
    env = gym.make(task.env_id)
    try:
        return env.observation_space.shape, env.action_space.shape
    finally:
        env.close()


def _policy_file(task: Task, level: str, policies_dir) -> Path:
    if policies_dir is not None:
        return Path(policies_dir) / f"{task.name}-{level}.pt"
    return shipped_policy_path(task.name, level)  # envs/policies, or RLMIN_POLICIES_DIR


def _series_dir(task: Task, policies_dir) -> Path:
    if policies_dir is not None:
        return Path(policies_dir) / f"{task.name}-replay"
    return replay_series_path(task.name)


def _policy_for(task: Task, level: str, policy_path, policies_dir) -> tuple[Path, object, dict]:
    path = Path(policy_path) if policy_path is not None else _policy_file(task, level, policies_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"no behaviour policy for {task.name} {level}: {path} does not exist. Pass one with "
            f"`rlmin data build {task.name} {level} --policy PATH` (Python: policy_path=PATH), an "
            f"actor written by envs.behaviour.save_actor such as a SAC run's actor_<step>.pt from "
            f"scripts/train_behaviour.py, or point `--policies-dir DIR` (RLMIN_POLICIES_DIR) at a "
            f"folder holding {path.name}")
    actor, meta = _load_policy(path, task)
    return path, actor, meta


def _policy_recipe(path: Path, meta: dict) -> dict:
    return {"file": str(Path(path).resolve()), "sha256": _sha256(path), "metadata": meta}


class Refs(NamedTuple):
    ref_min: float
    ref_max: float
    min_source: str
    max_source: str

    def metadata(self) -> dict:
        return {"ref_min_source": self.min_source, "ref_max_source": self.max_source}

    def text(self) -> str:
        return (f"Normalised scores use ref_min_score {self.ref_min:.2f} ({self.min_source}) and "
                f"ref_max_score {self.ref_max:.2f} ({self.max_source})")


def _source_of(task: Task, key: str) -> str:
    """The part of ``task.ref_source`` about ``key`` ("ref_min 24.8: ...; ref_max 4098: ...")."""
    text = task.ref_source
    start = text.find(key)
    if start < 0:
        return text
    end = text.find("; ref_", start + 1)
    part = text[start:end if end > 0 else None].strip()
    return part.split(": ", 1)[-1]  # without the "ref_min 24.8: " its caller already states


def _reference_scores(task: Task, ref_min, ref_max, expert: tuple[Path, dict] | None) -> Refs:
    """ref_min: the task table's random return; ref_max: the expert policy's mean return."""
    if ref_min is None:
        ref_min, min_how = task.ref_min, f"task table: {_source_of(task, 'ref_min')}"
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
                   f"{_source_of(task, 'ref_max')}")
    ref_min, ref_max = float(ref_min), float(ref_max)
    if not ref_max > ref_min:
        raise ValueError(f"ref_max_score {ref_max} ({max_how}) must exceed ref_min_score "
                         f"{ref_min} ({min_how})")
    return Refs(ref_min, ref_max, min_how, max_how)


def _expert_for_refs(task: Task, level: str, policy_path, policy_meta,
                     policies_dir) -> tuple[Path, dict] | None:
    if level == "expert" and policy_path is not None:
        return Path(policy_path), policy_meta
    path = _policy_file(task, "expert", policies_dir)
    if path.exists():
        return path, load_actor(path)[1]
    return None


def _unscale(action: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """[-1, 1] policy output -> the env's action bounds (identity for [-1, 1] boxes)."""
    if np.all(space.low == -1) and np.all(space.high == 1):
        return action.astype(space.dtype)
    return (space.low + 0.5 * (action + 1.0) * (space.high - space.low)).astype(space.dtype)


def _action_space(task: Task) -> gym.spaces.Box:
    env = gym.make(task.env_id)
    try:
        return env.action_space
    finally:
        env.close()


def _actor_fn(actor, task: Task, gen: torch.Generator) -> Callable[[np.ndarray], np.ndarray]:
    space = _action_space(task)
    return lambda obs: _unscale(actor.act(obs, deterministic=False, generator=gen), space)


# ------------------------------------------------------------------------- writing

def _quiet_create():
    """Silence Minari's advice about fields we leave unset on purpose (author e-mail ...)."""
    warnings.filterwarnings("ignore", message=r".*is set to None.*")


class Segment(NamedTuple):
    """``n_steps`` steps of one behaviour: ``act(obs) -> action``, or None for random actions."""
    act: Callable[[np.ndarray], np.ndarray] | None
    n_steps: int
    name: str


def _collect(task: Task, dataset_id: str, segments: list[Segment], *, seed: int,
             max_episode_steps: int | None, algorithm_name: str, description: str, refs: Refs,
             recipe: dict, overwrite: bool, progress: bool) -> list[dict]:
    """Roll the segments out one after another with one ``minari.DataCollector`` and write the
    dataset; returns per segment its steps, episodes and mean return (also in the recipe).

    A segment's last episode, cut by its step budget, is marked truncated (DataCollector does so
    on the next reset, and on create_dataset for the last one).
    """
    import minari
    from tqdm import tqdm

    reset_seeds = np.random.default_rng(seed)
    stats, all_returns, started = [], [], time.time()
    total = sum(s.n_steps for s in segments)
    with building(dataset_id, overwrite=overwrite):
        env = gym.make(task.env_id, max_episode_steps=max_episode_steps or task.max_episode_steps)
        env.action_space.seed(seed)
        collector = minari.DataCollector(env, record_infos=False)  # its cache: in the build dir
        try:
            with tqdm(total=total, desc=f"building {dataset_id}", unit="step", unit_scale=True,
                      disable=not progress, mininterval=1.0) as bar:
                for segment in segments:
                    returns, ep_return, done = [], 0.0, True
                    for _ in range(segment.n_steps):
                        if done:
                            obs, _ = collector.reset(seed=int(reset_seeds.integers(2**31)))
                        action = env.action_space.sample() if segment.act is None \
                            else segment.act(obs)
                        obs, reward, terminated, truncated, _ = collector.step(action)
                        ep_return += float(reward)
                        done = terminated or truncated
                        if done:
                            returns.append(ep_return)
                            ep_return = 0.0
                        bar.update()
                    if not done:  # cut by the step budget: DataCollector marks it truncated
                        returns.append(ep_return)
                    stats.append({"name": segment.name, "steps": segment.n_steps,
                                  "episodes": len(returns),
                                  "mean_return": float(np.mean(returns)) if returns else None})
                    all_returns += returns
            with warnings.catch_warnings():
                _quiet_create()
                dataset = collector.create_dataset(
                    dataset_id=dataset_id, eval_env=task.env_id, algorithm_name=algorithm_name,
                    author=AUTHOR, code_permalink=CODE, description=description,
                    ref_min_score=refs.ref_min, ref_max_score=refs.ref_max)
            recipe = {**recipe, "seconds": round(time.time() - started, 1)}
            if len(segments) > 1:
                recipe["segments_built"] = stats
            write_metadata(dataset.storage.data_path,
                           {BEHAVIOUR_RETURN_KEY: float(np.mean(all_returns)), **refs.metadata(),
                            RECIPE_KEY: recipe})
        finally:
            collector.close()
    return stats


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
                   description: str, refs: Refs, recipe: dict, overwrite: bool) -> None:
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    if not episodes:
        raise ValueError(f"no episodes to write to {dataset_id}")
    buffers = [EpisodeBuffer(id=i, observations=ep["observations"], actions=ep["actions"],
                             rewards=list(ep["rewards"]), terminations=list(ep["terminations"]),
                             truncations=list(ep["truncations"]))
               for i, ep in enumerate(episodes)]
    with building(dataset_id, overwrite=overwrite):
        with warnings.catch_warnings():
            _quiet_create()
            dataset = minari.create_dataset_from_buffers(
                dataset_id=dataset_id, buffer=buffers, env=task.env_id, eval_env=task.env_id,
                algorithm_name=algorithm_name, author=AUTHOR, code_permalink=CODE,
                description=description, ref_min_score=refs.ref_min, ref_max_score=refs.ref_max)
        mean_return = float(np.mean([np.sum(ep["rewards"]) for ep in episodes]))
        write_metadata(dataset.storage.data_path, {BEHAVIOUR_RETURN_KEY: mean_return,
                                                   **refs.metadata(), RECIPE_KEY: recipe})


# ------------------------------------------------------------------------- replay series

def _read_curve(run_dir: Path) -> list[dict]:
    curve = run_dir / "curve.jsonl"
    if not curve.exists():
        return []
    return [json.loads(line) for line in curve.read_text().splitlines() if line.strip()]


def make_replay_series(run_dir: str | Path, medium_step: int, out_dir: str | Path,
                       n_snapshots: int = 8, learning_starts: int | None = None,
                       overwrite: bool = False) -> dict:
    """Pick a few actor snapshots of a SAC run for an offline medium-replay; returns the manifest.

    ``run_dir``: a run of ``envs.sac.train_sac`` (``actor_<step>.pt`` files and ``curve.jsonl``);
    ``medium_step``: the SAC step of the medium policy (``actor_<medium_step>.pt`` must exist).
    The run's steps from ``learning_starts`` to ``medium_step`` are cut into ``n_snapshots``
    equal stretches; the snapshot nearest each stretch's middle is chosen, and each chosen one
    represents the steps nearer to it than to any other chosen one. The steps before
    ``learning_starts`` (read from the actors' metadata; SB3's default 100 if absent) are a
    uniform-random entry. Each entry records its steps and, from curve.jsonl's cumulative episode
    counts (linearly interpolated between evaluations), its episodes, with both shares.
    Writes ``out_dir/manifest.json``, copies of the chosen actors and of curve.jsonl; ``out_dir``
    appears complete or not at all.
    """
    run_dir, out_dir, medium_step = Path(run_dir), Path(out_dir), int(medium_step)
    steps = sorted(int(p.stem.split("_")[1]) for p in run_dir.glob("actor_*.pt")
                   if p.stem.split("_")[1].isdigit())
    if medium_step not in steps:
        raise FileNotFoundError(f"{run_dir / f'actor_{medium_step}.pt'} does not exist; the run "
                                f"has snapshots at steps {steps[:3]}...{steps[-3:]}" if steps
                                else f"{run_dir} holds no actor_<step>.pt snapshots")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    medium_actor, medium_meta = load_actor(run_dir / f"actor_{medium_step}.pt")
    if learning_starts is None:
        learning_starts = medium_meta.get("learning_starts")
        ls_source = "actor metadata" if learning_starts is not None else "SB3's default"
        learning_starts = 100 if learning_starts is None else learning_starts
    else:
        ls_source = "given by the caller"
    start = min(int(learning_starts), medium_step)
    candidates = [s for s in steps if start <= s <= medium_step]
    if medium_step <= start or not candidates:
        raise ValueError(f"medium_step {medium_step} must exceed learning_starts {start}")

    width = (medium_step - start) / min(n_snapshots, len(candidates))
    centres = [start + (i + 0.5) * width for i in range(min(n_snapshots, len(candidates)))]
    chosen = sorted({min(candidates, key=lambda s, c=c: (abs(s - c), -s)) for c in centres})
    bounds = [start] + [(a + b) // 2 for a, b in zip(chosen, chosen[1:])] + [medium_step]

    curve = [r for r in _read_curve(run_dir) if r.get("episodes") is not None]
    def episodes_at(step):  # SAC's training episodes finished by ``step``
        if not curve:
            return None
        xs, ys = [0] + [r["step"] for r in curve], [0] + [r["episodes"] for r in curve]
        return float(np.interp(step, xs, ys))
    total_episodes = episodes_at(medium_step)

    entries = []
    if start > 0:
        entries.append({"file": None, "sac_step": None, "policy": "uniform random",
                        "from_step": 0, "to_step": start})
    for step, lo, hi in zip(chosen, bounds, bounds[1:]):
        meta = load_actor(run_dir / f"actor_{step}.pt")[1]
        entries.append({"file": f"actor_{step}.pt", "sac_step": step, "policy": "SAC snapshot",
                        "from_step": lo, "to_step": hi,
                        "return_stochastic": meta.get("return_stochastic")})
    for e in entries:
        e["steps"] = e["to_step"] - e["from_step"]
        e["step_share"] = e["steps"] / medium_step
        if total_episodes:
            e["episodes"] = episodes_at(e["to_step"]) - episodes_at(e["from_step"])
            e["episode_share"] = e["episodes"] / total_episodes
        else:
            e["episodes"] = e["episode_share"] = None
    manifest = {
        "format": SERIES_FORMAT, "env_id": medium_meta.get("env_id"),
        "sac_run_dir": str(run_dir.resolve()), "medium_step": medium_step,
        "learning_starts": start, "learning_starts_source": ls_source,
        "steps": medium_step, "episodes": total_episodes,
        "medium_policy": {"file": f"actor_{medium_step}.pt",
                          "sha256": _sha256(run_dir / f"actor_{medium_step}.pt"),
                          "weights_sha256": weights_digest(medium_actor),  # matches the shipped
                          "metadata": medium_meta},                        # medium's, re-saved
        "how": SERIES_HOW, "differs_from_d4rl": DIFFERS_FROM_D4RL,
        "snapshots": entries,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for e in entries:
            if e["file"]:
                shutil.copy2(run_dir / e["file"], tmp / e["file"])
        if (run_dir / "curve.jsonl").exists():
            shutil.copy2(run_dir / "curve.jsonl", tmp / "curve.jsonl")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def load_replay_series(series_dir: str | Path, task: Task) -> dict:
    """The manifest of a snapshot series, checked against ``task`` (files present, steps add up)."""
    series_dir = Path(series_dir)
    manifest = json.loads((series_dir / MANIFEST).read_text())
    if manifest.get("format") != SERIES_FORMAT:
        raise ValueError(f"{series_dir / MANIFEST} is not a {SERIES_FORMAT} manifest")
    if manifest.get("env_id") not in (None, task.env_id):
        raise ValueError(f"{series_dir} is a series of {manifest['env_id']}, not {task.env_id}")
    missing = [e["file"] for e in manifest["snapshots"]
               if e["file"] and not (series_dir / e["file"]).exists()]
    if missing:
        raise FileNotFoundError(f"{series_dir} lacks {', '.join(missing)} named in its manifest")
    if sum(e["steps"] for e in manifest["snapshots"]) != manifest["steps"]:
        raise ValueError(f"{series_dir / MANIFEST}: the snapshots' steps do not add up to "
                         f"{manifest['steps']}")
    return manifest


def _shares(weights: list[float], total: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` into integers that add up to it exactly
    (largest remainder)."""
    raw = np.asarray(weights, dtype=np.float64) / np.sum(weights) * total
    out = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - out), kind="stable")[: total - out.sum()]:
        out[i] += 1
    return [int(n) for n in out]


def _build_from_series(task: Task, dataset_id: str, series_dir: Path, n_steps, seed: int,
                       max_episode_steps, refs_args, policies_dir, overwrite, progress) -> None:
    manifest = load_replay_series(series_dir, task)
    budget = int(n_steps or manifest["steps"])
    entries = manifest["snapshots"]
    # The run's buffer holds steps, so each snapshot gets its share of the steps; its episodes
    # then come out near the buffer's (recorded per snapshot in the recipe to compare).
    counts = _shares([e["steps"] for e in entries], budget)
    gen = torch.Generator().manual_seed(seed)
    segments = []
    for e, n in zip(entries, counts):
        if e["file"] is None:
            segments.append(Segment(None, n, "uniform random"))
        else:
            actor, _ = _load_policy(series_dir / e["file"], task)
            segments.append(Segment(_actor_fn(actor, task, gen), n, e["file"]))
    refs = _reference_scores(task, *refs_args,
                             _expert_for_refs(task, "medium-replay", None, None, policies_dir))
    recipe = {**_base_recipe(task, "medium-replay", budget, seed, max_episode_steps),
              "source": "snapshot series",
              "series": {"dir": str(series_dir.resolve()),
                         "manifest_sha256": _sha256(series_dir / MANIFEST), "manifest": manifest,
                         "steps_per_snapshot": counts}}
    n_random = sum(n for e, n in zip(entries, counts) if e["file"] is None)
    description = (
        f"D4RL-style medium-replay on {task.env_id}, rebuilt offline by rlmin's builder from "
        f"{sum(1 for e in entries if e['file'])} actor snapshots of the SAC run that trained the "
        f"medium policy (SAC step {manifest['medium_step']}; series {series_dir.name}): "
        f"{SERIES_HOW}. {budget} steps collected with minari.DataCollector ({n_random} of them "
        f"random; the run itself took {manifest['steps']}); action noise "
        f"torch.Generator().manual_seed({seed}), env resets seeded from "
        f"numpy.random.default_rng({seed}); each snapshot's last episode, cut by its budget, is "
        f"marked truncated. {DIFFERS_FROM_D4RL}. {refs.text()}.")
    _collect(task, dataset_id, segments, seed=seed, max_episode_steps=max_episode_steps,
             algorithm_name="SAC snapshot series, stochastic (medium-replay)",
             description=description, refs=refs, recipe=recipe, overwrite=overwrite,
             progress=progress)


# ------------------------------------------------------------------------- public API

def _base_recipe(task: Task, level: str, n_steps, seed, max_episode_steps) -> dict:
    return {"builder": "envs.builder.build_dataset", "task": task.name, "env_id": task.env_id,
            "level": level, "n_steps": n_steps, "seed": seed,
            "max_episode_steps": max_episode_steps or task.max_episode_steps,
            "versions": _versions(), "cpu": _cpu_paths()}


# The behaviour actor's float32 matmuls run through MKL/oneDNN kernels chosen per CPU, and MuJoCo
# turns their last-bit differences into other episodes: the same recipe on an AVX-512 Intel and an
# AVX2 AMD CPU gave other data (docs/DATASETS.md). These settings pick the kernels, so they are kept.
_ISA_SETTINGS = ("MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def _cpu_paths() -> dict:
    import os

    from rlmin.machine import cpu_model

    return {"model": cpu_model(), **{k: os.environ[k] for k in _ISA_SETTINGS if k in os.environ}}


def build_dataset(env_name: str, level: str, n_steps: int | None = None,
                  policy_path: str | Path | None = None, sac_run_dir: str | Path | None = None,
                  seed: int = 0, overwrite: bool = False, *, version: int = 0,
                  max_episode_steps: int | None = None, ref_min: float | None = None,
                  ref_max: float | None = None, dataset_id: str | None = None,
                  policies_dir: str | Path | None = None, progress: bool = True) -> str:
    """Build the ``level`` dataset of task ``env_name`` locally and return its Minari id.

    ``n_steps``: environment steps to collect (default 1M; medium-replay: the run's steps up to
    the medium policy). Episodes run to their end except the last, which the budget may cut: it is
    marked truncated. With ``sac_run_dir`` it caps the transitions read from the replay buffer.
    ``policy_path``: behaviour actor for ``medium``/``expert`` (default: the policies dir's).
    ``sac_run_dir``: make ``medium-replay`` from this SAC run's ``replay.pkl`` instead of the
    snapshot series.
    ``policies_dir``: where ``<task>-<level>.pt`` and ``<task>-replay/`` are looked up (default:
    ``RLMIN_POLICIES_DIR`` or the shipped ``envs/policies``).
    ``seed``: seeds the env resets (numpy ``default_rng(seed)`` draws one seed per episode), the
    actors' action noise (``torch.Generator().manual_seed(seed)``) and random actions.
    ``overwrite``: replace an existing dataset of the same id, which stays in place until the new
    one is complete (for ``medium-expert`` only the combined one: existing ``medium``/``expert``
    parts are reused). An incomplete existing dataset is replaced without it.
    ``ref_min``/``ref_max``: override the reference scores stored in the metadata.
    ``progress``: show a tqdm bar (on stderr) while collecting.
    """
    task = get_task(env_name)
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; levels: {', '.join(LEVELS)}")
    if n_steps is not None and (int(n_steps) != n_steps or n_steps <= 0):
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    dataset_id = check_dataset_id(dataset_id or task.local_dataset_id(level, version))
    if dataset_status(dataset_id) == "complete" and not overwrite:  # fail before any work
        raise FileExistsError(f"dataset {dataset_id} already exists at {dataset_dir(dataset_id)}; "
                              f"rebuild it with `--overwrite` (Python: overwrite=True)")
    if policy_path is not None and level not in ("medium", "expert"):
        raise ValueError(f"--policy (policy_path) applies to medium and expert, not {level}")
    common = dict(seed=seed, max_episode_steps=max_episode_steps, policies_dir=policies_dir,
                  progress=progress)

    if level == "medium-expert":
        parts = []
        for part in ("medium", "expert"):
            part_id = task.local_dataset_id(part, version)
            if not is_local(part_id):
                build_dataset(env_name, part, n_steps=n_steps, version=version, ref_min=ref_min,
                              ref_max=ref_max, **common)
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
        sources = {"ref_min_source": expert_meta.get("ref_min_source", "the expert part's"),
                   "ref_max_source": expert_meta.get("ref_max_source", "the expert part's")}
        if ref_min is not None:
            sources["ref_min_source"] = "given by the caller"
        if ref_max is not None:
            sources["ref_max_source"] = "given by the caller"
        recipe = {**_base_recipe(task, level, None, seed, max_episode_steps),
                  "parts": {p: read_metadata(p).get(RECIPE_KEY) for p in parts}}
        combine_datasets(parts, dataset_id, ref_min=lo, ref_max=hi, overwrite=overwrite,
                         description=f"D4RL-style medium-expert on {task.env_id}: "
                                     f"{' + '.join(parts)} combined with minari.combine_datasets; "
                                     f"reference scores re-attached from "
                                     f"{'the caller' if ref_max is not None else parts[1]}: "
                                     f"ref_min_score {lo} ({sources['ref_min_source']}), "
                                     f"ref_max_score {hi} ({sources['ref_max_source']})",
                         metadata={"algorithm_name": "medium + expert (rlmin builder)",
                                   **sources, RECIPE_KEY: recipe})
        return dataset_id

    if level == "medium-replay" and sac_run_dir is None:
        series = _series_dir(task, policies_dir)
        if not (series / MANIFEST).exists():
            raise FileNotFoundError(
                f"no medium-replay source for {task.name}: {series / MANIFEST} does not exist. "
                f"Make it from the SAC run that trained the medium policy, either from its replay "
                f"buffer: `rlmin data build {task.name} medium-replay --sac-run RUN_DIR`, or as a "
                f"snapshot series: `python scripts/make_replay_series.py RUN_DIR --medium-step N "
                f"--out {series}`")
        _build_from_series(task, dataset_id, series, n_steps, seed, max_episode_steps,
                           (ref_min, ref_max), policies_dir, overwrite, progress)
        return dataset_id

    if level == "medium-replay":
        replay = Path(sac_run_dir) / "replay.pkl"
        if not replay.exists():
            raise FileNotFoundError(f"{replay} does not exist: --sac-run (sac_run_dir) must be a "
                                    f"run directory of scripts/train_behaviour.py (with "
                                    f"replay.pkl)")
        episodes = replay_episodes(replay, _action_space(task), max_steps=n_steps)
        refs = _reference_scores(task, ref_min, ref_max,
                                 _expert_for_refs(task, level, None, None, policies_dir))
        steps = sum(len(ep["rewards"]) for ep in episodes)
        recipe = {**_base_recipe(task, level, steps, None, max_episode_steps),
                  "source": "SB3 replay buffer", "replay": str(replay.resolve())}
        _write_buffers(task, dataset_id, episodes, algorithm_name="SAC replay buffer",
                       description=(f"D4RL-style medium-replay on {task.env_id}: the replay buffer "
                                    f"of the SAC run {Path(sac_run_dir).resolve()} ({steps} "
                                    f"transitions, cut at episode ends; the last unfinished "
                                    f"episode marked truncated), written with "
                                    f"minari.create_dataset_from_buffers. {refs.text()}."),
                       refs=refs, recipe=recipe, overwrite=overwrite)
        return dataset_id

    n_steps = int(n_steps or DEFAULT_STEPS)
    recipe = _base_recipe(task, level, n_steps, seed, max_episode_steps)
    if level == "random":
        act, algorithm = None, "uniform random"
        policy_text = f"uniformly random actions (env.action_space.seed({seed}))"
        expert = _expert_for_refs(task, level, None, None, policies_dir)
        recipe["policy"] = "uniform random"
    else:
        path, actor, meta = _policy_for(task, level, policy_path, policies_dir)
        act = _actor_fn(actor, task, torch.Generator().manual_seed(seed))
        shown = {k: meta[k] for k in ("sac_steps", "seed", "hidden", *RETURN_KEYS) if k in meta}
        policy_text = (f"stochastic actions of the SAC actor {path.name} (metadata {shown}), "
                       f"action noise torch.Generator().manual_seed({seed})")
        algorithm = f"SAC actor, stochastic ({level})"
        expert = _expert_for_refs(task, level, policy_path, meta, policies_dir)
        recipe["policy"] = _policy_recipe(path, meta)
    refs = _reference_scores(task, ref_min, ref_max, expert)
    if expert is not None:
        recipe["expert_for_ref_max"] = str(Path(expert[0]).resolve())
    description = (f"D4RL-style {level} data on {task.env_id}: {n_steps} steps collected with "
                   f"minari.DataCollector by rlmin's builder; {policy_text}; env resets seeded "
                   f"from numpy.random.default_rng({seed}); episodes capped at "
                   f"{max_episode_steps or task.max_episode_steps} steps. {refs.text()}.")
    _collect(task, dataset_id, [Segment(act, n_steps, level)], seed=seed,
             max_episode_steps=max_episode_steps, algorithm_name=algorithm,
             description=description, refs=refs, recipe=recipe, overwrite=overwrite,
             progress=progress)
    return dataset_id
