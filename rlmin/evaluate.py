"""Evaluate an agent in a Gymnasium vector env: N seeded episodes per target return.

How episodes are run (so that numbers are comparable and reproducible):

* Episode ``i`` (0-based, per target) always starts from ``env.reset(seed=episode_seed(seed, i))``
  and always runs in env ``i % n_envs``: env ``j`` runs episodes ``j, j + n_envs, ...``. Every
  target uses the same episode seeds (paired comparison). Since each episode's start is fixed
  by its own seed and the agent treats env rows independently, the per-episode returns do not
  depend on ``n_envs`` (up to float round-off inside the agent's batched maths).
* The vector env runs with ``autoreset_mode=DISABLED``: when an env's episode ends, this module
  resets exactly that env (``reset_mask``) with the next episode's seed. So there is no autoreset
  step whose reward could leak into a return, and the agent sees ``done=True`` on that row at
  the first observation of the new episode (its reward for that row is 0 and is ignored).
* An env whose share of episodes is done keeps running (a vector env steps all its envs), but
  its further episodes are never counted; evaluation stops when all ``episodes`` have ended. The
  set of counted episodes is fixed in advance, so short episodes are not favoured.
* The agent runs in eval mode under ``torch.no_grad``; its previous mode is restored. Torch's
  global RNG is forked and seeded from ``seed`` for each target, so a stochastic agent is
  reproducible too and the caller's RNG stream (e.g. the trainer's) is left untouched.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from rlmin.errors import EvalUsageError
from rlmin.registry import TASKS, load_group
from rlmin.scores import normalized_score
from rlmin.spec import EvalSpec

__all__ = ["EvalUsageError", "EvaluationStopped", "check_evaluation", "episode_seed", "evaluate",
           "evaluate_checkpoint", "format_results_table", "target_key"]

DEFAULT_MAX_ENVS = 16


def episode_seed(seed: int, episode: int) -> int:
    """The env reset seed of episode ``episode`` of an evaluation with seed ``seed``.

    Derived with numpy's SeedSequence, so evaluations with nearby seeds do not share episodes
    (as ``seed + i`` would: seed 0's episode 1 would be seed 1's episode 0).
    """
    if seed < 0 or episode < 0:
        raise ValueError(f"seed and episode must be >= 0, got seed={seed}, episode={episode}")
    return int(np.random.SeedSequence([int(seed), int(episode)]).generate_state(1)[0])


def target_key(target: float) -> str:
    """The key of a target in ``results["targets"]``: ``"3600"`` for 3600.0, ``"1800.5"`` otherwise."""
    target = float(target)
    return str(int(target)) if target.is_integer() else repr(target)


def _agent_device(agent: torch.nn.Module) -> torch.device | None:
    for t in agent.parameters():
        return t.device
    for t in agent.buffers():
        return t.device
    return None


def _to_numpy_action(action: Any, n_envs: int, space: gym.Space) -> np.ndarray:
    if isinstance(action, torch.Tensor):
        action = action.detach().cpu().numpy()
    action = np.asarray(action)
    want = (n_envs, *space.shape)
    if action.shape != want:
        raise ValueError(
            f"agent.act returned actions of shape {action.shape}, expected {want} "
            f"(n_envs, *action_space.shape)"
        )
    if not np.all(np.isfinite(action)):
        raise ValueError("agent.act returned non-finite actions (NaN or inf)")
    return action.astype(space.dtype, copy=False)


class EvaluationStopped(Exception):
    """``evaluate(stop=...)`` ended early, between two env steps, because ``stop()`` said so (the
    trainer's stop flag: Ctrl-C or SIGTERM)."""


def _run_target(agent, env, target: float, episodes: int, n_envs: int, seed: int,
                max_steps: int | None = None, bar=None, stop=None):
    """Run the fixed set of ``episodes`` episodes for one target; returns (returns, lengths).

    ``max_steps``: the episodes' time limit; the loop stops with an error after the steps that
    many episodes can take, so broken bookkeeping fails instead of running forever. ``stop``: a
    callable asked before every env step; when it returns True, :class:`EvaluationStopped`.
    """
    budget = (math.ceil(episodes / n_envs) + 1) * (max_steps or 1_000_000)
    returns = np.full(episodes, np.nan, dtype=np.float64)
    lengths = np.zeros(episodes, dtype=np.int64)
    # current[j]: the counted episode env j is running, or -1 once its share is done
    current = np.arange(n_envs, dtype=np.int64)
    ep_return = np.zeros(n_envs, dtype=np.float64)
    ep_len = np.zeros(n_envs, dtype=np.int64)
    remaining = episodes

    obs, _ = env.reset(seed=[episode_seed(seed, int(i)) for i in current])
    state = agent.reset(n_envs, target)
    reward_in, done_in = None, None
    for _ in range(budget):
        if stop is not None and stop():
            raise EvaluationStopped(f"evaluation stopped at target {target:g} with "
                                    f"{remaining} of {episodes} episodes to run")
        action, state = agent.act(obs, reward_in, state, done_in)
        action = _to_numpy_action(action, n_envs, env.single_action_space)
        obs, reward, terminated, truncated, _ = env.step(action)
        reward = np.asarray(reward, dtype=np.float64)
        ep_return += reward
        ep_len += 1
        ended = np.logical_or(terminated, truncated)
        for j in np.flatnonzero(ended):
            i = current[j]
            if i >= 0:
                returns[i], lengths[i] = ep_return[j], ep_len[j]
                remaining -= 1
                if bar is not None:
                    bar.update(1)
                nxt = i + n_envs
                current[j] = nxt if nxt < episodes else -1
            ep_return[j], ep_len[j] = 0.0, 0
        if remaining == 0:
            break
        if ended.any():
            # seed=None for envs past their share: they continue their own seeded RNG stream
            seeds = [
                episode_seed(seed, int(current[j])) if ended[j] and current[j] >= 0 else None
                for j in range(n_envs)
            ]
            obs, _ = env.reset(seed=seeds, options={"reset_mask": ended.copy()})
        reward_in = np.where(ended, 0.0, reward)
        done_in = ended
    else:
        raise RuntimeError(f"evaluation did not finish {episodes} episodes within {budget} env "
                           f"steps ({remaining} still running): its episode bookkeeping is broken")
    return returns, lengths


def check_evaluation(agent, spec: EvalSpec, *, episodes: int,
                     target_returns: float | Sequence[float] | None = None,
                     n_envs: int | None = None, seed: int = 0,
                     max_episode_steps: int | None = None) -> tuple[list[float], int, int | None]:
    """Everything :func:`evaluate` will use, checked before any episode runs: returns (targets,
    n_envs, time limit). The trainer calls it before its first step, so a setting that would
    break the final evaluation fails before the work. Checks the arguments, the reference
    scores, that the env exists with the data's spaces, and each target through the agent's own
    ``reset`` (an agent refuses a target its float32 maths would overflow). Raises
    :class:`EvalUsageError` (a ValueError) naming what to change."""
    max_episode_steps = max_episode_steps or spec.max_episode_steps
    if target_returns is None:
        target_returns = spec.target_returns
    if isinstance(target_returns, (int, float, np.integer, np.floating)):
        target_returns = [target_returns]
    targets = [float(t) for t in target_returns]
    if not targets:
        raise EvalUsageError("target_returns is empty: give at least one target return")
    if len({target_key(t) for t in targets}) != len(targets):
        raise EvalUsageError(f"target_returns has duplicates: {targets} (--targets, "
                             f"eval.target_returns or eval.target_scores): give each once")
    if not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise EvalUsageError(f"episodes must be a positive int, got {episodes!r}")
    if n_envs is None:
        n_envs = DEFAULT_MAX_ENVS
    if n_envs < 1:
        raise EvalUsageError(f"n_envs must be >= 1, got {n_envs}")
    n_envs = int(min(n_envs, episodes))
    if seed < 0:
        raise EvalUsageError(f"seed must be >= 0, got {seed}")
    ref_min, ref_max = spec.ref_min, spec.ref_max
    if (ref_min is None) != (ref_max is None):
        raise EvalUsageError("give both ref_min and ref_max, or neither")
    if ref_min is not None and not ref_max > ref_min:
        raise EvalUsageError(f"ref_max ({ref_max}) must exceed ref_min ({ref_min})")
    if not all(math.isfinite(t) for t in targets):
        raise EvalUsageError(f"target returns must be finite numbers, got {targets}")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise EvalUsageError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    load_group(TASKS)  # task packages register their envs on import
    try:
        gym.spec(spec.env_id)
    except gym.error.Error as e:
        raise EvalUsageError(f"the evaluation env {spec.env_id!r} of {spec.dataset_id} is not "
                             f"registered ({e}): install the package that provides it, or give "
                             f"data.task") from None
    on = _agent_device(agent)
    with torch.no_grad(), torch.random.fork_rng(devices=[on.index or 0] if on is not None
                                                 and on.type == "cuda" else []):
        for target in targets:
            try:
                agent.reset(n_envs, target)
            except ValueError as e:
                said = str(e) if f"{target:g}" in str(e) else f"target return {target:g}: {e}"
                raise EvalUsageError(f"{said} (--targets, eval.target_returns)") from None
    return targets, n_envs, max_episode_steps


def evaluate(
    agent: torch.nn.Module,
    spec: EvalSpec,
    *,
    episodes: int,
    target_returns: float | Sequence[float] | None = None,
    n_envs: int | None = None,
    seed: int = 0,
    max_episode_steps: int | None = None,
    device: str | torch.device | None = None,
    vectorization_mode: str = "sync",
    progress: bool = False,
    stop=None,
) -> dict:
    """Run ``episodes`` episodes for each target return in ``spec.env_id`` and summarise them.

    Args:
        agent: follows rlmin's agent contract (``reset(n_envs, target)``, ``act(obs, reward,
            state, done)``); gets raw observations.
        spec: the evaluation spec (env id, time limit, targets, reference scores) of the data.
        episodes: episodes per target.
        target_returns: one target or several (default: the spec's); each is evaluated
            separately, on the same seeds.
        n_envs: parallel envs; default ``min(episodes, 16)``; never more than ``episodes``.
        seed: evaluation seed (>= 0); episode ``i`` resets with ``episode_seed(seed, i)``.
        max_episode_steps: overrides the spec's time limit.
        device: if given, the agent is moved there for the evaluation and moved back afterwards.
        vectorization_mode: ``"sync"`` (default) or ``"async"`` (one process per env).
        progress: show a progress bar of finished episodes (tqdm).
        stop: a callable asked before every env step (e.g. ``lambda: flag.is_set()``); when it
            returns True the evaluation ends there with :class:`EvaluationStopped` (envs
            closed, the agent restored). None (default): it always runs to the end.

    The arguments are checked first, by :func:`check_evaluation`.

    Returns:
        A JSON-ready dict: ``env_id``, ``dataset_id``, ``seed``, ``n_envs``, ``episodes``,
        ``max_episode_steps``, ``ref_min``, ``ref_max``, ``ref_source`` and ``targets``: a dict
        keyed by :func:`target_key` (``"3600"``), in the given order, of one dict per target with
        ``target_return``, ``episodes``, ``return_mean``, ``return_std``, ``normalized_mean``,
        ``normalized_std`` (None without reference scores), ``length_mean``, ``returns`` and
        ``lengths`` (per episode, in episode order). Stds are population stds (ddof=0).
    """
    env_id, ref_min, ref_max = spec.env_id, spec.ref_min, spec.ref_max
    targets, n_envs, max_episode_steps = check_evaluation(
        agent, spec, episodes=episodes, target_returns=target_returns, n_envs=n_envs, seed=seed,
        max_episode_steps=max_episode_steps)
    episodes = int(episodes)

    load_group(TASKS)  # task packages set up their envs on import (e.g. MuJoCo's warning log)
    make_kwargs = {}
    if max_episode_steps is not None:
        make_kwargs["max_episode_steps"] = int(max_episode_steps)
    elif gym.spec(env_id).max_episode_steps is None:
        warnings.warn(f"{env_id} has no time limit and max_episode_steps was not given; "
                      f"evaluation ends only when every episode terminates", stacklevel=2)
    env = gym.make_vec(
        env_id,
        num_envs=n_envs,
        vectorization_mode=vectorization_mode,
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.DISABLED},
        **make_kwargs,
    )

    home = _agent_device(agent)
    was_training = agent.training
    per_target: dict[str, dict] = {}
    try:
        if device is not None:
            agent.to(device)
        on = _agent_device(agent)
        cuda = [on.index or 0] if on is not None and on.type == "cuda" else []
        agent.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            for target in targets:
                torch.manual_seed(seed)
                with tqdm(total=episodes, desc=f"eval target {target:g}", unit="episode",
                          disable=not progress, leave=False, dynamic_ncols=True) as bar:
                    returns, lengths = _run_target(agent, env, target, episodes, n_envs, seed,
                                                   max_episode_steps, bar, stop)
                entry = {
                    "target_return": target,
                    "episodes": episodes,
                    "return_mean": float(returns.mean()),
                    "return_std": float(returns.std()),
                    "normalized_mean": None,
                    "normalized_std": None,
                    "length_mean": float(lengths.mean()),
                    "returns": returns.tolist(),
                    "lengths": lengths.tolist(),
                }
                if ref_min is not None:
                    norm = np.asarray(normalized_score(returns, ref_min, ref_max))
                    entry["normalized_mean"] = float(norm.mean())
                    entry["normalized_std"] = float(norm.std())
                per_target[target_key(target)] = entry
    finally:
        env.close()
        agent.train(was_training)
        if device is not None and home is not None:
            agent.to(home)

    return {
        "env_id": env_id,
        "dataset_id": spec.dataset_id,
        "seed": int(seed),
        "n_envs": n_envs,
        "episodes": episodes,
        "max_episode_steps": max_episode_steps,
        "ref_min": None if ref_min is None else float(ref_min),
        "ref_max": None if ref_max is None else float(ref_max),
        "ref_source": spec.ref_source,
        "targets": per_target,
    }


