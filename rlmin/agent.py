"""The interface every agent implements: train on batches, act one environment step at a time.

An agent is an ``nn.Module`` built as ``cls(spec, options)``: ``spec`` (``rlmin.spec.DataSpec``)
says what the data gives it, ``options`` is its own dataclass ``cls.Options``, validated once in
``Options.__post_init__`` (the nanoGPT ``GPTConfig`` pattern). It has three jobs:

* ``loss(batch) -> (loss, metrics)`` on a sampler batch (dict of arrays or tensors):
  ``observations`` [B, L, obs_dim] (already normalised with the dataset's mean/std),
  ``actions`` [B, L, act_dim] in [-1, 1], ``rewards`` [B, L], ``returns_to_go`` [B, L] (raw),
  ``timesteps`` [B, L] int64 and ``mask`` [B, L] bool (True = real step; padding on the right).
* ``reset(n_envs, target_return) -> state`` starts ``n_envs`` episodes.
* ``act(obs, reward, state, done=None) -> (action, state)`` takes one step for every env.

The state is a dict of tensors with ``n_envs`` as dim 0, so an evaluator keeps it without
looking inside; ``act`` returns a new dict. ``obs_mean``/``obs_std`` are buffers: a saved
``state_dict`` holds the normalisation and ``act`` takes raw observations. An agent that acts by
a carried state may offer ``carry_step_module()``, its step as a module of tensors: the ONNX export.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from rlmin.spec import DataSpec

Batch = dict[str, Any]
State = dict[str, torch.Tensor]


class Agent(nn.Module, abc.ABC):
    """Base class: normalisation buffers, typed options, acting modes, the abstract interface."""

    @dataclasses.dataclass
    class Options:
        """An agent's own options; subclasses declare theirs (typed fields, ``__post_init__``)."""

    #: Acting modes an agent offers (e.g. carried state vs window re-run); the first is the default.
    act_modes: tuple[str, ...] = ()

    def __new__(cls, spec: DataSpec | None = None, options: "Agent.Options | None" = None, *args, **kwargs):
        agent = super().__new__(cls)  # object's: nn.Module defines no __new__
        if options is not None:  # what the agent is built with, whatever its __init__ passes on
            object.__setattr__(agent, "_built_with", options)
        return agent

    def __init__(self, spec: DataSpec, options: "Agent.Options | None" = None):
        # The options given to the constructor (see __new__): a subclass that forgets to pass them on
        # to super().__init__ still records them, and one that passes others is refused.
        built_with = self.__dict__.pop("_built_with", None)
        super().__init__()
        if not isinstance(built_with, self.Options):  # a subclass's own signature: no Options there
            built_with = None
        if options is None:
            options = self.Options() if built_with is None else built_with
        elif built_with is not None and options != built_with:
            raise TypeError(f"{type(self).__name__} was built with options {built_with} but passed "
                            f"{options} to Agent.__init__, which records the options a checkpoint "
                            f"rebuilds it with: pass `options` on to super().__init__(spec, options)")
        if not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} takes a {type(self).__name__}.Options, got "
                            f"{type(options).__name__}")
        self.spec, self.options = spec, options
        self.obs_dim, self.act_dim = spec.obs_dim, spec.act_dim
        mean = torch.zeros(spec.obs_dim) if spec.obs_mean is None else _vector(spec.obs_mean)
        std = torch.ones(spec.obs_dim) if spec.obs_std is None else _vector(spec.obs_std)
        for name, value in (("obs_mean", mean), ("obs_std", std)):
            if tuple(value.shape) != (spec.obs_dim,):
                raise ValueError(f"{name} must have shape ({spec.obs_dim},), got {tuple(value.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("obs_std must be > 0 everywhere (pass the std the sampler divides by)")
        self.register_buffer("obs_mean", mean.clone())
        self.register_buffer("obs_std", std.clone())
        self.act_mode = self.act_modes[0] if self.act_modes else None

    # ----------------------------------------------------------------- construction
    @classmethod
    def options_from_dict(cls, values: dict) -> "Agent.Options":
        """``cls.Options(**values)``; an unknown key raises ValueError naming it."""
        known = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; known options: {known}")
        return cls.Options(**values)

    def options_dict(self) -> dict:
        """The options as plain values (for checkpoints and results.json)."""
        return dataclasses.asdict(self.options)

    def label(self) -> str:
        """A short name for tables (e.g. the backbone); subclasses say what sets them apart."""
        return type(self).__name__

    def describe(self) -> dict:
        """Plain values for results.json: the label and the acting mode in use."""
        return {"label": self.label(), "act_mode": self.act_mode}

    @contextlib.contextmanager
    def acting(self, mode: str | None) -> Iterator["Agent"]:
        """Act in ``mode`` for the duration (None: the agent's own); restored afterwards."""
        previous = self.act_mode
        if mode is not None:
            self.check_act_mode(self.options, mode)
            self.act_mode = mode
        try:
            yield self
        finally:
            self.act_mode = previous

    def for_deployment(self) -> "Agent":
        """Switch to the agent's fastest exact way of acting, for a policy that runs as it is
        (``Policy.load`` calls it); the default changes nothing. Returns the agent."""
        return self

    def max_target_return(self) -> float | None:
        """The largest |target return| ``reset`` accepts (an exported policy refuses beyond it
        too); None: no bound."""
        return None

    def carry_step_module(self) -> nn.Module:
        """One acting step by a carried state as a module of tensors only: what ``rlmin export``
        traces into an ONNX graph (rlmin/onnx_export.py).

        ``forward(obs, reward, done, *state) -> (action, *updated state)``: ``obs`` raw [n, obs_dim],
        ``reward`` [n] (of the previous action; ignored on a row's first step), ``done`` bool [n]
        (the row's ``obs`` starts a new episode: its state is reset inside), then the state
        tensors named by the module's ``state_keys``, in that order, as ``reset`` makes them; it
        returns the action [n, act_dim] and the new values of the keys in its ``updated_keys``
        (``prev_action``, when in the state, becomes the action: ``rlmin.step_protocol``). The
        same step as ``act``. An agent without one (the default) raises ValueError in one line.
        """
        raise ValueError(f"ONNX export needs a decision agent acting in carry mode; this one "
                         f"({self.label()}, act_mode {self.act_mode!r}) re-runs a K-step window "
                         f"every step: export it as a .pt policy instead")

    @classmethod
    def check_act_mode(cls, options: "Agent.Options", mode: str) -> None:
        """ValueError unless an agent with ``options`` can act in ``mode``."""
        if mode not in cls.act_modes:
            offered = ", ".join(cls.act_modes) or "one way only (leave the mode unset)"
            raise ValueError(f"{cls.__name__} cannot act in mode {mode!r}; its modes: {offered}")

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


def _vector(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32).reshape(-1)
