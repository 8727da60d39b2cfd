"""Train SAC behaviour policies with stable-baselines3 (optional extra ``rlmin[behaviour]``).

Training is checkpointed (model + replay buffer) and resumable across sessions: call
``train_sac`` again with the same run directory and it continues where it stopped. Every
``eval_every`` steps the deterministic and stochastic returns are appended to ``curve.jsonl``
and the actor is exported (``actor_<step>.pt``), so a "medium" and an "expert" policy can
be picked from the curve afterwards.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from envs.behaviour import GaussianActor, save_actor


def export_sb3_actor(model) -> GaussianActor:
    """Copy an SB3 SAC actor's weights into a ``GaussianActor`` (no SB3 needed to use it)."""
    sb3_actor = model.policy.actor
    hidden = tuple(m.out_features for m in sb3_actor.latent_pi if isinstance(m, torch.nn.Linear))
    actor = GaussianActor(sb3_actor.mu.in_features if not hidden else
                          sb3_actor.latent_pi[0].in_features, sb3_actor.mu.out_features, hidden)
    actor.latent_pi.load_state_dict(sb3_actor.latent_pi.state_dict())
    actor.mu.load_state_dict(sb3_actor.mu.state_dict())
    actor.log_std.load_state_dict(sb3_actor.log_std.state_dict())
    return actor.eval()


def evaluate_actor(actor: GaussianActor, env_id: str, episodes: int, seed: int,
                   deterministic: bool) -> tuple[float, float]:
    """Mean and std of undiscounted returns over ``episodes`` episodes, run in a vector env."""
    envs = gym.make_vec(env_id, num_envs=episodes, vectorization_mode="sync")
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(episodes)
    done = np.zeros(episodes, dtype=bool)
    gen = torch.Generator().manual_seed(seed)
    while not done.all():
        obs, reward, term, trunc, _ = envs.step(actor.act(obs, deterministic, gen))
        returns += reward * ~done
        done |= term | trunc
    envs.close()
    return float(returns.mean()), float(returns.std())


def _versions() -> dict:
    import gymnasium
    import mujoco
    import stable_baselines3
    return {"stable_baselines3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__,
            "mujoco": mujoco.__version__, "torch": str(torch.__version__)}


def train_sac(env_id: str, run_dir: str | Path, total_steps: int, seed: int = 0,
              eval_every: int = 5000, eval_episodes: int = 10, hidden=(64, 64),
              critic_hidden=None, learning_starts: int = 100) -> Path:
    """Train (or resume) SAC on ``env_id`` up to ``total_steps`` environment steps.

    ``hidden`` sizes the actor (the shipped file), ``critic_hidden`` the Q networks (default: the
    actor's): a wide critic learns faster while the exported actor stays tens of KB.
    """
    from stable_baselines3 import SAC  # optional dependency

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model_path, buffer_path = run_dir / "sac.zip", run_dir / "replay.pkl"
    env = gym.make(env_id)
    if model_path.exists():
        model = SAC.load(model_path, env=env, device="cpu")
        model.load_replay_buffer(buffer_path)
        print(f"resumed at step {model.num_timesteps}", flush=True)
    else:
        critic = list(critic_hidden or hidden)
        model = SAC("MlpPolicy", env, seed=seed, device="cpu", learning_starts=learning_starts,
                    policy_kwargs={"net_arch": {"pi": list(hidden), "qf": critic}})
    curve = run_dir / "curve.jsonl"
    while model.num_timesteps < total_steps:
        start = time.time()
        model.learn(eval_every, reset_num_timesteps=False, progress_bar=False)
        step = model.num_timesteps
        actor = export_sb3_actor(model)
        det = evaluate_actor(actor, env_id, eval_episodes, seed=10_000 + step, deterministic=True)
        sto = evaluate_actor(actor, env_id, eval_episodes, seed=10_000 + step, deterministic=False)
        save_actor(actor, run_dir / f"actor_{step}.pt",
                   {"env_id": env_id, "sac_steps": step, "seed": seed, "hidden": list(hidden),
                    "critic_hidden": list(critic_hidden or hidden),
                    "learning_starts": learning_starts, "episodes": model._episode_num,
                    "versions": _versions(),
                    "return_deterministic": det[0], "return_stochastic": sto[0],
                    "std_stochastic": sto[1]})
        # Checkpoint before logging, so a killed run never logs a step it cannot resume from.
        model.save(run_dir / "sac.tmp.zip")
        model.save_replay_buffer(run_dir / "replay.tmp.pkl")
        (run_dir / "sac.tmp.zip").replace(model_path)
        (run_dir / "replay.tmp.pkl").replace(buffer_path)
        with curve.open("a") as f:
            # episodes: SAC's training episodes so far, i.e. each snapshot's share of the buffer
            f.write(json.dumps({"step": step, "episodes": model._episode_num,
                                "return_det": det[0], "std_det": det[1],
                                "return_sto": sto[0], "std_sto": sto[1],
                                "seconds": time.time() - start}) + "\n")
        print(f"step {step}: det {det[0]:.1f} sto {sto[0]:.1f} ({time.time() - start:.0f}s)",
              flush=True)
    return run_dir
