"""The decision agent: Decision-Transformer-style return-conditioned behaviour cloning on any backbone.

The sequence model is ``rlmin.nn.build_backbone(...)``: minGRU / minLSTM (the point of rlmin),
or the baselines (causal transformer = the Decision Transformer, GRU, LSTM). Each step t of an
episode carries a return-to-go R_t (raw, divided by ``return_scale`` when embedded), a
normalised state s_t, an action a_t and a timestep t. The agent predicts a_t.

Token layouts
-------------
* ``interleaved`` (DT's): tokens (R_1, s_1, a_1, R_2, s_2, a_2, ...); a_t is predicted from the
  output at the s_t token. Three tokens per step.
* ``stacked``: one token per step, the sum of the embeddings of R_t, s_t and a_{t-1}
  (a_{t-1} = zeros at the first step of a sequence); a_t is predicted from its output.
  Three times shorter.
Every token of step t gets the timestep embedding of t added (if ``timestep_embedding``), then
one LayerNorm and dropout. The head is a Linear (tanh by default). The loss is the MSE between
predicted and dataset actions over the real (mask=True) steps.

Acting (``act_mode``)
---------------------
* ``carry`` (default for recurrent backbones): the backbone state is carried from the first
  step of the episode; each ``act`` feeds only the new tokens through ``backbone.step``
  (interleaved: the previous action's token, then R_t, then s_t; stacked: one token), so the
  cost of a step does not grow with t. Not available for the transformer (ValueError).
* ``window`` (default for the transformer; available for every backbone): keep the last K
  steps of (R, s, a, t) per env and re-run ``backbone.forward`` on that window from a fresh
  state every step, as DT does. The window is left-aligned (step t of a short window sits at
  position t, the rest is ignored because the backbone is causal), exactly like a training
  segment with right padding.
In both, R_{t+1} = R_t - r_t (the reward of the previous action is subtracted) and t counts the
steps of each env's episode.

Which training matches which acting
-----------------------------------
* Segment training (K-step windows sampled anywhere in an episode) starts the recurrence from the
  initial state in the middle of episodes, and (stacked layout) sees a_{t-1} = zeros at the
  first step of every segment. ``window`` acting presents exactly such inputs: it matches
  segment training exactly. ``carry`` acting over a 1000-step episode feeds the recurrence
  states built from hundreds of steps, which segment training never produced: a distribution
  shift, small or large depending on how quickly the backbone forgets.
* Whole-episode training (L up to 1000, one episode per row from its first step) matches
  ``carry`` acting exactly: the same inputs, the same recurrence from the same initial state.
  The agent's code is the same for both; only the sampler's L differs.

Timesteps beyond the embedding
------------------------------
The timestep embedding has ``max_timestep`` rows (timesteps 0 .. max_timestep-1). Larger
timesteps are CLAMPED to max_timestep-1 (and negative ones, e.g. in padding, to 0) rather than
raising: an evaluation episode longer than the training data must not crash, and a row the
model never trained has no better meaning than the last trained one. Set ``max_timestep`` to
the longest episode of the dataset (1000 for the MuJoCo tasks).
"""
from __future__ import annotations


import numpy as np
import torch
from torch import nn

from rlmin.agent import Agent, Batch, State
from rlmin.nn import build_backbone

