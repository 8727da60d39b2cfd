"""The decision agent: Decision-Transformer-style return-conditioned behaviour cloning on any backbone.

The sequence model is ``rlmin.nn.build_backbone(...)``: minGRU / minLSTM (the point of rlmin), or
the baselines (causal transformer = the Decision Transformer, GRU, LSTM). Step t of an episode
carries a return-to-go R_t (raw, divided by ``return_scale`` when embedded), a normalised state
s_t, an action a_t and a timestep t; the agent predicts a_t. Token layouts, acting modes and
which training matches which acting: docs/AGENTS.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from rlmin.agent import Agent, Batch, State
from rlmin.nn import BACKBONES, backbone_options, build_backbone, is_recurrent, reference_scans, reset_rows
from rlmin.spec import DataSpec

LAYOUTS = ("interleaved", "stacked")
_BACKBONE_KEY = "backbone."  # state keys of the carried backbone state: "backbone.0", "backbone.1", ...


class _Call(nn.Module):
    """A bound method of a module as a module's forward: what torch.jit.trace accepts."""

    def __init__(self, owner: nn.Module, method: str):
        super().__init__()
        self.owner, self.method = owner, method

    def forward(self, *args):
        return getattr(self.owner, self.method)(*args)


def _trace(fn, backbone: nn.Module, example: tuple):
    """The bound method ``fn`` (tensors in, a tuple out) as a TorchScript trace of plain ops: one C++
    call instead of ~150 Python-dispatched ones. The parameters stay the module's own (live). A
    backbone that cannot be traced acts eagerly, with one warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's deprecation and constant-shape notes
        try:
            with reference_scans(backbone):  # the fused CPU scans are opaque Functions
                traced = torch.jit.trace(_Call(fn.__self__, fn.__name__), example, check_trace=False)
        except Exception as e:  # noqa: BLE001 (any failure: act eagerly instead)
            traced = None
            reason = " ".join(str(e).split())[:200]
    if traced is None:
        warnings.warn(f"carry_impl='traced': tracing failed ({reason}); acting eagerly", stacklevel=3)
        return fn
    return traced


def _positive_int(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class DecisionAgent(Agent):
    """Return-conditioned sequence model (DT-style) on a pluggable backbone."""

    @dataclass
    class Options:
        backbone: str = "mingru"  # mingru | minlstm | transformer | gru | lstm
        d_model: int = 128  # the backbone's width, also the embedding width (DT: 128)
        n_layers: int = 3  # DT: 3
        # Passed to rlmin.nn.build_backbone (expansion, conv_kernel, scan_impl, n_heads, ...).
        backbone_options: Dict[str, Any] = field(default_factory=dict)
        token_layout: str = "interleaved"  # (R, s, a) tokens as DT, or "stacked": one token per step
        timestep_embedding: bool = True  # a learned embedding of t added to every token (DT's)
        return_scale: float = 1000.0  # returns-to-go are divided by it before their embedding
        act_mode: Optional[str] = None  # carry | window; None: carry if the backbone is recurrent
        dropout: float = 0.1  # on the embedded tokens (GPT-2's `drop`) and the backbone's default
        action_tanh: bool = True  # dataset actions lie in [-1, 1]

        def __post_init__(self):
            if self.backbone not in BACKBONES:
                raise ValueError(f"backbone is {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
            _positive_int("d_model", self.d_model)
            _positive_int("n_layers", self.n_layers)
            if not isinstance(self.backbone_options, dict):
                raise ValueError(f"backbone_options must be a mapping, got {self.backbone_options!r}")
            self.backbone_options = dict(self.backbone_options)
            known = backbone_options(self.backbone)
            unknown = sorted(set(self.backbone_options) - set(known))
            if unknown:
                raise ValueError(f"backbone_options {unknown} are not options of backbone "
                                 f"{self.backbone!r}; its options: {', '.join(known)}")
            for name in ("timestep_embedding", "action_tanh"):
                if not isinstance(getattr(self, name), bool):
                    raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
            try:  # the backbone checks its own option values; a tiny one is built to ask it
                build_backbone(self.backbone, 4, 1, **self.backbone_options)
            except ValueError as err:
                raise ValueError(f"backbone_options for {self.backbone!r}: {err}") from None
            if self.token_layout not in LAYOUTS:
                raise ValueError(f"token_layout must be one of {LAYOUTS}, got {self.token_layout!r}")
            if isinstance(self.return_scale, bool) or not self.return_scale > 0:
                raise ValueError(f"return_scale must be a positive number, got {self.return_scale!r}")
            if isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
                raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
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
        bopts = {"dropout": float(o.dropout), **o.backbone_options}
        if o.backbone == "transformer":  # its cache must hold a whole K-step window of tokens
            bopts.setdefault("context", self.tokens_per_step * self.context_steps)
            if bopts["context"] < self.tokens_per_step * self.context_steps:
                raise ValueError(f"backbone_options.context={bopts['context']} is shorter than the "
                                 f"{self.tokens_per_step * self.context_steps} tokens of a "
                                 f"{self.context_steps}-step window; leave it unset or raise it")
        self.backbone = build_backbone(o.backbone, o.d_model, o.n_layers, **bopts)

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

    # ================================================================= acting
    #: How carry mode runs the backbone on a step's new tokens (docs/ACTING.md has the numbers).
    #: "chunk" (default): one ``backbone.forward`` of the step's tokens with the carried state (a
    #: chunked forward equals stepping: the same result to float round-off, a third of the calls);
    #: "step": one ``backbone.step`` per token, the plain reference (and what the ONNX graph holds);
    #: "compiled": the "step" code through ``torch.compile`` (see ``compile_acting``);
    #: "traced": "chunk", with a step in which no row starts (the tokens and the backbone) run as
    #: a TorchScript trace of plain ops (one per n_envs; weights read live): ~1.5x "chunk" on a
    #: CPU, where a step is small ops' dispatch. What ``Policy.load`` acts with.
    carry_impl: str = "chunk"
    CARRY_IMPLS = ("chunk", "step", "compiled", "traced")

    def reset(self, n_envs: int, target_return=None) -> State:
        """State for ``n_envs`` new episodes, each asking for ``target_return`` (float or [n_envs]).

        Keys: ``target`` [n] (kept for ``done`` resets), ``rtg`` [n] (the R_t used at the last
        step), ``t`` [n] int64 (steps taken; 0 = the next ``act`` is the episode's first),
        ``prev_action`` [n, act_dim] (the last action returned). carry mode adds the backbone
        state as ``backbone.0``, ``backbone.1``, ...; window mode adds the window
        ``win_obs`` [n, K, obs_dim] (normalised), ``win_act`` [n, K, act_dim], ``win_rtg`` [n, K],
        ``win_t`` [n, K] (its fill count is min(t, K)).
        """
        _positive_int("n_envs", n_envs)
        if target_return is None:
            raise ValueError("a DecisionAgent needs a target_return (the return it is asked to achieve)")
        target = self.env_rows(target_return, n_envs, "target_return")
        limit = self.max_target_return()
        if not bool((target.abs() <= limit).all()):  # NaN and inf fail too
            worst = float(target[~(target.abs() <= limit)][0])
            raise ValueError(f"target return {worst:g} overflows this agent's float32 maths (it "
                             f"embeds target / return_scale {self.return_scale:g}): give a target "
                             f"of at most {limit:.3g} in absolute value")
        return self._fresh_state(target)

    def max_target_return(self) -> float:
        """The largest |target return| the agent embeds without float32 overflow. Its return
        token is ``w * R / return_scale + b`` (one weight per feature); the LayerNorm after it
        squares the token's features (less their mean: up to twice as large) and sums d_model of
        them, so each must stay below sqrt(float32 max / d_model) / 2; a margin of 2 more."""
        w = float(self.embed_return.weight.detach().abs().max())
        b = float(self.embed_return.bias.detach().abs().max())
        token = (torch.finfo(torch.float32).max / self.d_model) ** 0.5 / 4
        return self.return_scale * max(0.0, token - b) / max(w, 1e-30)

    def _fresh_state(self, target: torch.Tensor) -> State:
        n, dev, dt = target.shape[0], self.device, self.dtype
        state: State = {
            "target": target.clone(),
            "rtg": target.clone(),
            "t": torch.zeros(n, dtype=torch.long, device=dev),
            "prev_action": torch.zeros(n, self.act_dim, dtype=dt, device=dev),
        }
        if self.act_mode == "carry":
            state.update(zip(self.backbone_state_keys, self._initial_backbone_state(n)))
        else:
            k = self.context_steps
            state.update(
                win_obs=torch.zeros(n, k, self.obs_dim, dtype=dt, device=dev),
                win_act=torch.zeros(n, k, self.act_dim, dtype=dt, device=dev),
                win_rtg=torch.zeros(n, k, dtype=dt, device=dev),
                win_t=torch.zeros(n, k, dtype=torch.long, device=dev))
        return state

    def _initial_backbone_state(self, n: int) -> tuple[torch.Tensor, ...]:
        """The backbone's initial state for ``n`` rows, floating tensors in the agent's dtype."""
        init = self.backbone.initial_state(n, device=self.device)
        return tuple(s.to(self.dtype) if s.is_floating_point() else s for s in init)

    @property
    def backbone_state_keys(self) -> tuple[str, ...]:
        """The state keys of the carried backbone state, in the backbone's order: backbone.0, ..."""
        keys = self.__dict__.get("_backbone_keys")
        if keys is None:  # counted once: act reads them every step
            keys = tuple(f"{_BACKBONE_KEY}{i}" for i in range(len(self.backbone.initial_state(1))))
            self.__dict__["_backbone_keys"] = keys
        return keys

    def act(self, obs, reward, state: State, done=None, prev_action=None) -> tuple[np.ndarray, State]:
        """One step for every env (see ``Agent.act``), in this agent's ``act_mode``.

        ``prev_action`` (optional, [n_envs, act_dim]): the action the env actually executed at the
        previous step, when it differs from the one this agent returned (exploration noise,
        clipping, or replaying a recorded trajectory). Ignored for rows on their first step.
        """
        # In eval mode already (as the evaluator and Policy run it), no_grad is all that is needed:
        # inference() would walk every submodule twice per step to set and restore the mode.
        with (self.inference() if self.training else torch.no_grad()):
            obs = self.normalize(obs)
            if obs.dim() != 2:
                raise ValueError(f"obs must be [n_envs, {self.obs_dim}], got {tuple(obs.shape)}")
            n = obs.shape[0]
            if state["t"].shape[0] != n:
                raise ValueError(f"state is for {state['t'].shape[0]} envs, obs has {n} rows")
            if done is not None:
                done = self.env_rows(done, n, "done", torch.bool)
                if bool(done.any()):  # only then build a fresh state to take those rows from
                    fresh = self._fresh_state(state["target"])
                    state = dict(zip(state, reset_rows(tuple(state.values()), done,
                                                       tuple(fresh[k] for k in state))))
            t = state["t"]
            first = t == 0
            if reward is None:
                if not bool(first.all()):
                    raise ValueError("reward is required for rows past their first step "
                                     "(the reward of the previous action)")
                reward = torch.zeros(n, dtype=self.dtype, device=self.device)
            reward = self.env_rows(reward, n, "reward")
            rtg = torch.where(first, state["rtg"], state["rtg"] - reward)
            prev = state["prev_action"]
            if prev_action is not None:
                prev = self.tensor(prev_action).reshape(n, self.act_dim)
            prev = torch.where(first[:, None], 0.0, prev)  # no a_{t-1} at an episode's first step
            if self.act_mode == "carry":
                action, new_state = self._act_carry(obs, rtg, prev, t, first, state)
            else:
                action, new_state = self._act_window(obs, rtg, prev, t, first, state)
            new_state.update(rtg=rtg, t=t + 1, prev_action=action)
        return action.cpu().numpy(), new_state

    # ----------------------------------------------------------------- carry
    def _act_carry(self, obs, rtg, prev, t, first, state: State):
        keys = self.backbone_state_keys
        bstate = tuple(state[k] for k in keys)
        y, bstate = self._carry_function()(obs, rtg, prev, t, first, bstate)
        new_state = {k: v for k, v in state.items() if k not in keys}
        new_state.update(zip(keys, bstate))
        return self.head(y), new_state

    def _carry_function(self):
        if self.carry_impl not in self.CARRY_IMPLS:
            raise ValueError(f"carry_impl must be one of {self.CARRY_IMPLS}, got {self.carry_impl!r}")
        if self.carry_impl == "compiled":
            return self.__dict__.get("_compiled_steps") or self.compile_acting()
        if self.carry_impl == "step":
            return self.carry_steps
        return self._carry_chunk

    def for_deployment(self) -> "DecisionAgent":
        """carry mode acts through the traced step (exact: tests/test_acting.py)."""
        if self.act_mode == "carry" and self.carry_impl == "chunk":
            self.carry_impl = "traced"
        return self

    def compile_acting(self, **compile_options):
        """From now on, run carry acting through ``torch.compile`` of ``carry_steps`` (opt-in).

        Inductor fuses a step's small elementwise ops into C++ loops and drops the work whose results
        a step never reads (the last block's outputs at the a_{t-1} and R_t tokens). The first act
        for each n_envs compiles (tens of seconds on a CPU): worth it for long rollouts with a fixed
        number of envs. Weights are read live, so the compiled step follows further training.
        Returns the compiled function (``compile_options`` go to ``torch.compile``).
        """
        fn = torch.compile(self.carry_steps, dynamic=False, **compile_options)
        self.__dict__["_compiled_steps"] = fn  # a plain attribute: not a submodule, not in the state dict
        self.carry_impl = "compiled"
        return fn

    def step_tokens(self, obs, rtg, prev, t) -> torch.Tensor:
        """The interleaved tokens one step adds, [n, 3, d]: a_{t-1} (timestep t-1), R_t, s_t (timestep
        t), each exactly as ``_tokens`` makes it for training. obs normalised, rtg raw."""
        x = torch.stack([self.embed_action(prev), self._emb_return(rtg), self.embed_state(obs)], dim=1)
        if self.embed_timestep is not None:
            x = x + self._time(torch.stack([t - 1, t, t], dim=1))
        return self._finish(x)

    def carry_steps(self, obs, rtg, prev, t, first, bstate):
        """Carry, one ``backbone.step`` per token: the reference, free of data-dependent branches.
        obs normalised, prev zero on first rows; returns (the output that predicts a_t [n, d], the
        new backbone state)."""
        if self.token_layout == "stacked":
            x = self._emb_return(rtg) + self.embed_state(obs) + self.embed_action(prev) + self._time(t)
            return self.backbone.step(self._finish(x), bstate)
        x = self.step_tokens(obs, rtg, prev, t)
        _, after_a = self.backbone.step(x[:, 0], bstate)
        bstate = reset_rows(after_a, first, bstate)  # rows on their first step had no a_{t-1}
        _, bstate = self.backbone.step(x[:, 1], bstate)
        return self.backbone.step(x[:, 2], bstate)

    def _carry_chunk(self, obs, rtg, prev, t, first, bstate):
        """Carry with one ``backbone.forward`` of the step's tokens and the carried state.

        Rows on their first step have no a_{t-1}: their tokens are (R_t, s_t) from their fresh
        state. When every row starts (a reset) that is the forward of the last two tokens; when
        only some do (a ``done``), those rows' tokens shift left to (R_t, s_t, -) with length 2.
        """
        if not bool(first.any()):  # every step but an episode's first
            return self._no_start(obs, rtg, prev, t, bstate)
        if self.token_layout == "stacked":
            return self.carry_steps(obs, rtg, prev, t, first, bstate)
        if bool(first.all()):
            return self.backbone(self.step_tokens(obs, rtg, prev, t)[:, 1:], bstate, last=True)
        return self.carry_forward(obs, rtg, prev, t, first, bstate)

    def carry_forward(self, obs, rtg, prev, t, first, bstate):
        """Carry with one ``backbone.forward`` of the step's tokens for any mix of rows, free of
        data-dependent branches (the ONNX graph): rows on their first step shift to (R_t, s_t, -)
        with length 2. The same inputs and outputs as ``carry_steps``."""
        if self.token_layout == "stacked":  # one token a step: nothing to shift
            return self.carry_steps(obs, rtg, prev, t, first, bstate)
        x = self.step_tokens(obs, rtg, prev, t)
        x = torch.where(first[:, None, None], x.roll(-1, dims=1), x)
        return self.backbone(x, bstate, lengths=3 - first.long(), last=True)

    def _no_start(self, obs, rtg, prev, t, bstate):
        """A step in which no row starts an episode: eager, or its trace for ``carry_impl="traced"``."""
        if self.carry_impl != "traced":
            return self._no_start_ops(obs, rtg, prev, t, *bstate)
        key = (obs.shape[0], obs.dtype, str(obs.device))
        traced = self.__dict__.setdefault("_traced_steps", {})  # not a submodule: no state-dict entry
        if key not in traced:  # the first act with this many envs (and dtype): trace it (~0.1 s)
            traced[key] = _trace(self._no_start_ops, self.backbone, (obs, rtg, prev, t, *bstate))
        y, bstate = traced[key](obs, rtg, prev, t, *bstate)
        return y, tuple(bstate)

    def _no_start_ops(self, obs, rtg, prev, t, *bstate):
        if self.token_layout == "stacked":
            return self.carry_steps(obs, rtg, prev, t, None, bstate)
        return self.backbone(self.step_tokens(obs, rtg, prev, t), bstate, last=True)

    # ----------------------------------------------------------------- window
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
        win_obs, win_act, win_rtg, win_t = reset_rows(
            (win_obs, win_act, win_rtg, win_t), full,
            tuple(w.roll(-1, dims=1) for w in (win_obs, win_act, win_rtg, win_t)))
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
        return f"backbone={o.backbone}, layout={o.token_layout}, act_mode={self.act_mode}, K={self.context_steps}"
