"""rlmin.evaluate with a stand-in agent: episode counting, per-env resets, seeds, scores."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlmin import evaluate as evaluate_module
from rlmin.evaluate import episode_seed, evaluate, format_results_table, target_key
from rlmin.spec import EvalSpec

ENVS = {  # env id -> (obs_dim, act_dim, action bound)
    "Pendulum-v1": (3, 1, 2.0),
    "Hopper-v5": (11, 3, 1.0),
}


def spec_for(env_id, ref_min=None, ref_max=None, max_episode_steps=None, targets=(0.0,),
             ref_source="test refs") -> EvalSpec:
    """What a dataset tells the evaluator, for a plain env (no dataset behind it)."""
    obs_dim, act_dim, _ = ENVS[env_id]
    return EvalSpec(env_id=env_id, max_episode_steps=max_episode_steps,
                    target_returns=tuple(targets), ref_min=ref_min, ref_max=ref_max,
                    ref_source=ref_source, obs_dim=obs_dim, act_dim=act_dim,
                    dataset_id=f"test/{env_id}")


class StandInAgent(torch.nn.Module):
    """A deterministic linear policy that also depends on its carried state.

    State: return-to-go (target minus rewards so far) and the step count in the episode, so an
    evaluator that fails to reset a row at an episode boundary, or that feeds it a wrong reward,
    changes the actions and therefore the returns. Every call to ``act`` is recorded.
    Maths is float64 numpy, row by row, so results cannot depend on the batch size.
    """

    def __init__(self, env_id: str, gain: float = 0.002, seed: int = 0):
        super().__init__()
        obs_dim, act_dim, self.bound = ENVS[env_id]
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(0.3 * torch.randn(act_dim, obs_dim, generator=g, dtype=torch.float64))
        self.gain = gain
        self.calls = []

    def reset(self, n_envs, target_return):
        self.target = float(target_return)
        return {"rtg": torch.full((n_envs,), self.target, dtype=torch.float64),
                "t": torch.zeros(n_envs, dtype=torch.int64)}

    def act(self, obs, reward, state, done=None):
        self.calls.append({
            "obs": np.array(obs, copy=True),
            "reward": None if reward is None else np.array(reward, copy=True),
            "done": None if done is None else np.array(done, copy=True),
            "training": self.training,
            "grad": torch.is_grad_enabled(),
        })
        rtg, t = state["rtg"].clone(), state["t"].clone()
        if reward is not None:
            rtg -= torch.as_tensor(np.asarray(reward, dtype=np.float64))
        if done is not None:
            d = torch.as_tensor(np.asarray(done, dtype=bool))
            rtg[d] = self.target
            t[d] = 0
        w = self.w.detach().numpy()
        obs = np.asarray(obs, dtype=np.float64)
        pre = (obs[:, None, :] * w[None]).sum(-1) + self.gain * rtg.numpy()[:, None] + 0.01 * t.numpy()[:, None]
        action = self.bound * np.tanh(pre)
        return action, {"rtg": rtg, "t": t + 1}


def manual_rollout(env_id, agent, target, seed, max_episode_steps):
    """One episode in a plain (non-vector) env, the reference the evaluator must match."""
    env = gym.make(env_id, max_episode_steps=max_episode_steps)
    obs, _ = env.reset(seed=seed)
    state = agent.reset(1, target)
    reward, total, length = None, 0.0, 0
    while True:
        action, state = agent.act(obs[None], reward, state)
        obs, r, terminated, truncated, _ = env.step(action[0].astype(env.action_space.dtype))
        total += float(r)
        length += 1
        reward = np.array([r])
        if terminated or truncated:
            env.close()
            return total, length


def test_episode_seed():
    seeds = [episode_seed(0, i) for i in range(50)] + [episode_seed(1, i) for i in range(50)]
    assert len(set(seeds)) == 100
    assert episode_seed(3, 7) == episode_seed(3, 7)
    with pytest.raises(ValueError):
        episode_seed(-1, 0)


def test_counts_and_done_at_episode_starts():
    agent = StandInAgent("Pendulum-v1")
    agent.train()
    res = evaluate(agent, spec_for("Pendulum-v1"), target_returns=-100.0, episodes=5, n_envs=2,
                   max_episode_steps=5)
    assert agent.training  # mode restored
    assert list(res["targets"]) == ["-100"]
    r = res["targets"]["-100"]
    assert r["episodes"] == 5 and len(r["returns"]) == 5
    assert r["lengths"] == [5] * 5 and r["length_mean"] == 5.0
    assert res["n_envs"] == 2 and res["env_id"] == "Pendulum-v1" and res["seed"] == 0
    assert r["normalized_mean"] is None and r["normalized_std"] is None

    calls = agent.calls
    # env 0 runs episodes 0, 2, 4 -> 15 steps; then evaluation stops
    assert len(calls) == 15
    assert calls[0]["reward"] is None and calls[0]["done"] is None
    for k, c in enumerate(calls[1:], start=1):
        assert c["done"].dtype == bool and c["done"].shape == (2,)
        assert c["done"].tolist() == [k % 5 == 0] * 2, k
        assert c["reward"].shape == (2,)
        assert np.all(c["reward"][c["done"]] == 0.0)
        assert np.all(c["reward"][~c["done"]] < 0.0)  # Pendulum rewards are negative
    assert all(not c["training"] and not c["grad"] for c in calls)


def test_default_n_envs_is_capped_by_episodes():
    res = evaluate(StandInAgent("Pendulum-v1"), spec_for("Pendulum-v1"), target_returns=0.0, episodes=3,
                   max_episode_steps=2)
    assert res["n_envs"] == 3


@pytest.mark.parametrize("env_id,max_steps", [("Pendulum-v1", 7), ("Hopper-v5", 18)])
def test_returns_match_single_env_rollouts(env_id, max_steps):
    """No autoreset reward is counted, no step is lost, and each row's state restarts."""
    target, seed, episodes = 50.0, 3, 5
    res = evaluate(StandInAgent(env_id), spec_for(env_id), target_returns=target, episodes=episodes,
                   n_envs=2, seed=seed, max_episode_steps=max_steps)
    (r,) = res["targets"].values()
    for i in range(episodes):
        ret, length = manual_rollout(env_id, StandInAgent(env_id), target, episode_seed(seed, i), max_steps)
        assert r["lengths"][i] == length, i
        assert r["returns"][i] == pytest.approx(ret, rel=1e-12, abs=1e-12), i
    if env_id == "Hopper-v5":  # this policy falls over: episodes end at different steps
        assert min(r["lengths"]) < max(r["lengths"]) <= max_steps


