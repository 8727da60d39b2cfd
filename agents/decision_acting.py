"""How a DecisionAgent acts: one environment step at a time, for ``n_envs`` envs at once.

``DecisionActing`` is the acting half of ``agents.decision.DecisionAgent`` (a mixin: it uses the
agent's backbone, embeddings and head). A step follows ``rlmin.step_protocol`` (R_t, a_{t-1},
the state update), which the ONNX policy follows too; then either

* ``carry`` mode: the step's tokens go through the backbone from the carried backbone state
  (four implementations, ``carry_impl``), or
* ``window`` mode: the last K steps are kept and re-run every step.

``CarryStep`` is the carry step as a module of tensors only: what ``rlmin export`` traces into
the ONNX graph. The modes and their numbers: docs/ACTING.md.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from rlmin.agent import State
from rlmin.checks import positive_int
from rlmin.nn import reference_scans, reset_rows
from rlmin.step_protocol import FIXED_STATE, UPDATED_STATE, begin_step, check_reward, end_step, restart

_BACKBONE_KEY = "backbone."  # state keys of the carried backbone state: "backbone.0", "backbone.1", ...


class DecisionActing:
    """``reset``/``act`` of the decision agent, in carry or window mode."""

    #: How carry mode runs the backbone on a step's new tokens (docs/ACTING.md has the numbers).
    #: "chunk" (default): one ``backbone.forward`` of the step's tokens with the carried state (a
    #: chunked forward equals stepping: the same result to float round-off, a third of the calls);
    #: "step": one ``backbone.step`` per token, the plain reference;
    #: "compiled": the "step" code through ``torch.compile`` (see ``compile_acting``);
    #: "traced": "chunk", with a step in which no row starts (the tokens and the backbone) run as
    #: a TorchScript trace of plain ops (one per n_envs; weights read live): ~1.5x "chunk" on a
    #: CPU, where a step is small ops' dispatch. What ``Policy.load`` acts with.
    #: The ONNX graph holds ``carry_forward`` whatever this says.
    carry_impl: str = "chunk"
    CARRY_IMPLS = ("chunk", "step", "compiled", "traced")

    def __init__(self, spec, options=None):
        super().__init__(spec, options)
        # Caches of acting, plain attributes (not submodules, not in the state dict):
        self._backbone_keys: tuple[str, ...] | None = None  # counted on first use (after the backbone exists)
        self._compiled_steps = None  # compile_acting's function
        self._traced_steps: dict = {}  # (n_envs, dtype, device) -> the traced no-start step

    def reset(self, n_envs: int, target_return=None) -> State:
        """State for ``n_envs`` new episodes, each asking for ``target_return`` (float or [n_envs]).

        Keys: ``target`` [n] (kept for ``done`` resets), ``rtg`` [n] (the R_t used at the last
        step), ``t`` [n] int64 (steps taken; 0 = the next ``act`` is the episode's first),
        ``prev_action`` [n, act_dim] (the last action returned). carry mode adds the backbone
        state as ``backbone.0``, ``backbone.1``, ...; window mode adds the window
        ``win_obs`` [n, K, obs_dim] (normalised), ``win_act`` [n, K, act_dim], ``win_rtg`` [n, K],
        ``win_t`` [n, K] (its fill count is min(t, K)).
        """
        positive_int("n_envs", n_envs)
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
        if self._backbone_keys is None:  # counted once: act reads them every step
            n = len(self.backbone.initial_state(1))
            self._backbone_keys = tuple(f"{_BACKBONE_KEY}{i}" for i in range(n))
        return self._backbone_keys

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
            check_reward(reward, first)
            if reward is None:  # every row is on its first step, where the reward is not used
                reward = torch.zeros(n, dtype=self.dtype, device=self.device)
            reward = self.env_rows(reward, n, "reward")
            prev = state["prev_action"]
            if prev_action is not None:
                prev = self.tensor(prev_action).reshape(n, self.act_dim)
            rtg, prev = begin_step(torch.where, first, state["target"], state["rtg"], reward, prev)
            if self.act_mode == "carry":
                action, new_state = self._act_carry(obs, rtg, prev, t, first, state)
            else:
                action, new_state = self._act_window(obs, rtg, prev, t, first, state)
            new_state.update(end_step(rtg, t, action))
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
            return self._compiled_steps or self.compile_acting()
        if self.carry_impl == "step":
            return self.carry_steps
        return self._carry_chunk

    def for_deployment(self):
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
        self._compiled_steps = torch.compile(self.carry_steps, dynamic=False, **compile_options)
        self.carry_impl = "compiled"
        return self._compiled_steps

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
        if key not in self._traced_steps:  # the first act with this many envs (and dtype): trace it (~0.1 s)
            self._traced_steps[key] = _trace(self._no_start_ops, self.backbone, (obs, rtg, prev, t, *bstate))
        y, bstate = self._traced_steps[key](obs, rtg, prev, t, *bstate)
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

    # ----------------------------------------------------------------- export
    def carry_step_module(self) -> nn.Module:
        """The carry step as a module of tensors only (``CarryStep``), for the ONNX export. An agent
        in window mode has no carried state: refused, with the base class's message."""
        if self.act_mode != "carry":
            return super().carry_step_module()  # raises
        return CarryStep(self)


class CarryStep(nn.Module):
    """One carry step of a DecisionAgent as a function of tensors only: what the ONNX graph holds.

    ``forward(obs, reward, done, target, rtg, t, prev_action, *backbone_state)`` ->
    ``(action, rtg, t, *backbone_state)``, the same step as ``agent.act`` on the same state, with
    ``done`` rows reset inside. Their names: ``state_keys`` (the state inputs) and
    ``updated_keys`` (the outputs after the action). The step's three tokens go through one
    backbone forward (``carry_forward``, the branch-free form of the "chunk" carry): a third of
    the Gemm nodes of three ``step`` calls (each on three times the rows), and the last block
    computes only the row it returns.
    """

    def __init__(self, agent: DecisionActing):
        super().__init__()
        self.agent = agent
        self.state_keys = (*FIXED_STATE, *agent.backbone_state_keys)
        self.updated_keys = (*UPDATED_STATE, *agent.backbone_state_keys)
        # The backbone's initial state for one row (zeros, or a learned h0): done rows take it.
        self.n_fresh = len(agent.backbone_state_keys)
        for i, s in enumerate(agent._initial_backbone_state(1)):
            self.register_buffer(f"fresh_{i}", s.detach().clone())

    def forward(self, obs, reward, done, target, rtg, t, prev_action, *bstate):
        agent = self.agent
        t = restart(torch.where, t, done)
        first = t == 0
        rtg, prev = begin_step(torch.where, first, target, rtg, reward, prev_action)
        bstate = reset_rows(bstate, done, tuple(getattr(self, f"fresh_{i}") for i in range(self.n_fresh)))
        y, bstate = agent.carry_forward(agent.normalize(obs), rtg, prev, t, first, bstate)
        action = agent.head(y)
        updated = end_step(rtg, t, action)
        return (action, *(updated[k] for k in UPDATED_STATE), *bstate)


# --------------------------------------------------------------------- helpers
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
