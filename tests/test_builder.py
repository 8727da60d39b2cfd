"""envs.builder: D4RL-style datasets written locally in Minari format (tiny sizes)."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs.builder as builder
from envs.behaviour import GaussianActor, save_actor
from rlmin.data import SegmentSampler, from_minari, load_minari
from rlmin.data.minari_io import read_metadata
from rlmin.tasks import get_task

HOPPER = get_task("hopper")


@pytest.fixture
def no_shipped_policies(tmp_path, monkeypatch):
    """Pretend no policy is shipped, so results do not depend on envs/policies/ contents."""
    monkeypatch.setattr(builder, "shipped_policy_path",
                        lambda env, level: tmp_path / "no-policies" / f"{env}-{level}.pt")


def _actor(path, obs_dim=11, act_dim=3, seed=0, **meta):
    torch.manual_seed(seed)
    save_actor(GaussianActor(obs_dim, act_dim, hidden=(8,)), path, {"env_id": "Hopper-v5", **meta})
    return path


def test_random_level(fresh_minari_path, no_shipped_policies):
    dataset_id = builder.build_dataset("hopper", "random", n_steps=120, seed=3)
    assert dataset_id == "rlmin/hopper/random-v0"
    ds = load_minari(dataset_id)
    meta = ds.storage.metadata
    assert ds.total_steps == 120
    assert meta["ref_min_score"] == HOPPER.ref_min and meta["ref_max_score"] == HOPPER.ref_max
    assert "default_rng(3)" in meta["description"] and "uniformly random" in meta["description"]
    data = from_minari(ds)
    last = data.offsets[1:] - 1
    assert (data.terminations[last] | data.truncations[last]).all()
    assert meta["behaviour_mean_return"] == pytest.approx(data.behaviour_return)


def test_medium_level_is_seeded_and_records_the_policy(fresh_minari_path, no_shipped_policies,
                                                       tmp_path):
    policy = _actor(tmp_path / "medium.pt", return_stochastic=300.0, sac_steps=40_000)
    a = builder.build_dataset("hopper", "medium", n_steps=60, policy_path=policy, seed=1)
    b = builder.build_dataset("hopper", "medium", n_steps=60, policy_path=policy, seed=1,
                              dataset_id="rlmin/hopper/medium-again-v0")
    da, db = from_minari(a), from_minari(b)
    assert da.num_steps == 60
    np.testing.assert_array_equal(da.actions, db.actions)
    np.testing.assert_array_equal(da.observations, db.observations)
    meta = read_metadata(a)
    assert "medium.pt" in meta["description"] and "sac_steps" in meta["description"]
    # no expert policy anywhere: ref_max falls back to the task table, and says so
    assert meta["ref_max_score"] == HOPPER.ref_max and "task table" in meta["description"]
    # every episode ends in a termination or a truncation, the last one (which the step budget
    # may cut) included
    last = da.offsets[1:] - 1
    assert (da.terminations[last] | da.truncations[last]).all()
    assert np.abs(da.actions).max() <= 1.0


def test_medium_expert_combines_and_keeps_refs(fresh_minari_path, no_shipped_policies, tmp_path):
    medium = _actor(tmp_path / "m.pt", seed=0, return_stochastic=300.0)
    expert = _actor(tmp_path / "e.pt", seed=1, return_stochastic=900.0)
    builder.build_dataset("hopper", "medium", n_steps=70, policy_path=medium, ref_max=900.0)
    builder.build_dataset("hopper", "expert", n_steps=50, policy_path=expert)
    assert read_metadata("rlmin/hopper/expert-v0")["ref_max_score"] == 900.0  # the expert's return
    dataset_id = builder.build_dataset("hopper", "medium-expert")
    ds = load_minari(dataset_id)
    meta = ds.storage.metadata
    assert ds.total_steps == 70 + 50
    assert ds.total_episodes == (load_minari("rlmin/hopper/medium-v0").total_episodes
                                 + load_minari("rlmin/hopper/expert-v0").total_episodes)
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (HOPPER.ref_min, 900.0)
    assert meta["combined_datasets"] == ["rlmin/hopper/medium-v0", "rlmin/hopper/expert-v0"]
    rows = {r["id"]: r for r in builder.list_local_datasets()}
    assert rows[dataset_id]["steps"] == 120 and rows[dataset_id]["ref_max"] == 900.0
    assert rows[dataset_id]["behaviour_return"] == pytest.approx(from_minari(ds).behaviour_return)


def _sb3_replay(run_dir, n_transitions, buffer_size, seed=0, limit=20):
    """A real SB3 ReplayBuffer filled as SAC fills it, plus the episodes that went in."""
    from stable_baselines3.common.buffers import ReplayBuffer
    from stable_baselines3.common.save_util import save_to_pkl

    env = gym.make("Hopper-v5", max_episode_steps=limit)
    env.action_space.seed(seed)
    buf = ReplayBuffer(buffer_size, env.observation_space, env.action_space, device="cpu")
    episodes, current = [], None
    obs, _ = env.reset(seed=seed)
    for _ in range(n_transitions):
        if current is None:
            current = {"obs": [obs], "act": [], "rew": [], "term": False, "trunc": False}
        action = env.action_space.sample()
        next_obs, reward, term, trunc, _ = env.step(action)
        buf.add(obs[None], next_obs[None], action[None], np.array([reward]),
                np.array([term or trunc]), [{"TimeLimit.truncated": trunc and not term}])
        current["obs"].append(next_obs)
        current["act"].append(action)
        current["rew"].append(reward)
        if term or trunc:
            current.update(term=term, trunc=trunc and not term)
            episodes.append(current)
            current = None
            obs, _ = env.reset()
        else:
            obs = next_obs
    if current is not None:
        current["trunc"] = True  # unfinished: the builder marks it truncated
        episodes.append(current)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_to_pkl(run_dir / "replay.pkl", buf)
    return episodes


def test_medium_replay_from_sb3_buffer(fresh_minari_path, no_shipped_policies, tmp_path):
    pytest.importorskip("stable_baselines3")
    run_dir = tmp_path / "sac_run"
    episodes = _sb3_replay(run_dir, n_transitions=75, buffer_size=1000)
    dataset_id = builder.build_dataset("hopper", "medium-replay", sac_run_dir=run_dir)
    data = from_minari(dataset_id)
    assert data.num_steps == 75 and data.num_episodes == len(episodes)
    for e, ep in enumerate(episodes):
        got = data.episode(e)
        np.testing.assert_allclose(got["observations"], np.array(ep["obs"][:-1], np.float32))
        np.testing.assert_allclose(data.final_observations[e], np.array(ep["obs"][-1], np.float32))
        np.testing.assert_allclose(got["actions"], np.array(ep["act"]))
        np.testing.assert_allclose(got["rewards"], np.array(ep["rew"], np.float32), rtol=1e-6)
        assert bool(got["terminations"][-1]) == ep["term"]
        assert bool(got["truncations"][-1]) == ep["trunc"]
    meta = read_metadata(dataset_id)
    assert meta["ref_min_score"] == HOPPER.ref_min and "replay buffer" in meta["description"]


def test_replay_wrapped_buffer_drops_the_overwritten_episode(tmp_path):
    pytest.importorskip("stable_baselines3")
    episodes = _sb3_replay(tmp_path / "run", n_transitions=90, buffer_size=50, seed=4, limit=15)
    got = builder.replay_episodes(tmp_path / "run" / "replay.pkl")
    assert sum(len(ep["rewards"]) for ep in got) <= 50 and len(got) < len(episodes)
    # the kept episodes are the last ones that went in, whole
    for mine, theirs in zip(reversed(got), reversed(episodes)):
        np.testing.assert_allclose(mine["rewards"], np.array(theirs["rew"], np.float32), rtol=1e-6)
        assert len(mine["observations"]) == len(theirs["obs"])


def test_medium_replay_needs_a_sac_run(fresh_minari_path, tmp_path):
    with pytest.raises(ValueError, match="sac_run_dir"):
        builder.build_dataset("hopper", "medium-replay")
    with pytest.raises(FileNotFoundError, match="replay.pkl"):
        builder.build_dataset("hopper", "medium-replay", sac_run_dir=tmp_path)


def test_failed_create_leaves_no_folder(fresh_minari_path, no_shipped_policies, monkeypatch):
    import minari
    import minari.data_collector.data_collector as dc

    def broken(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(dc, "_generate_dataset_metadata", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        builder.build_dataset("hopper", "random", n_steps=20)
    assert not (fresh_minari_path / "rlmin/hopper/random-v0").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a partial folder would make this warn
        assert minari.list_local_datasets() == {}


def test_existing_dataset_needs_overwrite(fresh_minari_path, no_shipped_policies):
    builder.build_dataset("hopper", "random", n_steps=15)
    with pytest.raises(FileExistsError, match="overwrite"):
        builder.build_dataset("hopper", "random", n_steps=15)
    builder.build_dataset("hopper", "random", n_steps=25, overwrite=True)
    assert load_minari("rlmin/hopper/random-v0").total_steps == 25


def test_bad_requests_are_clear_errors(fresh_minari_path, no_shipped_policies, tmp_path):
    with pytest.raises(ValueError, match="-vN"):
        builder.build_dataset("hopper", "random", n_steps=10, dataset_id="rlmin/hopper/random")
    with pytest.raises(ValueError, match="unknown level"):
        builder.build_dataset("hopper", "mediocre")
    with pytest.raises(KeyError, match="unknown task"):
        builder.build_dataset("hoppper", "random")
    with pytest.raises(FileNotFoundError, match="policy_path"):
        builder.build_dataset("hopper", "medium", n_steps=10)
    wrong = _actor(tmp_path / "cheetah.pt", obs_dim=17, act_dim=6)
    with pytest.raises(ValueError, match=r"\(17,\).*\(11,\)"):
        builder.build_dataset("hopper", "expert", n_steps=10, policy_path=wrong)
    assert not any(fresh_minari_path.rglob("metadata.json"))


def test_built_dataset_feeds_the_sampler(fresh_minari_path, no_shipped_policies, tmp_path):
    policy = _actor(tmp_path / "p.pt", return_stochastic=500.0)
    data = from_minari(builder.build_dataset("hopper", "expert", n_steps=40, policy_path=policy))
    batch = SegmentSampler(data, seq_len=20, batch_size=8, seed=0).sample()
    assert batch["observations"].shape == (8, 20, 11) and batch["mask"][:, 0].all()
