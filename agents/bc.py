"""Behaviour cloning: an MLP from the normalised state to the action, the baseline every table needs.

It trains on the same batches as the decision agent (every real step of every segment is one
sample; returns, rewards and timesteps are ignored) and acts through the same interface, so the
trainer and the evaluator treat both alike. It has no memory: the state only counts steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np
import torch
from torch import nn

from rlmin.agent import Agent, Batch, State
from rlmin.spec import DataSpec


class BCAgent(Agent):
    """MLP (ReLU, dropout) on the normalised state, tanh head, masked MSE to the dataset actions."""

    @dataclass
    class Options:
        hidden: List[int] = field(default_factory=lambda: [256, 256])  # widths of the MLP's layers
        dropout: float = 0.1  # after every hidden layer

        def __post_init__(self):
            if isinstance(self.hidden, (int, np.integer, str)) or not all(
                    isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h > 0
                    for h in self.hidden):
                raise ValueError(f"hidden must be a list of positive ints, got {self.hidden!r}")
            self.hidden = [int(h) for h in self.hidden]
            if isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
                raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")

    def __init__(self, spec: DataSpec, options: "BCAgent.Options | None" = None):
        super().__init__(spec, options)
        layers, last = [], spec.obs_dim
        for width in self.options.hidden:
            layers += [nn.Linear(last, width), nn.ReLU(), nn.Dropout(self.options.dropout)]
            last = width
        layers += [nn.Linear(last, spec.act_dim), nn.Tanh()]
        self.mlp = nn.Sequential(*layers)

    def label(self) -> str:
        return "bc"

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions for normalised observations [..., obs_dim]."""
        return self.mlp(obs)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = self.tensor(batch["mask"], torch.bool)
        obs = torch.where(mask.unsqueeze(-1), self.tensor(batch["observations"]), 0.0)  # padding: zeros
        mse = self.masked_mse(self(obs), self.tensor(batch["actions"]), mask)
        value = float(mse.detach())
        return mse, {"loss": value, "action_mse": value}

    def reset(self, n_envs: int, target_return=None) -> State:
        """``target_return`` is accepted and ignored. The state counts steps per env (``t``)."""
        return {"t": torch.zeros(int(n_envs), dtype=torch.long, device=self.device)}

    def act(self, obs, reward, state: State, done=None) -> tuple[np.ndarray, State]:
        with self.inference():
            obs = self.normalize(obs)
            t = state["t"]
            if done is not None:
                t = torch.where(self.env_rows(done, t.shape[0], "done", torch.bool), 0, t)
            action = self(obs)
        return action.cpu().numpy(), {"t": t + 1}
