"""``check_agent(cls)``: the contract every registered agent must keep (as Gymnasium's ``check_env``).

Run it on your own agent class before registering it::

    from rlmin.testing import check_agent
    check_agent(MyAgent)               # raises AssertionError saying which rule broke

It builds the agent on a small random data spec and checks: typed options (an unknown option is
refused naming it), a finite scalar loss whose gradient reaches the parameters and ignores
padding, pure ``act`` (the state passed in is not changed), actions of the right shape in
[-1, 1], ``done`` resetting exactly its rows, every acting mode, a rebuild from the saved
options and state dict that acts identically, and the options it was built with coming back
from a training checkpoint and an exported .pt policy (written and read by rlmin's own code).
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from rlmin.checkpoint import save_checkpoint
from rlmin.policy import agent_from_payload, agent_payload, export_policy, load_payload
from rlmin.spec import DataSpec, EvalSpec

OBS, ACT, SEQ, ENVS = 5, 2, 4, 3


def _batch(gen: torch.Generator, batch: int = 4) -> dict:
    mask = torch.ones(batch, SEQ, dtype=torch.bool)
    mask[0, SEQ // 2:] = False  # a short segment, padded on the right
    batch_ = {
        "observations": torch.randn(batch, SEQ, OBS, generator=gen),
        "actions": torch.rand(batch, SEQ, ACT, generator=gen) * 2 - 1,
        "rewards": torch.randn(batch, SEQ, generator=gen),
        "returns_to_go": torch.rand(batch, SEQ, generator=gen) * 100,
        "timesteps": torch.arange(SEQ).expand(batch, SEQ).clone(),
        "mask": mask,
    }
    for key in ("observations", "actions", "returns_to_go"):  # garbage where nothing is real
        batch_[key][~mask] = float("nan")
    return batch_


def _act_episode(agent, steps: int = 6, seed: int = 0, done_at: int | None = None,
                 restart_only: bool = False):
    """Actions [steps, ENVS, ACT] of one seeded observation/reward stream. ``restart_only``:
    instead, one env that starts fresh at ``done_at`` fed row 0's stream from there on."""
    gen = np.random.default_rng(seed)
    if restart_only:
        stream = [(gen.normal(size=(ENVS, OBS)), gen.normal(size=ENVS)) for _ in range(steps)]
        fresh, reward, actions = _FreshRow(agent), None, []
        for obs, next_reward in stream[done_at:]:
            actions.append(fresh.act(obs[:1], reward))
            reward = next_reward[:1]
        return np.stack(actions)[:, 0]
    state, reward, actions = agent.reset(ENVS, 100.0), None, []
    for t in range(steps):
        obs = gen.normal(size=(ENVS, OBS))
        done = None
        if done_at is not None and t == done_at:
            done = np.array([True] + [False] * (ENVS - 1))
        before = {k: v.clone() for k, v in state.items()}
        action, new_state = agent.act(obs, reward, state, done)
        assert all(torch.equal(before[k], state[k]) for k in state), \
            "act changed the state passed in: it must return a new dict"
        action = np.asarray(action)
        assert action.shape == (ENVS, ACT), f"act returned shape {action.shape}, want {(ENVS, ACT)}"
        assert np.all(np.isfinite(action)) and np.all(np.abs(action) <= 1 + 1e-6), \
            "actions must be finite and in [-1, 1]"
        assert all(v.shape[0] == ENVS for v in new_state.values()), "state tensors: n_envs first"
        state, reward = new_state, gen.normal(size=ENVS)
        actions.append(action)
    return np.stack(actions)


def _saved_and_reloaded(cls, agent) -> list[tuple[str, object]]:
    """(what, the agent rebuilt from it) for a training checkpoint of ``agent`` and a .pt policy
    exported from that checkpoint."""
    eval_spec = EvalSpec("check-agent-v0", 16, (100.0,), None, None, "none", OBS, ACT, "check/random-v0")
    payload = {"agent": agent_payload(cls.__name__, agent), "model": agent.state_dict(),
               "eval_spec": eval_spec.to_dict(), "step": 0}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(Path(tmp) / "run", 0, payload)
        policy = export_policy(checkpoint, Path(tmp) / "policy.pt")
        return [(what, agent_from_payload(load_payload(path)[0], cls))
                for what, path in (("a training checkpoint", checkpoint), ("an exported .pt policy", policy))]


