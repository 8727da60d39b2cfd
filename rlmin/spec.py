"""What a dataset tells the rest of rlmin, built once when it loads and saved once.

* ``DataSpec``: what an agent needs to be built for the data (shapes, normalisation, lengths).
* ``EvalSpec``: what the evaluator needs to score an agent on the data's task (env id, time
  limit, target returns, reference scores and where they come from).

Both are saved in checkpoints and exported policies as plain dicts (``to_dict``/``from_dict``);
``DataSpec.to_dict`` leaves out ``obs_mean``/``obs_std``, which an agent keeps as buffers in its
state dict, so they are stored once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rlmin.checks import positive_int

SAMPLING_MODES = ("segment", "episode")  # K-step segments (DT's) or whole episodes from their start
DEFAULT_SEQ_LEN = {"segment": 20, "episode": 1000}  # DT's K; D4RL's episode cap (their one home)


@dataclass(frozen=True)
class DataSpec:
    obs_dim: int
    act_dim: int
    obs_mean: Any = None  # [obs_dim] array; None = zeros (no normalisation)
    obs_std: Any = None   # [obs_dim] array; None = ones
    seq_len: int = DEFAULT_SEQ_LEN["segment"]  # steps of a training segment (the sampler's K, or the episode cap)
    max_episode_steps: int = 1000  # the longest episode an agent must act through

    def __post_init__(self):
        for name in ("obs_dim", "act_dim", "seq_len", "max_episode_steps"):
            positive_int(f"DataSpec.{name}", getattr(self, name))

    def to_dict(self) -> dict:
        return {"obs_dim": int(self.obs_dim), "act_dim": int(self.act_dim),
                "seq_len": int(self.seq_len), "max_episode_steps": int(self.max_episode_steps)}

    @classmethod
    def from_dict(cls, values: dict, obs_mean=None, obs_std=None) -> "DataSpec":
        return cls(obs_mean=obs_mean, obs_std=obs_std, **values)


@dataclass(frozen=True)
class EvalSpec:
    env_id: str
    max_episode_steps: int | None
    target_returns: tuple[float, ...]
    ref_min: float | None
    ref_max: float | None
    ref_source: str
    obs_dim: int
    act_dim: int
    dataset_id: str
    task: str | None = None
    level: str | None = None

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["target_returns"] = [float(t) for t in self.target_returns]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "EvalSpec":
        values = dict(values)
        values["target_returns"] = tuple(float(t) for t in values["target_returns"])
        return cls(**values)

    def replace(self, **changes) -> "EvalSpec":
        return dataclasses.replace(self, **changes)

    def describe_refs(self) -> str:
        """One line saying which references normalise a score, e.g. for training printouts."""
        if self.ref_min is None:
            return f"{self.dataset_id}: no reference scores (raw returns only)"
        return (f"{self.dataset_id}: normalised with ref_min {self.ref_min:g}, ref_max "
                f"{self.ref_max:g} ({self.ref_source})")