def test_independent_of_n_envs_and_reproducible():
    kw = dict(target_returns=[20.0], episodes=5, seed=1, max_episode_steps=15)
    runs = [evaluate(StandInAgent("Hopper-v5"), spec_for("Hopper-v5"), n_envs=n, **kw) for n in (1, 2, 5, 2)]
    first = runs[0]["targets"]["20"]
    for run in runs[1:]:
        assert run["targets"]["20"]["returns"] == first["returns"]
        assert run["targets"]["20"]["lengths"] == first["lengths"]
    other = evaluate(StandInAgent("Hopper-v5"), spec_for("Hopper-v5"), n_envs=2, **{**kw, "seed": 2})
    assert other["targets"]["20"]["returns"] != first["returns"]


def test_several_targets_and_normalised_scores():
    targets = [-1000.0, 0.0, 1000.0]
    ref_min, ref_max = -1500.0, -100.0
    kw = dict(episodes=3, n_envs=3, seed=0, max_episode_steps=6)
    spec = spec_for("Pendulum-v1", ref_min=ref_min, ref_max=ref_max)
    res = evaluate(StandInAgent("Pendulum-v1", gain=0.01), spec, target_returns=targets, **kw)
    assert list(res["targets"]) == ["-1000", "0", "1000"]
    assert [r["target_return"] for r in res["targets"].values()] == targets
    assert res["ref_min"] == ref_min and res["ref_max"] == ref_max
    assert res["ref_source"] == "test refs" and res["dataset_id"] == "test/Pendulum-v1"
    # the target changes the actions, so the returns differ between targets
    assert len({tuple(r["returns"]) for r in res["targets"].values()}) == 3
    for key, r in res["targets"].items():
        alone = evaluate(StandInAgent("Pendulum-v1", gain=0.01), spec,
                         target_returns=r["target_return"], **kw)["targets"][key]
        assert alone["returns"] == r["returns"]  # evaluated separately, no state carried over
        R = np.array(r["returns"])
        assert r["return_mean"] == pytest.approx(R.mean())
        assert r["return_std"] == pytest.approx(R.std())
        norm = 100.0 * (R - ref_min) / (ref_max - ref_min)
        assert r["normalized_mean"] == pytest.approx(norm.mean())
        assert r["normalized_std"] == pytest.approx(norm.std())

    table = format_results_table(res)
    assert table.count("\n| ") == 1 + len(targets)  # header + one row per target
    assert "| -1000 | 3 |" in table and "Pendulum-v1" in table


