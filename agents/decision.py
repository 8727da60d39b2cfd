"""The decision agent: Decision-Transformer-style return-conditioned behaviour cloning on any backbone.

The sequence model is ``rlmin.nn.build_backbone(...)``: minGRU / minLSTM (the point of rlmin), or
the baselines (causal transformer = the Decision Transformer, GRU, LSTM). Step t of an episode
carries a return-to-go R_t (raw, divided by ``return_scale`` when embedded), a normalised state
s_t, an action a_t and a timestep t; the agent predicts a_t. Token layouts, acting modes and
which training matches which acting: docs/AGENTS.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from agents.decision_acting import DecisionActing
from rlmin.agent import Agent, Batch
from rlmin.checks import flag, positive_int, positive_number, probability
from rlmin.errors import OptionError
from rlmin.nn import backbone_class, is_recurrent
from rlmin.options import typed
from rlmin.spec import DataSpec

LAYOUTS = ("interleaved", "stacked")


class DecisionAgent(DecisionActing, Agent):
    """Return-conditioned sequence model (DT-style) on a pluggable backbone; it acts as
    ``DecisionActing`` (agents/decision_acting.py) says."""

    @dataclass
    class Options:
        backbone: str = "mingru"  # mingru | minlstm | transformer | gru | lstm, or a registered one
        d_model: int = 128  # the backbone's width, also the embedding width (DT: 128)
        n_layers: int = 3  # DT: 3
        # The backbone's own Options (a mapping is typed into them): expansion, scan_impl, n_heads, ...
        backbone_options: Any = None
        token_layout: str = "interleaved"  # (R, s, a) tokens as DT, or "stacked": one token per step
        timestep_embedding: bool = True  # a learned embedding of t added to every token (DT's)
        return_scale: float = 1000.0  # returns-to-go are divided by it before their embedding
        act_mode: Optional[str] = None  # carry | window; None: carry if the backbone is recurrent
        dropout: float = 0.1  # on the embedded tokens (GPT-2's `drop`) and the backbone's default
        action_tanh: bool = True  # dataset actions lie in [-1, 1]

        def __post_init__(self):
            try:
                backbone = backbone_class(self.backbone)
            except ValueError as e:
                raise OptionError("backbone", str(e)) from None
            positive_int("d_model", self.d_model)
            positive_int("n_layers", self.n_layers)
            self.backbone_options = typed(backbone.Options, self.backbone_options,
                                          owner=f"backbone {self.backbone!r}", where="backbone_options")
            try:
                backbone.check_shape(self.d_model, self.n_layers, self.backbone_options)
            except ValueError as e:  # e.g. n_heads that do not divide d_model
                raise OptionError("backbone_options", f"backbone_options for {self.backbone!r}: {e}") from None
            flag("timestep_embedding", self.timestep_embedding)
            flag("action_tanh", self.action_tanh)
            if self.token_layout not in LAYOUTS:
                raise ValueError(f"token_layout must be one of {LAYOUTS}, got {self.token_layout!r}")
            positive_number("return_scale", self.return_scale)
            probability("dropout", self.dropout)
            if self.act_mode is None:
                self.act_mode = "carry" if is_recurrent(self.backbone) else "window"
            DecisionAgent.check_act_mode(self, self.act_mode)

    act_modes = ("carry", "window")

    @classmethod
    def check_act_mode(cls, options: "DecisionAgent.Options", mode: str) -> None:
        if mode not in cls.act_modes:
            raise ValueError(f"act_mode must be one of {cls.act_modes}, got {mode!r}")
        if mode == "carry" and not is_recurrent(options.backbone):
            raise ValueError(f"act_mode 'carry' needs a recurrent backbone; {options.backbone!r} "
                             "acts by re-running its window: use 'window' (or leave act_mode unset)")

    def __init__(self, spec: DataSpec, options: "DecisionAgent.Options | None" = None):
        super().__init__(spec, options)
        o = self.options
        self.act_mode = o.act_mode
        self.token_layout, self.return_scale, self.d_model = o.token_layout, float(o.return_scale), o.d_model
        self.context_steps = spec.seq_len  # K: the acting window is a training segment
        self.max_timestep = spec.max_episode_steps  # rows of the timestep embedding
        backbone = backbone_class(o.backbone)
        # What the options leave to the agent: its dropout, and a window of K steps' tokens.
        bopts = backbone.for_owner(o.backbone_options, o.dropout, self.tokens_per_step * self.context_steps)
        self.backbone = backbone(o.d_model, o.n_layers, bopts)

        d = o.d_model
        self.embed_return = nn.Linear(1, d)
        self.embed_state = nn.Linear(spec.obs_dim, d)
        self.embed_action = nn.Linear(spec.act_dim, d)
        self.embed_timestep = nn.Embedding(self.max_timestep, d) if o.timestep_embedding else None
        self.embed_ln = nn.LayerNorm(d)
        self.embed_drop = nn.Dropout(o.dropout)
        self.head = nn.Sequential(nn.Linear(d, spec.act_dim), *([nn.Tanh()] if o.action_tanh else []))

    @property
    def tokens_per_step(self) -> int:
        return 3 if self.token_layout == "interleaved" else 1

    def label(self) -> str:
        """``mingru``, ``mingru stacked``, ``mingru (window)``: what sets it apart from the defaults."""
        o = self.options
        label = o.backbone + (" stacked" if o.token_layout == "stacked" else "")
        default = "carry" if is_recurrent(o.backbone) else "window"
        return label + (f" ({self.act_mode})" if self.act_mode != default else "")

    # ================================================================= embeddings
    def _time(self, timesteps: torch.Tensor) -> torch.Tensor | float:
        if self.embed_timestep is None:
            return 0.0
        # An episode longer than the data's must not crash: past the last row, reuse the last row.
        return self.embed_timestep(timesteps.long().clamp(0, self.max_timestep - 1))

    def _emb_return(self, rtg: torch.Tensor) -> torch.Tensor:
        return self.embed_return((rtg / self.return_scale).unsqueeze(-1))

    def max_target_return(self) -> float:
        """The largest |target return| the agent embeds without float32 overflow. Its return
        token is ``w * R / return_scale + b`` (one weight per feature); the LayerNorm after it
        squares the token's features (less their mean: up to twice as large) and sums d_model of
        them, so each must stay below sqrt(float32 max / d_model) / 2; a margin of 2 more."""
        w = float(self.embed_return.weight.detach().abs().max())
        b = float(self.embed_return.bias.detach().abs().max())
        token = (torch.finfo(torch.float32).max / self.d_model) ** 0.5 / 4
        return self.return_scale * max(0.0, token - b) / max(w, 1e-30)

    def _finish(self, tokens: torch.Tensor) -> torch.Tensor:
        """LayerNorm + dropout, applied to every token alike (so a token is the same step-wise or in parallel)."""
        return self.embed_drop(self.embed_ln(tokens))

    def _tokens(self, obs: torch.Tensor, actions: torch.Tensor, rtg: torch.Tensor,
                timesteps: torch.Tensor, first_prev: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone input [B, L*tokens_per_step, d] for normalised obs [B,L,obs], actions, raw rtg,
        timesteps. ``first_prev``: the action before the first step (stacked layout; default 0)."""
        time = self._time(timesteps)
        if self.token_layout == "interleaved":
            r = self._emb_return(rtg) + time
            s = self.embed_state(obs) + time
            a = self.embed_action(actions) + time
            b, length = obs.shape[:2]
            x = torch.stack([r, s, a], dim=2).reshape(b, 3 * length, -1)
        else:
            before = torch.zeros_like(actions[:, :1]) if first_prev is None else first_prev[:, None]
            prev = torch.cat([before, actions[:, :-1]], dim=1)
            x = self._emb_return(rtg) + self.embed_state(obs) + self.embed_action(prev) + time
        return self._finish(x)

    def step_tokens(self, obs, rtg, prev, t) -> torch.Tensor:
        """The interleaved tokens one step adds, [n, 3, d]: a_{t-1} (timestep t-1), R_t, s_t (timestep
        t), each exactly as ``_tokens`` makes it for training. obs normalised, rtg raw."""
        x = torch.stack([self.embed_action(prev), self._emb_return(rtg), self.embed_state(obs)], dim=1)
        if self.embed_timestep is not None:
            x = x + self._time(torch.stack([t - 1, t, t], dim=1))
        return self._finish(x)

    def _outputs(self, y: torch.Tensor) -> torch.Tensor:
        """Backbone output -> the outputs that predict a_t, [B, L, d]."""
        if self.token_layout == "interleaved":
            return y.reshape(y.shape[0], -1, 3, y.shape[-1])[:, :, 1]
        return y

    # ================================================================= training
    def predict(self, batch: Batch) -> torch.Tensor:
        """Predicted a_t for every step of a batch, in parallel: [B, L, act_dim].

        Uses ``observations`` (normalised), ``actions``, ``returns_to_go`` (raw) and ``timesteps``;
        a_t's prediction sees R_1..R_t, s_1..s_t and a_1..a_{t-1} only. Padded steps (``mask``
        False, if given) are zeroed first, so garbage there cannot reach the gradients.
        """
        obs = self.tensor(batch["observations"])
        actions = self.tensor(batch["actions"])
        rtg = self.tensor(batch["returns_to_go"])
        timesteps = self.tensor(batch["timesteps"], torch.long)
        if obs.dim() != 3 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"observations must be [B, L, {self.obs_dim}], got {tuple(obs.shape)}")
        if actions.shape[:2] != obs.shape[:2] or actions.shape[-1] != self.act_dim:
            raise ValueError(f"actions must be [B, L, {self.act_dim}] matching observations, "
                             f"got {tuple(actions.shape)}")
        if "mask" in batch:
            mask = self.tensor(batch["mask"], torch.bool)
            obs = torch.where(mask[..., None], obs, 0.0)
            actions = torch.where(mask[..., None], actions, 0.0)
            rtg = torch.where(mask, rtg, 0.0)
            timesteps = torch.where(mask, timesteps, 0)
        state, first_prev = self._burn_in(batch)
        y, _ = self.backbone(self._tokens(obs, actions, rtg, timesteps, first_prev), state)
        return self.head(self._outputs(y))

    def _burn_in(self, batch: Batch) -> tuple[tuple | None, torch.Tensor | None]:
        """The backbone state after the steps before the segments (``prefix_*`` keys, sampled with
        ``data.burn_in``; right-padded, ``prefix_mask`` marks real steps), run without gradients:
        each segment starts from the state carry acting would have there. Also the action before
        each segment (0 where there is none). No prefix, or a backbone without state: (None, None)."""
        if "prefix_observations" not in batch or not self.backbone.recurrent:
            return None, None
        obs = self.tensor(batch["prefix_observations"])
        if obs.shape[1] == 0:  # every segment at its episode's first step
            return None, None
        actions = self.tensor(batch["prefix_actions"])
        steps = (self.tensor(batch["prefix_mask"], torch.bool).sum(1) if "prefix_mask" in batch
                 else torch.full(obs.shape[:1], obs.shape[1], device=obs.device))
        with torch.no_grad():
            tokens = self._tokens(obs, actions, self.tensor(batch["prefix_returns_to_go"]),
                                  self.tensor(batch["prefix_timesteps"], torch.long))
            _, state = self.backbone(tokens, lengths=steps * self.tokens_per_step)
        last = actions[torch.arange(len(steps), device=obs.device), (steps - 1).clamp(min=0)]
        return state, torch.where((steps > 0)[:, None], last, 0.0)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked MSE between predicted and dataset actions over the real steps."""
        pred = self.predict(batch)
        mse = self.masked_mse(pred, self.tensor(batch["actions"]), self.tensor(batch["mask"], torch.bool))
        value = float(mse.detach())
        return mse, {"loss": value, "action_mse": value}

    def extra_repr(self) -> str:
        o = self.options
        return f"backbone={o.backbone}, layout={o.token_layout}, act_mode={self.act_mode}, K={self.context_steps}"