LAYOUTS = ("interleaved", "stacked")
ACT_MODES = ("carry", "window")
_BACKBONE_KEY = "backbone."  # state keys of the carried backbone state: "backbone.0", "backbone.1", ...


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [n] bool mask shaped to broadcast over ``like`` [n, ...]."""
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


class DecisionAgent(Agent):
    """Return-conditioned sequence model (DT-style) on a pluggable backbone. See the module docstring.

    Options (defaults are DT's for D4RL gym where they apply):
        backbone ("mingru"): mingru | minlstm | transformer | gru | lstm.
        d_model (128), n_layers (3): the backbone's width and depth (also the embedding width).
        backbone_options ({}): passed to ``build_backbone``. ``dropout`` defaults to this agent's
            ``dropout``; the transformer's ``context`` defaults to the tokens of K steps
            (3K interleaved, K stacked) and may not be smaller.
        token_layout ("interleaved"): or "stacked" (module docstring).
        context_steps (20): K, the steps of a training segment and of the acting window.
        timestep_embedding (True): add a learned embedding of the step index to every token.
        max_timestep (1000): rows of that embedding; larger timesteps are clamped (module docstring).
        return_scale (1000.0): returns-to-go are divided by it before their embedding.
        act_mode (None): "carry" | "window"; None = carry for recurrent backbones, window otherwise.
        dropout (0.1): after the embedding LayerNorm (and the backbone's default, above).
        action_tanh (True): tanh on the action head (dataset actions lie in [-1, 1]).
    Any unknown option or bad value raises ValueError naming it.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        obs_mean=None,
        obs_std=None,
        *,
        backbone: str = "mingru",
        d_model: int = 128,
        n_layers: int = 3,
        backbone_options: dict | None = None,
        token_layout: str = "interleaved",
        context_steps: int = 20,
        timestep_embedding: bool = True,
        max_timestep: int = 1000,
        return_scale: float = 1000.0,
        act_mode: str | None = None,
        dropout: float = 0.1,
        action_tanh: bool = True,
    ):
        super().__init__(obs_dim, act_dim, obs_mean, obs_std)
        # ---- validate (ValueError naming the option)
        if not isinstance(backbone, str):
            raise ValueError(f"backbone must be a backbone name (str), got {backbone!r}")
        for name, value in (("d_model", d_model), ("n_layers", n_layers),
                            ("context_steps", context_steps), ("max_timestep", max_timestep)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if backbone_options is None:
            backbone_options = {}
        if not isinstance(backbone_options, dict):
            raise ValueError(f"backbone_options must be a dict, got {type(backbone_options).__name__}")
        if token_layout not in LAYOUTS:
            raise ValueError(f"token_layout must be one of {LAYOUTS}, got {token_layout!r}")
        for name, value in (("timestep_embedding", timestep_embedding), ("action_tanh", action_tanh)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {value!r}")
        if isinstance(return_scale, bool) or not isinstance(return_scale, (int, float, np.floating, np.integer)) \
                or not return_scale > 0:
            raise ValueError(f"return_scale must be a positive number, got {return_scale!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if act_mode is not None and act_mode not in ACT_MODES:
            raise ValueError(f"act_mode must be one of {ACT_MODES} or None (auto), got {act_mode!r}")

        # ---- the backbone; the transformer's context is set from K unless given
        tokens_per_step = 3 if token_layout == "interleaved" else 1
        bopts = dict(backbone_options)
        bopts.setdefault("dropout", float(dropout))
        if backbone == "transformer":
            needed = tokens_per_step * int(context_steps)
            bopts.setdefault("context", needed)
            if not _is_int(bopts["context"]) or bopts["context"] < needed:
                raise ValueError(
                    f"backbone_options.context={bopts['context']!r} is shorter than the {needed} tokens of a "
                    f"{context_steps}-step window with token_layout={token_layout!r}; leave it unset or raise it")
        try:
            self.backbone = build_backbone(backbone, int(d_model), int(n_layers), **bopts)
        except (ValueError, KeyError) as err:
            raise ValueError(f"backbone={backbone!r}, backbone_options={bopts!r}: {err}") from err
        recurrent = bool(getattr(self.backbone, "recurrent", True))
        if act_mode is None:
            act_mode = "carry" if recurrent else "window"
        if act_mode == "carry" and not recurrent:
            raise ValueError(
                f"act_mode='carry' needs a recurrent backbone, and backbone={backbone!r} is not recurrent: "
                "use act_mode='window' (or leave act_mode unset)")

        self.token_layout, self.act_mode = token_layout, act_mode
        self.context_steps, self.max_timestep = int(context_steps), int(max_timestep)
        self.return_scale, self.d_model = float(return_scale), int(d_model)
        self.options = dict(
            backbone=backbone, d_model=int(d_model), n_layers=int(n_layers), backbone_options=bopts,
            token_layout=token_layout, context_steps=int(context_steps),
            timestep_embedding=timestep_embedding, max_timestep=int(max_timestep),
            return_scale=float(return_scale), act_mode=act_mode, dropout=float(dropout),
            action_tanh=action_tanh)

        # ---- embeddings and head
        self.embed_return = nn.Linear(1, d_model)
        self.embed_state = nn.Linear(obs_dim, d_model)
        self.embed_action = nn.Linear(act_dim, d_model)
        self.embed_timestep = nn.Embedding(max_timestep, d_model) if timestep_embedding else None
        self.embed_ln = nn.LayerNorm(d_model)
        self.embed_drop = nn.Dropout(dropout)
        self.head = nn.Sequential(nn.Linear(d_model, act_dim), *([nn.Tanh()] if action_tanh else []))

    # ================================================================= embeddings
    def _time(self, timesteps: torch.Tensor) -> torch.Tensor | float:
        if self.embed_timestep is None:
            return 0.0
        return self.embed_timestep(timesteps.long().clamp(0, self.max_timestep - 1))

    def _emb_return(self, rtg: torch.Tensor) -> torch.Tensor:
        return self.embed_return((rtg / self.return_scale).unsqueeze(-1))

    def _finish(self, tokens: torch.Tensor) -> torch.Tensor:
        """LayerNorm + dropout, applied to every token alike (so a token is the same step-wise or in parallel)."""
        return self.embed_drop(self.embed_ln(tokens))

    def _tokens(self, obs: torch.Tensor, actions: torch.Tensor, rtg: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        """Backbone input [B, L*tokens_per_step, d] for normalised obs [B,L,obs], actions, raw rtg, timesteps."""
        time = self._time(timesteps)
        if self.token_layout == "interleaved":
            r = self._emb_return(rtg) + time
            s = self.embed_state(obs) + time
            a = self.embed_action(actions) + time
            b, length = obs.shape[:2]
            x = torch.stack([r, s, a], dim=2).reshape(b, 3 * length, -1)
        else:
            prev = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], dim=1)
            x = self._emb_return(rtg) + self.embed_state(obs) + self.embed_action(prev) + time
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
        y, _ = self.backbone(self._tokens(obs, actions, rtg, timesteps))
        return self.head(self._outputs(y))

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked MSE between predicted and dataset actions over the real steps."""
        pred = self.predict(batch)
        mse = self.masked_mse(pred, self.tensor(batch["actions"]), self.tensor(batch["mask"], torch.bool))
        value = float(mse.detach())
        return mse, {"loss": value, "action_mse": value}

    # ================================================================= acting
    def reset(self, n_envs: int, target_return=None) -> State:
        """State for ``n_envs`` new episodes, each asking for ``target_return`` (float or [n_envs]).

        Keys: ``target`` [n] (kept for ``done`` resets), ``rtg`` [n] (the R_t used at the last
        step), ``t`` [n] int64 (steps taken; 0 = the next ``act`` is the episode's first),
        ``prev_action`` [n, act_dim] (the last action returned). carry mode adds the backbone
        state as ``backbone.0``, ``backbone.1``, ...; window mode adds the window
        ``win_obs`` [n, K, obs_dim] (normalised), ``win_act`` [n, K, act_dim], ``win_rtg`` [n, K],
        ``win_t`` [n, K] (its fill count is min(t, K)).
        """
        if not _is_int(n_envs) or n_envs < 1:
            raise ValueError(f"n_envs must be a positive int, got {n_envs!r}")
        if target_return is None:
            raise ValueError("a DecisionAgent needs a target_return (the return it is asked to achieve)")
        target = self.env_rows(target_return, n_envs, "target_return")
        return self._fresh_state(target)

    def _fresh_state(self, target: torch.Tensor) -> State:
        n, dev, dt = target.shape[0], self.device, self.dtype
        state: State = {
            "target": target.clone(),
            "rtg": target.clone(),
            "t": torch.zeros(n, dtype=torch.long, device=dev),
            "prev_action": torch.zeros(n, self.act_dim, dtype=dt, device=dev),
        }
        if self.act_mode == "carry":
            init = self.backbone.initial_state(n, device=dev)
            for i, s in enumerate(init):
                state[f"{_BACKBONE_KEY}{i}"] = s.to(dt) if s.is_floating_point() else s
        else:
            k = self.context_steps
            state.update(
                win_obs=torch.zeros(n, k, self.obs_dim, dtype=dt, device=dev),
                win_act=torch.zeros(n, k, self.act_dim, dtype=dt, device=dev),
                win_rtg=torch.zeros(n, k, dtype=dt, device=dev),
                win_t=torch.zeros(n, k, dtype=torch.long, device=dev))
        return state

    def act(self, obs, reward, state: State, done=None, prev_action=None) -> tuple[np.ndarray, State]:
        """One step for every env (see ``Agent.act``), in this agent's ``act_mode``.

        ``prev_action`` (optional, [n_envs, act_dim]): the action the env actually executed at the
        previous step, when it differs from the one this agent returned (exploration noise,
        clipping, or replaying a recorded trajectory). Ignored for rows on their first step.
        """
        with self.inference():
            obs = self.normalize(obs)
            if obs.dim() != 2:
                raise ValueError(f"obs must be [n_envs, {self.obs_dim}], got {tuple(obs.shape)}")
            n = obs.shape[0]
            if state["t"].shape[0] != n:
                raise ValueError(f"state is for {state['t'].shape[0]} envs, obs has {n} rows")
            state = dict(state)
            if done is not None:
                done = self.env_rows(done, n, "done", torch.bool)
                fresh = self._fresh_state(state["target"])
                state = {k: torch.where(_rows(done, v), fresh[k], v) for k, v in state.items()}
            first = state["t"] == 0
            if reward is None:
                if not bool(first.all()):
                    raise ValueError("reward is required for rows past their first step "
                                     "(the reward of the previous action)")
                reward = torch.zeros(n, dtype=self.dtype, device=self.device)
            reward = self.env_rows(reward, n, "reward")
            rtg = torch.where(first, state["rtg"], state["rtg"] - reward)
            prev = state["prev_action"]
            if prev_action is not None:
                forced = self.tensor(prev_action).reshape(n, self.act_dim)
                prev = torch.where(first[:, None], prev, forced)
            prev = torch.where(first[:, None], torch.zeros_like(prev), prev)
            t = state["t"]
            if self.act_mode == "carry":
                action, state = self._act_carry(obs, rtg, prev, t, first, state)
            else:
                action, state = self._act_window(obs, rtg, prev, t, first, state)
            state.update(rtg=rtg, t=t + 1, prev_action=action)
        return action.cpu().numpy(), state

    def _act_carry(self, obs, rtg, prev, t, first, state: State):
        keys = sorted((k for k in state if k.startswith(_BACKBONE_KEY)), key=lambda k: int(k[len(_BACKBONE_KEY):]))
        bstate = tuple(state[k] for k in keys)
        time = self._time(t)
        step = self.backbone.step
        if self.token_layout == "interleaved":
            # a_{t-1}'s token (timestep t-1), skipped for rows on their first step
            _, after_a = step(self._finish(self.embed_action(prev) + self._time(t - 1)), bstate)
            bstate = tuple(torch.where(_rows(first, old), old, new) for old, new in zip(bstate, after_a))
            _, bstate = step(self._finish(self._emb_return(rtg) + time), bstate)
            y, bstate = step(self._finish(self.embed_state(obs) + time), bstate)
        else:
            x = self._emb_return(rtg) + self.embed_state(obs) + self.embed_action(prev) + time
            y, bstate = step(self._finish(x), bstate)
        state = dict(state)
        for k, s in zip(keys, bstate):
            state[k] = s
        return self.head(y), state

    def _act_window(self, obs, rtg, prev, t, first, state: State):
        k = self.context_steps
        rows = torch.arange(obs.shape[0], device=obs.device)
        fill = t.clamp(max=k)  # real steps in the window before this one
        win_obs, win_act = state["win_obs"].clone(), state["win_act"].clone()
        win_rtg, win_t = state["win_rtg"].clone(), state["win_t"].clone()
        # the previous step's action (the one executed) into its slot
        last = (fill - 1).clamp(min=0)
        win_act[rows, last] = torch.where(first[:, None], win_act[rows, last], prev)
        # full windows slide left by one; then this step goes into slot min(fill, K-1)
        full = fill == k
        win_obs, win_act, win_rtg, win_t = (
            torch.where(_rows(full, w), w.roll(-1, dims=1), w) for w in (win_obs, win_act, win_rtg, win_t))
        slot = fill.clamp(max=k - 1)
        win_obs[rows, slot] = obs
        win_act[rows, slot] = 0.0  # a_t is unknown (and unseen by a_t's prediction: causal)
        win_rtg[rows, slot] = rtg
        win_t[rows, slot] = t
        pred = self.predict({"observations": win_obs, "actions": win_act,
                             "returns_to_go": win_rtg, "timesteps": win_t})
        state = dict(state)
        state.update(win_obs=win_obs, win_act=win_act, win_rtg=win_rtg, win_t=win_t)
        return pred[rows, slot], state

    def extra_repr(self) -> str:
        o = self.options
        return (f"backbone={o['backbone']}, layout={o['token_layout']}, act_mode={o['act_mode']}, "
                f"K={o['context_steps']}")