def test_target_key():
    assert [target_key(t) for t in (3600, 3600.0, 1800.5, -0.25)] == ["3600", "3600", "1800.5", "-0.25"]


def test_bad_arguments_and_actions():
    agent = StandInAgent("Pendulum-v1")
    with pytest.raises(ValueError, match="both ref_min and ref_max"):
        evaluate(agent, spec_for("Pendulum-v1", ref_min=0.0), target_returns=0.0, episodes=1)
    with pytest.raises(ValueError, match="must exceed ref_min"):
        evaluate(agent, spec_for("Pendulum-v1", ref_min=5.0, ref_max=5.0), episodes=1)
    with pytest.raises(ValueError, match="n_envs"):
        evaluate(agent, spec_for("Pendulum-v1"), episodes=1, n_envs=0)
    with pytest.raises(ValueError, match="finite"):
        evaluate(agent, spec_for("Pendulum-v1"), target_returns=[float("nan")], episodes=1)
    with pytest.raises(ValueError, match="episodes"):
        evaluate(agent, spec_for("Pendulum-v1"), target_returns=0.0, episodes=0)
    with pytest.raises(ValueError, match="duplicates"):
        evaluate(agent, spec_for("Pendulum-v1"), target_returns=[100, 100.0], episodes=1)

    class WrongShape(StandInAgent):
        def act(self, obs, reward, state, done=None):
            action, state = super().act(obs, reward, state, done)
            return action[:, 0], state

    with pytest.raises(ValueError, match="shape"):
        evaluate(WrongShape("Pendulum-v1"), spec_for("Pendulum-v1"), target_returns=0.0, episodes=2,
                 max_episode_steps=3)


def test_the_spec_gives_defaults_and_its_provenance():
    """Targets and the time limit come from the spec unless given; results say whose refs."""
    spec = spec_for("Pendulum-v1", ref_min=-1500.0, ref_max=-100.0, max_episode_steps=4,
                    targets=(-200.0, 0.0))
    res = evaluate(StandInAgent("Pendulum-v1"), spec, episodes=1)
    assert list(res["targets"]) == ["-200", "0"] and res["max_episode_steps"] == 4
    assert all(r["lengths"] == [4] for r in res["targets"].values())
    assert (res["dataset_id"], res["ref_source"], res["env_id"]) == \
        ("test/Pendulum-v1", "test refs", "Pendulum-v1")
    shorter = evaluate(StandInAgent("Pendulum-v1"), spec, episodes=1, max_episode_steps=2)
    assert shorter["max_episode_steps"] == 2 and shorter["targets"]["0"]["lengths"] == [2]


def test_one_episode_table_shows_no_std():
    spec = spec_for("Pendulum-v1", ref_min=-1500.0, ref_max=-100.0, max_episode_steps=3)
    one = format_results_table(evaluate(StandInAgent("Pendulum-v1"), spec, episodes=1))
    row = one.splitlines()[-1]
    assert row.count("± n/a") == 2, f"a one-episode row has no spread: {row}"
    assert "dataset test/Pendulum-v1" in one and "(test refs)" in one
    two = format_results_table(evaluate(StandInAgent("Pendulum-v1"), spec, episodes=2))
    assert "n/a" not in two


def test_broken_episode_bookkeeping_fails_after_a_bounded_number_of_steps(monkeypatch):
    """Episodes that never report their end must not make the evaluator loop forever."""
    real_make_vec = gym.make_vec

    class NeverEnds(gym.vector.VectorWrapper):
        def step(self, actions):
            obs, reward, terminated, truncated, info = self.env.step(actions)
            return obs, reward, np.zeros_like(terminated), np.zeros_like(truncated), info

    def make_vec(env_id, **kwargs):
        kwargs.pop("max_episode_steps", None)  # Pendulum's own 200-step limit stays far away
        return NeverEnds(real_make_vec(env_id, **kwargs))

    monkeypatch.setattr(evaluate_module.gym, "make_vec", make_vec)
    agent = StandInAgent("Pendulum-v1")
    with pytest.raises(RuntimeError, match=r"did not finish 2 episodes within \d+ env steps"):
        evaluate(agent, spec_for("Pendulum-v1", max_episode_steps=3), episodes=2, n_envs=1)
    assert len(agent.calls) <= (2 + 1) * 3, f"{len(agent.calls)} steps for 2 episodes of 3 steps"
