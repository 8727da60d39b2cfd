"""The decision agent's model, pinned from its weights with plain numpy (not through the agent's
own helpers): the return scale, the token order, a_t read from the s_t output; and the evaluator
with the real agent against single-env rollouts."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from agents.decision import DecisionAgent
from rlmin.evaluate import episode_seed, evaluate
from rlmin.spec import DataSpec, EvalSpec

OBS, ACT, K, SCALE = 3, 2, 4, 250.0


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _layer_norm(x: np.ndarray, ln: nn.LayerNorm) -> np.ndarray:
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * _np(ln.weight) + _np(ln.bias)


def _batch(gen: torch.Generator) -> dict:
    return {"observations": torch.randn(2, K, OBS, generator=gen, dtype=torch.float64),
            "actions": torch.rand(2, K, ACT, generator=gen, dtype=torch.float64) * 2 - 1,
            "returns_to_go": torch.rand(2, K, generator=gen, dtype=torch.float64) * 1000,
            "timesteps": torch.tensor([[0, 1, 2, 3], [7, 8, 9, 10]])}


def _agent(layout: str, backbone: str = "mingru") -> DecisionAgent:
    torch.manual_seed(0)
    return DecisionAgent(DataSpec(OBS, ACT, seq_len=K, max_episode_steps=32),
                         DecisionAgent.Options(backbone=backbone, d_model=8, n_layers=1,
                                               token_layout=layout, return_scale=SCALE,
                                               dropout=0.0)).double().eval()


def _captured_tokens(agent: DecisionAgent, batch: dict) -> np.ndarray:
    seen = []
    handle = agent.backbone.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        agent.predict(batch)
    handle.remove()
    return _np(seen[0])


def test_interleaved_tokens_are_r_s_a_per_step_with_the_return_scaled():
    agent, batch = _agent("interleaved"), _batch(torch.Generator().manual_seed(1))
    w = {name: (_np(m.weight), _np(m.bias)) for name, m in
         (("r", agent.embed_return), ("s", agent.embed_state), ("a", agent.embed_action))}
    time = _np(agent.embed_timestep.weight)[batch["timesteps"].numpy()]  # [2, K, d]
    r = (_np(batch["returns_to_go"])[..., None] / SCALE) @ w["r"][0].T + w["r"][1]
    s = _np(batch["observations"]) @ w["s"][0].T + w["s"][1]
    a = _np(batch["actions"]) @ w["a"][0].T + w["a"][1]
    want = np.empty((2, 3 * K, 8))
    want[:, 0::3], want[:, 1::3], want[:, 2::3] = r + time, s + time, a + time
    np.testing.assert_allclose(_captured_tokens(agent, batch), _layer_norm(want, agent.embed_ln),
                               rtol=1e-10, atol=1e-12)


def test_stacked_tokens_sum_r_s_and_the_previous_action():
    agent, batch = _agent("stacked"), _batch(torch.Generator().manual_seed(2))
    prev = np.concatenate([np.zeros((2, 1, ACT)), _np(batch["actions"])[:, :-1]], axis=1)
    want = ((_np(batch["returns_to_go"])[..., None] / SCALE) @ _np(agent.embed_return.weight).T
            + _np(agent.embed_return.bias)
            + _np(batch["observations"]) @ _np(agent.embed_state.weight).T + _np(agent.embed_state.bias)
            + prev @ _np(agent.embed_action.weight).T + _np(agent.embed_action.bias)
            + _np(agent.embed_timestep.weight)[batch["timesteps"].numpy()])
    np.testing.assert_allclose(_captured_tokens(agent, batch), _layer_norm(want, agent.embed_ln),
                               rtol=1e-10, atol=1e-12)


class _Identity(nn.Module):
    recurrent = True

    def forward(self, x, state=None):
        return x, state


def test_a_t_is_read_from_the_s_t_output():
    agent, batch = _agent("interleaved"), _batch(torch.Generator().manual_seed(3))
    agent.backbone = _Identity()  # each output is its own token: the head sees exactly one
    with torch.no_grad():
        pred = _np(agent.predict(batch))
    tokens = _captured_tokens(agent, batch)
    head = agent.head[0]
    want = np.tanh(tokens[:, 1::3] @ _np(head.weight).T + _np(head.bias))  # the s_t tokens
    np.testing.assert_allclose(pred, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backbone", ["mingru", "transformer"])
def test_a_t_sees_r_t_s_t_and_the_past_but_not_a_t(backbone):
    agent, batch = _agent("interleaved", backbone), _batch(torch.Generator().manual_seed(4))
    with torch.no_grad():
        base = agent.predict(batch)
        for key, changes_step_2 in (("returns_to_go", True), ("observations", True),
                                    ("actions", False)):
            moved = {k: v.clone() for k, v in batch.items()}
            moved[key][:, 2] += 0.5 if key != "returns_to_go" else 300.0
            diff = (agent.predict(moved) - base).abs().amax(dim=(0, 2))
            assert torch.all(diff[:2] == 0), f"{key} at step 2 changed earlier predictions"
            assert bool(diff[2] > 1e-9) == changes_step_2, f"{key} at step 2 vs a_2's prediction"
            assert diff[3] > 1e-9, f"{key} at step 2 must reach later predictions"


@pytest.mark.parametrize("mode", ["carry", "window"])
def test_evaluate_with_the_real_agent_equals_single_env_rollouts(mode):
    env_id, steps, target, seed, episodes = "Hopper-v5", 25, 3600.0, 5, 4
    torch.manual_seed(0)
    spec = EvalSpec(env_id=env_id, max_episode_steps=steps, target_returns=(target,),
                    ref_min=None, ref_max=None, ref_source="none", obs_dim=11, act_dim=3,
                    dataset_id="test/none")
    agent = DecisionAgent(DataSpec(11, 3, np.zeros(11), np.full(11, 2.0), seq_len=5,
                                   max_episode_steps=steps),
                          DecisionAgent.Options(d_model=16, n_layers=2, act_mode=mode)).eval()
    res = evaluate(agent, spec, episodes=episodes, n_envs=2, seed=seed)["targets"]["3600"]
    want = []
    for i in range(episodes):
        env = gym.make(env_id, max_episode_steps=steps)
        obs, _ = env.reset(seed=episode_seed(seed, i))
        state, reward, total, done = agent.reset(1, target), None, 0.0, False
        while not done:
            action, state = agent.act(obs[None], reward, state)
            obs, reward, term, trunc, _ = env.step(action[0])
            total, done, reward = total + reward, term or trunc, np.array([reward])
        want.append(total)
        env.close()
    np.testing.assert_allclose(res["returns"], want, rtol=1e-5)
    assert len(set(np.round(want, 6))) > 1, "the episodes should differ"