class _FreshRow:
    def __init__(self, agent):
        self.agent, self.state = agent, agent.reset(1, 100.0)

    def act(self, obs, reward):
        action, self.state = self.agent.act(obs, reward, self.state)
        return np.asarray(action)


def check_agent(cls, options=None) -> None:
    """Raise AssertionError unless ``cls`` (with ``options``, default ``cls.Options()``) keeps
    rlmin's agent contract."""
    assert dataclasses.is_dataclass(cls.Options), f"{cls.__name__}.Options must be a dataclass"
    options = cls.Options() if options is None else options
    try:
        cls.options_from_dict({"surely_not_an_option": 1})
    except ValueError as e:
        assert "surely_not_an_option" in str(e), f"the unknown-option error must name the key: {e}"
    else:
        raise AssertionError(f"{cls.__name__} accepted an unknown option")
    json.dumps(dataclasses.asdict(options))  # options must be plain values (checkpoints, JSON)

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    spec = DataSpec(OBS, ACT, np.zeros(OBS), np.full(OBS, 2.0), seq_len=SEQ, max_episode_steps=16)
    agent = cls(spec, options).double()
    loss, metrics = agent.loss({k: v.double() if v.is_floating_point() else v
                                for k, v in _batch(gen).items()})
    assert loss.dim() == 0 and torch.isfinite(loss), f"loss must be a finite scalar, got {loss}"
    assert all(isinstance(v, float) for v in metrics.values()), "metrics must be python floats"
    loss.backward()
    grads = [p.grad for p in agent.parameters() if p.grad is not None]
    assert grads, "the loss reaches no parameter"
    assert all(torch.isfinite(g).all() for g in grads), "NaN in padding reached the gradients"

    agent.eval()
    first = _act_episode(agent)
    assert np.array_equal(first, _act_episode(agent)), "acting is not deterministic"
    reset = _act_episode(agent, done_at=3)
    fresh = _act_episode(agent, seed=0, steps=3)
    assert np.allclose(reset[:3], fresh), "a done on one row changed the steps before it"
    assert np.allclose(reset[3:, 1:], first[3:, 1:]), "done on row 0 changed other rows"
    restarted = _act_episode(agent, seed=0, steps=6, done_at=3, restart_only=True)
    assert np.allclose(reset[3:, 0], restarted), \
        "after done, row 0 did not act as a fresh episode fed the same observations"

    for mode in cls.act_modes:
        try:
            cls.check_act_mode(options, mode)
        except ValueError:
            continue  # a mode these options cannot use (e.g. carry for a transformer)
        before = agent.act_mode
        with agent.acting(mode):
            assert agent.act_mode == mode
            _act_episode(agent)
        assert agent.act_mode == before, "acting(mode) did not restore the agent's mode"

    clone = cls(DataSpec.from_dict(spec.to_dict()), cls.options_from_dict(
        json.loads(json.dumps(agent.options_dict())))).double()
    clone.load_state_dict(agent.state_dict())
    assert np.allclose(_act_episode(clone.eval()), first), \
        "an agent rebuilt from its options and state dict acts differently"
    deployed = clone.for_deployment()
    assert deployed is clone, "for_deployment must return the agent itself"
    assert np.allclose(_act_episode(deployed), first) and \
        np.allclose(_act_episode(deployed, done_at=3), reset), "for_deployment changed how the agent acts"

    # What a run records must rebuild the agent it trained: an option that acting does not show
    # (dropout) is caught here, not by the actions above.
    for what, reloaded in _saved_and_reloaded(cls, agent):
        assert reloaded.options == options, (
            f"{cls.__name__} was built with {options}, but {what} rebuilds it with "
            f"{reloaded.options}: the agent must record the options it runs with (pass them on "
            f"to super().__init__(spec, options); options_dict() saves self.options)")
