"""Trained agents outside training: rebuild them, export a self-contained policy, load it.

An exported policy is one file: the agent (registered name, options, data spec, state dict with
the normalisation) and the evaluation spec (env id, targets, reference scores). It loads with
``weights_only=True`` and needs no dataset::

    import gymnasium as gym
    from rlmin.policy import Policy
    policy = Policy.load("hopper_policy.pt")
    env = gym.make(policy.eval_spec.env_id)     # the env the policy was trained for
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

from rlmin.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint, load_latest
from rlmin.registry import load_agent_class
from rlmin.rundir import check_output
from rlmin.spec import DataSpec, EvalSpec

FORMAT = "rlmin-policy-v2"


def agent_payload(name: str, agent) -> dict:
    """How a checkpoint or an export records an agent: its registered name, options, data spec."""
    return {"name": name, "options": agent.options_dict(), "spec": agent.spec.to_dict()}


def agent_from_payload(payload: dict, cls=None):
    """Rebuild the agent saved in a training checkpoint or an exported policy (eval mode).
    ``cls``: the agent class (default: the one registered under the record's name)."""
    record, state = payload["agent"], payload["model"]
    cls = load_agent_class(record["name"]) if cls is None else cls
    spec = DataSpec.from_dict(record["spec"], obs_mean=state["obs_mean"], obs_std=state["obs_std"])
    agent = cls(spec, cls.options_from_dict(record["options"]))
    agent.load_state_dict(state)
    return agent.eval()


def load_payload(path: str | Path) -> tuple[dict, Path]:
    """A checkpoint, an exported policy, or a run dir (its latest loadable checkpoint)."""
    path = Path(path)
    if path.is_dir():
        return load_latest(path)
    if path.suffix in (".yaml", ".yml", ".json"):
        raise CheckpointError(f"{path} is not a checkpoint: pass a run dir, a "
                              f"checkpoints/step_*.pt file or an exported policy")
    payload = load_checkpoint(path)
    if "agent" not in payload or "eval_spec" not in payload:
        raise CheckpointError(f"{path} is not an rlmin checkpoint or policy of this version "
                              f"(format {payload.get('format', 'unknown')}): re-export it from "
                              f"its training checkpoint")
    return payload, path


def export_policy(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write a self-contained policy file from a training checkpoint or run dir (atomically).
    ``out`` is checked first (``rlmin.rundir.check_output``): never a run's own files, and an
    existing file only with ``overwrite``."""
    out = Path(out)
    check_output(out, overwrite=overwrite, flag="output", source=Path(checkpoint))
    payload, source = load_payload(checkpoint)
    policy = {"format": FORMAT, "agent": payload["agent"], "model": payload["model"],
              "eval_spec": payload["eval_spec"], "dataset": payload.get("dataset"),
              "step": payload.get("step"), "source": str(source)}
    atomic_torch_save(policy, out)
    return out


class Policy:
    """A trained agent with its acting state kept inside: ``reset`` once, then ``act`` per step."""

    def __init__(self, agent, eval_spec: EvalSpec):
        self.agent, self.eval_spec = agent, eval_spec
        self.state = None

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Policy":
        """A ``.pt`` policy (torch, on ``device``), or a ``.onnx`` one: an
        ``rlmin.onnx_policy.OnnxPolicy`` with the same reset/act, run by ONNX Runtime on the CPU."""
        if Path(path).suffix == ".onnx":
            from rlmin.onnx_policy import OnnxPolicy
            return OnnxPolicy.load(path)
        payload = load_checkpoint(path)
        if payload.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not an exported rlmin policy ({FORMAT}); make one "
                                  "with `rlmin export CHECKPOINT OUT`")
        agent = agent_from_payload(payload).to(device).for_deployment()
        return cls(agent, EvalSpec.from_dict(payload["eval_spec"]))

    def reset(self, n_envs: int = 1, target_return: float | None = None) -> None:
        target = self.eval_spec.target_returns[0] if target_return is None else target_return
        self.state = self.agent.reset(n_envs, target)

    def act(self, obs, reward=None, done=None) -> np.ndarray:
        """Actions for raw ``obs`` [n_envs, obs_dim]; ``reward`` of the previous step; ``done``
        marks rows whose ``obs`` starts a new episode (their state is reset)."""
        if self.state is None:
            raise RuntimeError("call policy.reset(n_envs, target_return) before act()")
        action, self.state = self.agent.act(obs, reward, self.state, done)
        return action
