"""The interface every agent implements: train on batches, act one environment step at a time.

An agent is an ``nn.Module`` with three jobs:

* ``loss(batch) -> (loss, metrics)`` on a sampler batch (dict of arrays or tensors):
  ``observations`` [B, L, obs_dim] (already normalised with the dataset's mean/std),
  ``actions`` [B, L, act_dim] in [-1, 1], ``rewards`` [B, L], ``returns_to_go`` [B, L] (raw),
  ``timesteps`` [B, L] int64 and ``mask`` [B, L] bool (True = real step; padding on the right).
* ``reset(n_envs, target_return) -> state`` starts ``n_envs`` episodes.
* ``act(obs, reward, state, done=None) -> (action, state)`` takes one step for every env.

The state is a dict of tensors, each with ``n_envs`` as dim 0, so an evaluator can keep it
as it is and never needs to look inside. ``act`` is a pure function of its inputs: it
returns a new dict and does not change the one passed in.

``obs_mean``/``obs_std`` are buffers, so a saved ``state_dict`` holds the normalisation and
``act`` can take raw observations. ``options`` holds the resolved constructor options as plain
values: ``type(agent).build(obs_dim, act_dim, **agent.options)`` followed by
``load_state_dict`` rebuilds a saved agent.
"""
from __future__ import annotations

import abc
import contextlib
import inspect
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

Batch = dict[str, Any]
State = dict[str, torch.Tensor]


class Agent(nn.Module, abc.ABC):
    """Base class: normalisation buffers, option handling, and the abstract interface."""

    options: dict[str, Any]

    def __init__(self, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None):
        super().__init__()
        for name, value in (("obs_dim", obs_dim), ("act_dim", act_dim)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        mean = torch.zeros(obs_dim) if obs_mean is None else torch.as_tensor(np.asarray(obs_mean), dtype=torch.float32)
        std = torch.ones(obs_dim) if obs_std is None else torch.as_tensor(np.asarray(obs_std), dtype=torch.float32)
        for name, value in (("obs_mean", mean), ("obs_std", std)):
            if tuple(value.shape) != (obs_dim,):
                raise ValueError(f"{name} must have shape ({obs_dim},), got {tuple(value.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("obs_std must be > 0 everywhere (pass the std the sampler divides by)")
        self.register_buffer("obs_mean", mean.reshape(obs_dim).clone())
        self.register_buffer("obs_std", std.reshape(obs_dim).clone())
        self.options = {}

    # ----------------------------------------------------------------- construction
    @classmethod
    def option_names(cls) -> list[str]:
        """The keyword-only options of the constructor (what ``build`` accepts besides the data)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]

    @classmethod
    def build(cls, obs_dim: int, act_dim: int, obs_mean=None, obs_std=None, **options) -> "Agent":
        """Construct from data shapes, normalisation and options; unknown options raise ValueError."""
        known = cls.option_names()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; known options: {known}")
        return cls(obs_dim, act_dim, obs_mean, obs_std, **options)

    # ----------------------------------------------------------------- the interface
    @abc.abstractmethod
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar training loss on a sampler batch, and float metrics for logging."""

    @abc.abstractmethod
    def reset(self, n_envs: int, target_return=None) -> State:
        """A fresh state for ``n_envs`` episodes; ``target_return`` is a float or one per env."""

    @abc.abstractmethod
    def act(self, obs, reward, state: State, done=None) -> tuple[np.ndarray, State]:
        """One step for every env; returns actions (numpy [n_envs, act_dim], in [-1, 1]) and the new state.

        ``obs``: RAW observations [n_envs, obs_dim] (numpy or tensor); the agent normalises them.
        ``reward``: [n_envs], the reward received for the previous action. Ignored (may be
        None) for rows on the first step of an episode (just after ``reset``, or ``done``).
        ``done``: optional bool [n_envs] marking rows whose ``obs`` is the first observation of
        a new episode: their state is reset (to the target return given to ``reset``) before
        acting, and their ``reward`` is ignored.
        Acting is always deterministic: dropout is off during ``act`` whatever the module mode.
        """

    # ----------------------------------------------------------------- helpers for subclasses
    @property
    def device(self) -> torch.device:
        return self.obs_mean.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the parameters (float32 unless the agent was cast)."""
        for p in self.parameters():
            return p.dtype
        return self.obs_mean.dtype

    def tensor(self, x, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``x`` (numpy, tensor, number) as a tensor on the agent's device, in ``dtype`` (default: the agent's)."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        return x.to(device=self.device, dtype=self.dtype if dtype is None else dtype)

    def normalize(self, obs) -> torch.Tensor:
        """Raw observations -> normalised tensor, as the sampler normalises the dataset."""
        obs = self.tensor(obs)
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"observations have last dim {obs.shape[-1]}, expected obs_dim={self.obs_dim}")
        return (obs - self.obs_mean.to(obs.dtype)) / self.obs_std.to(obs.dtype)

    def env_rows(self, x, n_envs: int, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A per-env vector (scalar broadcast) as a tensor [n_envs]."""
        t = self.tensor(x, dtype)
        if t.dim() == 0:
            t = t.expand(n_envs)
        t = t.reshape(-1)
        if t.shape[0] != n_envs:
            raise ValueError(f"{name} has {t.shape[0]} entries, expected one per env ({n_envs})")
        return t

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """Eval mode and no grad for the duration; the previous train/eval mode is restored."""
        was_training = self.training
        self.train(False)
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    @staticmethod
    def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the real steps (mask [B, L] True) and the action dims.

        Padded entries are replaced by 0 before squaring (torch.where, not a multiply by 0), so
        NaN/inf in padding reach neither the loss nor the gradients; no data-dependent shapes, so
        it compiles into one graph.
        """
        mask = mask.bool()
        diff = torch.where(mask.unsqueeze(-1), pred - target, 0.0)
        count = mask.sum().clamp_min(1) * pred.shape[-1]
        return diff.pow(2).sum() / count