def _fmt(mean: float | None, std: float | None, digits: int, episodes: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    spread = "n/a" if episodes < 2 else f"{std:.{digits}f}"  # one episode has no spread
    return f"{mean:.{digits}f} ± {spread}"


def format_results_table(results: dict) -> str:
    """A markdown table of :func:`evaluate`'s results, one row per target return."""
    lines = [
        f"{results['env_id']}, seed {results['seed']}, {results['episodes']} episodes per target",
        f"dataset {results.get('dataset_id')}: normalised with ref_min {results.get('ref_min')}, "
        f"ref_max {results.get('ref_max')} ({results.get('ref_source')})",
        "",
        "| target | episodes | return (mean ± std) | normalised (mean ± std) | length |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in results["targets"].values():
        lines.append(
            f"| {r['target_return']:g} | {r['episodes']} | {_fmt(r['return_mean'], r['return_std'], 1, r['episodes'])} "
            f"| {_fmt(r['normalized_mean'], r['normalized_std'], 1, r['episodes'])} | {r['length_mean']:.1f} |"
        )
    return "\n".join(lines)


def load_actor(path, mode: str | None = None):
    """What ``rlmin eval`` plays: ``(agent, spec, describe, checkpoint)`` for a training
    checkpoint, a run dir (its latest checkpoint) or an exported policy (.pt, or .onnx run by ONNX
    Runtime), checked for acting ``mode`` (None: the agent's own). The agent acts in that mode
    inside ``with agent.acting(mode)`` (an ONNX policy: always carry)."""
    from rlmin.policy import agent_from_payload, load_payload

    if Path(path).suffix == ".onnx":
        return _load_onnx(Path(path), mode)
    payload, source = load_payload(path)
    agent = agent_from_payload(payload)
    if mode is not None:
        try:
            type(agent).check_act_mode(agent.options, mode)
        except ValueError as e:
            raise EvalUsageError(f"--mode {mode}: {e}") from None
    with agent.acting(mode):
        describe = agent.describe()
    return (agent, EvalSpec.from_dict(payload["eval_spec"]), describe,
            {"path": str(source), "step": payload.get("step")})


def evaluate_checkpoint(path, *, episodes: int = 10, mode: str | None = None, target_returns=None,
                        seed: int = 10_000, n_envs: int | None = None,
                        max_episode_steps: int | None = None) -> dict:
    """``rlmin eval``: evaluate what :func:`load_actor` loads in its own environment."""
    agent, spec, describe, checkpoint = load_actor(path, mode)
    with agent.acting(mode):
        res = evaluate(agent, spec, target_returns=target_returns, episodes=episodes,
                       n_envs=n_envs, seed=seed, max_episode_steps=max_episode_steps,
                       progress=True)
    res["agent"], res["checkpoint"] = describe, checkpoint
    return res


class _PolicyAgent(torch.nn.Module):
    """An exported policy (``reset``/``act`` with its state inside) under the agent contract."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def reset(self, n_envs, target_return):
        self.policy.reset(n_envs, target_return)

    @contextlib.contextmanager
    def acting(self, mode):  # its graph is one carry step: _load_onnx refused any other mode
        yield self

    def act(self, obs, reward, state, done=None):
        return self.policy.act(obs, reward, done), state


def _load_onnx(path: Path, mode: str | None):
    """The deployed file itself, run by ONNX Runtime: what a quantized policy scores."""
    from rlmin.onnx_policy import OnnxPolicy

    if not path.is_file():
        raise EvalUsageError(f"{path} does not exist")
    try:
        policy = OnnxPolicy.load(path)
    except ImportError:
        raise EvalUsageError("evaluating an .onnx policy needs onnxruntime: pip install 'rlmin[export]'") from None
    except ValueError as e:
        raise EvalUsageError(str(e)) from None
    if mode not in (None, "carry"):
        raise EvalUsageError(f"--mode {mode}: an ONNX policy acts in carry mode only (its graph is one carry step)")
    meta = policy.metadata
    describe = {**meta.get("describe", {}), "policy": "onnx", "quantization": meta.get("quantization")}
    return (_PolicyAgent(policy), EvalSpec.from_dict(meta["eval_spec"]), describe,
            {"path": str(path), "step": meta.get("step"), "source": meta.get("source")})
