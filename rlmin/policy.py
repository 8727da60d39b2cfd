"""Trained agents outside training: evaluate a checkpoint, export and load a self-contained policy.

An exported policy is one file: the agent's state dict (normalisation stats included), its
registered name and options, the env id, target returns and reference scores. It loads with
``weights_only=True`` and needs no dataset::

    from rlmin.policy import Policy
    policy = Policy.load("hopper_policy.pt")
    policy.reset(n_envs=1)                      # target return: the policy's first default
    obs, _ = env.reset(seed=0); reward = None
    while True:
        action = policy.act(obs[None], reward)[0]   # carried state inside the Policy
        obs, reward, term, trunc, _ = env.step(action)
        if term or trunc: break
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rlmin.checkpoint import CheckpointError, load_checkpoint
from rlmin.registry import load_agent_class

FORMAT = "rlmin-policy-v1"


def agent_from_checkpoint(payload: dict):
    """Rebuild the agent saved in a training checkpoint or an exported policy."""
    cls = load_agent_class(payload["agent_name"])
    state = payload["model"]
    obs_dim, act_dim = state["obs_mean"].shape[0], _act_dim(payload)
    agent = cls.build(obs_dim, act_dim, **payload["agent_options"])
    agent.load_state_dict(state)
    return agent.eval()


def _act_dim(payload: dict) -> int:
    if "act_dim" in payload:
        return int(payload["act_dim"])
    return int(payload["dataset"]["act_dim"])


def export_policy(checkpoint: str | Path, out: str | Path) -> Path:
    """Write a self-contained policy file from a training checkpoint (atomically)."""
    payload = load_checkpoint(checkpoint)
    dataset = payload["dataset"]
    policy = {
        "format": FORMAT,
        "agent_name": payload["agent_name"],
        "agent_options": payload["agent_options"],
        "model": payload["model"],
        "act_dim": int(dataset["act_dim"]),
        "env_id": dataset["env_id"],
        "max_episode_steps": dataset.get("max_episode_steps"),
        "target_returns": list(dataset["target_returns"]),
        "ref_min": dataset["ref_min"], "ref_max": dataset["ref_max"],
        "step": payload["step"], "dataset_id": dataset["id"],
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(policy, tmp)
    tmp.replace(out)
    return out


class Policy:
    """A trained agent with its acting state kept inside: ``reset`` once, then ``act`` per step."""

    def __init__(self, agent, info: dict):
        self.agent, self.info = agent, info
        self.state = None

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Policy":
        payload = load_checkpoint(path)
        if payload.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not an exported rlmin policy; make one with "
                                  "`rlmin export CHECKPOINT OUT`")
        agent = agent_from_checkpoint(payload).to(device)
        info = {k: v for k, v in payload.items() if k not in ("model",)}
        return cls(agent, info)

    def reset(self, n_envs: int = 1, target_return: float | None = None) -> None:
        target = self.info["target_returns"][0] if target_return is None else target_return
        self.state = self.agent.reset(n_envs, target)

    def act(self, obs, reward=None, done=None) -> np.ndarray:
        if self.state is None:
            raise RuntimeError("call policy.reset(n_envs, target_return) before act()")
        action, self.state = self.agent.act(obs, reward, self.state, done)
        return action


def evaluate_checkpoint(path: str | Path, *, episodes: int = 10, mode: str | None = None,
                        target_returns=None, seed: int = 10_000, n_envs: int | None = None,
                        max_episode_steps: int | None = None) -> dict:
    """Evaluate a training checkpoint or an exported policy in its own environment.

    ``max_episode_steps``: the episodes' time limit; None takes the task's (saved with it).
    """
    from rlmin.evaluate import evaluate

    payload = load_checkpoint(path)
    if mode is not None:  # rebuilt with the option, so the agent validates it
        if "act_mode" not in payload["agent_options"]:
            raise ValueError(f"{payload['agent_name']} agents have no acting mode to choose")
        payload["agent_options"] = {**payload["agent_options"], "act_mode": mode}
    agent = agent_from_checkpoint(payload)
    info = payload if payload.get("format") == FORMAT else payload["dataset"]
    return evaluate(agent, info["env_id"], target_returns=list(target_returns or
                                                                info["target_returns"]),
                    episodes=episodes, n_envs=n_envs, seed=seed, ref_min=info["ref_min"],
                    ref_max=info["ref_max"],
                    max_episode_steps=max_episode_steps or info.get("max_episode_steps"))
