"""Behaviour cloning: an MLP from the normalised state (or the last K states) to the action, the
baseline every table needs.

It trains on the same batches as the decision agent (returns and rewards are ignored) and acts
through the same interface, so the trainer and the evaluator treat both alike.

* ``context=1`` (default): the MLP sees the current state only; every real step of every segment
  is one sample. The acting state only counts steps.
* ``context=K > 1``: the BC of the Decision Transformer paper (kzl/decision-transformer,
  ``MLPBCModel`` with ``max_length=K``): the MLP's input is the normalised states of the last K
  steps of the episode, concatenated oldest first, zeros for steps before the episode's start.
  A segment position trains only when its window is exact (see ``windows``); acting keeps each
  env's last K states.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np
import torch
from torch import nn

from rlmin.agent import Agent, Batch, State
from rlmin.checks import positive_int, probability
from rlmin.nn import reset_rows
from rlmin.spec import DataSpec


class BCAgent(Agent):
    """MLP (ReLU, dropout) on the last ``context`` normalised states, tanh head, masked MSE to the
    dataset actions."""

    @dataclass
    class Options:
        hidden: List[int] = field(default_factory=lambda: [256, 256])  # widths of the MLP's layers
        dropout: float = 0.1  # after every hidden layer
        context: int = 1  # K: states the MLP sees (the current one and the K-1 before it)

        def __post_init__(self):
            if isinstance(self.hidden, (int, np.integer, str)) or not all(
                    isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h > 0
                    for h in self.hidden):
                raise ValueError(f"hidden must be a list of positive ints, got {self.hidden!r}")
            self.hidden = [int(h) for h in self.hidden]
            probability("dropout", self.dropout)
            self.context = positive_int("context", self.context)

    def __init__(self, spec: DataSpec, options: "BCAgent.Options | None" = None):
        super().__init__(spec, options)
        self.context = k = self.options.context
        if spec.seq_len < k:
            raise ValueError(
                f"BC context={k} needs training segments of at least {k} steps, but data.seq_len="
                f"{spec.seq_len}: a mid-episode segment would never hold a whole {k}-step window "
                f"(raise data.seq_len to >= {k} or lower agent.context)")
        layers, last = [], k * spec.obs_dim  # context=1: exactly the state-only MLP
        for width in self.options.hidden:
            layers += [nn.Linear(last, width), nn.ReLU(), nn.Dropout(self.options.dropout)]
            last = width
        layers += [nn.Linear(last, spec.act_dim), nn.Tanh()]
        self.mlp = nn.Sequential(*layers)

    def label(self) -> str:
        return "bc" if self.context == 1 else f"bc K={self.context}"

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions for normalised inputs: [..., obs_dim] states (context 1), or windows
        [..., K, obs_dim] (oldest first) or [..., K * obs_dim] (already concatenated)."""
        if obs.shape[-1] == self.obs_dim and self.context > 1:
            if obs.dim() < 2 or obs.shape[-2] != self.context:
                raise ValueError(f"a context={self.context} BC takes windows [..., {self.context}, "
                                 f"{self.obs_dim}], got {tuple(obs.shape)}")
            obs = obs.flatten(-2)
        return self.mlp(obs)

    # ----------------------------------------------------------------- training
    def windows(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Each segment position's window and whether it trains: ([B, L, K, obs_dim], [B, L] bool).

        The window of position t holds the states of positions t-K+1..t (oldest first). Where it
        reaches before the episode's start (step index ``timesteps[t] - j < 0`` for lag j) it holds
        zeros, exactly what acting feeds there. Where it reaches before the *segment's* start but
        not the episode's (a segment drawn mid-episode, t < K-1), the true states are not in the
        batch: zeros there would be a window acting never shows (acting always has the episode's
        real previous states), so such positions are left out of the loss, as is padding.
        Training so sees exactly the inputs acting presents. Weighting, for segments of L =
        ``data.seq_len`` steps: a step at episode index i < K-1 trains only in the segment that
        starts at its episode's start; a later one in every segment that holds it at position
        K-1 or beyond (up to L-K+1 of them). With L == K (DT's K=20) each dataset step so trains
        in exactly one of the segments that hold it: every step weighs the same.
        """
        mask = self.tensor(batch["mask"], torch.bool)
        obs = torch.where(mask.unsqueeze(-1), self.tensor(batch["observations"]), 0.0)  # padding: zeros
        k = self.context
        if k == 1:
            return obs.unsqueeze(-2), mask
        steps = self.tensor(batch["timesteps"], torch.long)  # [B, L] index within the episode
        b, length, d = obs.shape
        padded = torch.cat([obs.new_zeros(b, k - 1, d), obs], dim=1)  # [B, K-1+L, D]
        win = padded.unfold(1, k, 1).transpose(-1, -2)  # [B, L, K, D]: positions t-K+1..t
        lag = torch.arange(k - 1, -1, -1, device=obs.device)  # window slot i holds lag K-1-i
        in_episode = steps.unsqueeze(-1) - lag >= 0  # [B, L, K]: False = before the episode start
        win = torch.where(in_episode.unsqueeze(-1), win, 0.0)
        pos = torch.arange(length, device=obs.device)
        # Lags j with t < j <= timesteps[t] are in the episode but not in the segment: inexact
        # (zeros there are not what acting sees), so masked out: training matches acting.
        exact = pos >= torch.clamp(steps, max=k - 1)
        return win, mask & exact

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        win, train = self.windows(batch)
        mse = self.masked_mse(self(win.flatten(-2)), self.tensor(batch["actions"]), train)
        value = float(mse.detach())
        return mse, {"loss": value, "action_mse": value}

    # ----------------------------------------------------------------- acting
    def reset(self, n_envs: int, target_return=None) -> State:
        """``target_return`` is accepted and ignored. The state counts steps per env (``t``);
        with ``context`` K > 1 it also holds ``window`` [n_envs, K, obs_dim], the normalised
        states of the last K steps (oldest first, zeros before the episode's start)."""
        state = {"t": torch.zeros(int(n_envs), dtype=torch.long, device=self.device)}
        if self.context > 1:
            state["window"] = torch.zeros(int(n_envs), self.context, self.obs_dim,
                                          dtype=self.dtype, device=self.device)
        return state

    def act(self, obs, reward, state: State, done=None) -> tuple[np.ndarray, State]:
        with self.inference():
            obs = self.normalize(obs)
            t = state["t"]
            if done is not None:
                done = self.env_rows(done, t.shape[0], "done", torch.bool)
                t = torch.where(done, 0, t)
            if self.context == 1:
                return self(obs).cpu().numpy(), {"t": t + 1}
            window = state["window"]
            if done is not None:
                window = reset_rows((window,), done, (torch.zeros_like(window),))[0]
            window = torch.cat([window[:, 1:], obs.to(window.dtype).unsqueeze(1)], dim=1)
            action = self(window)
        return action.cpu().numpy(), {"t": t + 1, "window": window}

    def extra_repr(self) -> str:
        return f"context={self.context}"
