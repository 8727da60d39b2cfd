"""Data pipeline: Minari -> EpisodeData -> SegmentSampler; tasks, scores, registry."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from conftest import TINY_MAX_STEPS, TINY_MIN_EPISODES, TINY_REF

from rlmin import registry
from rlmin.data import (
    DataError,
    DatasetNotFoundError,
    EpisodeData,
    SegmentSampler,
    combine_datasets,
    from_minari,
    load_minari,
)
from rlmin.scores import normalized_score, reference_scores
from rlmin.task import Task, get_task, list_tasks, resolve_dataset


def _episode(rewards, obs_dim=2, act_dim=1, obs_value=None, **extra):
    T = len(rewards)
    obs = np.arange((T + 1) * obs_dim, dtype=np.float32).reshape(T + 1, obs_dim)
    if obs_value is not None:
        obs[:] = obs_value
    act = np.linspace(-1, 1, T * act_dim, dtype=np.float32).reshape(T, act_dim)
    return {"observations": obs, "actions": act, "rewards": np.asarray(rewards, float), **extra}


# ------------------------------------------------------------------------- EpisodeData

def test_tiny_hopper_fixture_is_real(tiny_hopper, tiny_hopper_data):
    assert tiny_hopper.total_episodes >= TINY_MIN_EPISODES
    assert tiny_hopper.spec.env_spec.id == "Hopper-v5"
    assert tiny_hopper_data.obs_dim == 11 and tiny_hopper_data.act_dim == 3
    assert tiny_hopper_data.num_steps == tiny_hopper.total_steps
    assert tiny_hopper_data.episode_lengths.max() <= TINY_MAX_STEPS


def test_obs_action_alignment_matches_raw_minari(tiny_hopper, tiny_hopper_data):
    data = tiny_hopper_data
    for e, raw in enumerate(tiny_hopper.iterate_episodes()):
        ep = data.episode(e)
        T = len(raw.rewards)
        assert raw.observations.shape[0] == T + 1  # Minari: T + 1 observations
        np.testing.assert_array_equal(ep["observations"], raw.observations[:T].astype(np.float32))
        np.testing.assert_array_equal(data.final_observations[e], raw.observations[T].astype(np.float32))
        np.testing.assert_array_equal(ep["actions"], raw.actions.astype(np.float32))
        np.testing.assert_array_equal(ep["rewards"], raw.rewards.astype(np.float32))
        np.testing.assert_array_equal(ep["terminations"], raw.terminations)
        np.testing.assert_array_equal(ep["truncations"], raw.truncations)
        np.testing.assert_array_equal(ep["timesteps"], np.arange(T))
        assert data.episode_ids[e] == raw.id
    assert data.observations.dtype == np.float32 and data.actions.dtype == np.float32


def test_truncation_and_termination_kept_distinct(tiny_hopper_data):
    data = tiny_hopper_data
    last = data.offsets[1:] - 1
    pure_term = data.terminations[last] & ~data.truncations[last]
    pure_trunc = data.truncations[last] & ~data.terminations[last]
    assert pure_term.any() and pure_trunc.any()
    inner = np.ones(data.num_steps, bool)
    inner[last] = False
    assert not data.terminations[inner].any() and not data.truncations[inner].any()
    # the truncated episodes are exactly the ones that hit the time limit
    lengths = data.episode_lengths
    np.testing.assert_array_equal(data.truncations[last], lengths == TINY_MAX_STEPS)


def test_returns_to_go_hand_checked(make_dataset):
    ds = make_dataset("test/toy/rtg-v0", [_episode([1, 2, 3, 4]), _episode([10, -1])])
    data = from_minari(ds)
    np.testing.assert_array_equal(data.offsets, [0, 4, 6])
    np.testing.assert_allclose(data.returns_to_go, [10, 9, 7, 4, 9, -1])
    np.testing.assert_array_equal(data.timesteps, [0, 1, 2, 3, 0, 1])
    np.testing.assert_allclose(data.episode_returns, [10, 9])
    assert data.behaviour_return == pytest.approx(9.5)
    assert data.metadata["behaviour_return"] == pytest.approx(9.5)
    assert data.metadata["dataset_id"] == ds
    assert data.returns_to_go.dtype == np.float32 and data.timesteps.dtype == np.int64


def test_obs_stats_and_std_floor(make_dataset):
    eps = [_episode([1, 1, 1]), _episode([0, 0])]
    for ep in eps:
        ep["observations"][:, 1] = 3.0  # a constant feature
    data = from_minari(make_dataset("test/toy/stats-v0", eps))
    np.testing.assert_allclose(data.obs_mean, data.observations.mean(0), rtol=1e-6)
    assert data.obs_std[1] == pytest.approx(1e-6)  # floored, not zero
    assert np.isfinite(data.normalize_obs(data.observations)).all()


def test_nan_names_the_episode(make_dataset):
    bad = _episode([1.0, 2.0, 3.0])
    bad["observations"][2, 0] = np.nan
    ds = make_dataset("test/toy/nan-v0", [_episode([1.0]), bad])
    with pytest.raises(DataError, match="episode 1 .*observations contain NaN"):
        from_minari(ds)
    ds = make_dataset("test/toy/inf-reward-v0", [_episode([1.0, np.inf])])
    with pytest.raises(DataError, match="episode 0 .*rewards"):
        from_minari(ds)


def test_shape_mismatch_names_both_shapes(make_dataset):
    ds = make_dataset("test/toy/shape-v0", [_episode([1.0, 2.0], obs_dim=4, act_dim=3)])
    with pytest.raises(DataError, match=r"\(4,\).*Hopper-v5.*\(11,\)"):
        from_minari(ds, env_id="Hopper-v5")
    # the dataset's own env spec disagreeing with its arrays' width
    ds = make_dataset("test/toy/shape-spec-v0", [_episode([1.0, 2.0], obs_dim=5, act_dim=3)],
                      env="Hopper-v5", observation_space=gym.spaces.Box(-np.inf, np.inf, (5,)))
    with pytest.raises(DataError, match=r"\(5,\).*\(11,\)"):
        from_minari(ds)


def test_dict_space_is_a_clear_error(make_dataset):
    T = 3
    obs = {"pos": np.zeros((T + 1, 2), np.float32), "vel": np.zeros((T + 1, 1), np.float32)}
    space = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,)), "vel": gym.spaces.Box(-1, 1, (1,))})
    ds = make_dataset("test/toy/dict-v0", [{"observations": obs, "actions": np.zeros((T, 1)),
                                            "rewards": [0.0] * T}],
                      observation_space=space, action_space=gym.spaces.Box(-1, 1, (1,)))
    with pytest.raises(DataError, match="only Box observation and action spaces.*Dict"):
        from_minari(ds)


def test_empty_dataset_is_an_error(make_dataset):
    ds = make_dataset("test/toy/empty-v0", [], observation_space=gym.spaces.Box(-1, 1, (2,)),
                      action_space=gym.spaces.Box(-1, 1, (1,)))
    with pytest.raises(DataError, match="empty"):
        from_minari(ds)


# ------------------------------------------------------------------------- loading

def test_missing_dataset_fails_offline_naming_the_command(monkeypatch):
    import minari
    import minari.storage.hosting as hosting

    def no_network(*args, **kwargs):
        raise AssertionError("load_minari must not contact a remote without download=True")

    for name in ("download_dataset", "list_remote_datasets", "get_remote_dataset_versions"):
        for module in (minari, hosting):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, no_network)
    with pytest.raises(DatasetNotFoundError, match=r"`rlmin data build hopper medium`"):
        load_minari("rlmin/hopper/medium-v0")
    with pytest.raises(DatasetNotFoundError,
                       match=r"`minari download mujoco/hopper/expert-v0`.*rlmin data build hopper expert"):
        load_minari("mujoco/hopper/expert-v0")
    with pytest.raises(ValueError, match="-vN"):
        load_minari("rlmin/hopper/medium")


def test_load_by_path_and_id(tiny_hopper_id, minari_datasets_path):
    by_id = load_minari(tiny_hopper_id)
    by_path = load_minari(minari_datasets_path / tiny_hopper_id)
    by_data_path = load_minari(str(minari_datasets_path / tiny_hopper_id / "data"))
    assert by_id.total_steps == by_path.total_steps == by_data_path.total_steps
    assert load_minari(by_id) is by_id
    with pytest.raises(DatasetNotFoundError, match="not a Minari dataset"):
        load_minari(minari_datasets_path / "nowhere")


def test_combine_keeps_reference_scores(make_dataset):
    a = make_dataset("test/toy/part-a-v0", [_episode([1, 2]), _episode([3])],
                     ref_min_score=-5.0, ref_max_score=50.0)
    b = make_dataset("test/toy/part-b-v0", [_episode([4, 4, 4])],
                     ref_min_score=-5.0, ref_max_score=50.0)
    combined = combine_datasets([a, b], "test/toy/combined-v0")
    meta = combined.storage.metadata
    assert combined.total_steps == 6 and combined.total_episodes == 3
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (-5.0, 50.0)
    assert meta["combined_datasets"] == [a, b]
    data = from_minari(combined)
    np.testing.assert_allclose(data.episode_returns, [3, 3, 12])
    rs = reference_scores(data)
    assert (rs.ref_min, rs.ref_max) == (-5.0, 50.0) and "combined-v0" in rs.source
    with pytest.raises(FileExistsError, match="overwrite"):
        combine_datasets([a, b], "test/toy/combined-v0")


def test_combine_refuses_disagreeing_refs_and_leaves_no_folder(make_dataset, minari_datasets_path):
    a = make_dataset("test/toy/refs-a-v0", [_episode([1])], ref_min_score=0.0, ref_max_score=10.0)
    b = make_dataset("test/toy/refs-b-v0", [_episode([1])], ref_min_score=0.0, ref_max_score=20.0)
    with pytest.raises(ValueError, match="disagree on ref_max_score"):
        combine_datasets([a, b], "test/toy/refs-ab-v0")
    assert not (minari_datasets_path / "test/toy/refs-ab-v0").exists()
    combined = combine_datasets([a, b], "test/toy/refs-ab-v0", ref_min=0.0, ref_max=20.0)
    assert combined.storage.metadata["ref_max_score"] == 20.0


# ------------------------------------------------------------------------- sampler

BATCH_KEYS = {"observations", "actions", "rewards", "returns_to_go", "timesteps", "mask"}


def test_sampler_batch_format(tiny_hopper_data):
    data = tiny_hopper_data
    batch = SegmentSampler(data, seq_len=10, batch_size=32, seed=0).sample()
    assert set(batch) == BATCH_KEYS
    assert batch["observations"].shape == (32, 10, 11) and batch["observations"].dtype == np.float32
    assert batch["actions"].shape == (32, 10, 3) and batch["actions"].dtype == np.float32
    for key, dtype in (("rewards", np.float32), ("returns_to_go", np.float32),
                       ("timesteps", np.int64), ("mask", np.bool_)):
        assert batch[key].shape == (32, 10) and batch[key].dtype == dtype


def _locate(data: EpisodeData, batch):
    """Global step index of each real batch entry, found through the unique raw actions."""
    flat = {tuple(a): i for i, a in enumerate(data.actions)}
    return np.array([[flat.get(tuple(a), -1) for a in row] for row in batch["actions"]])


def test_sampler_values_padding_and_normalisation(tiny_hopper_data):
    data = tiny_hopper_data
    K = TINY_MAX_STEPS + 7  # longer than every episode: every row is padded
    batch = SegmentSampler(data, seq_len=K, batch_size=64, seed=1).sample()
    mask = batch["mask"]
    assert (~mask).any(axis=1).all()
    # right padding: real steps first, then only padding
    assert mask[:, 0].all()
    assert (np.diff(mask.astype(int), axis=1) <= 0).all()
    for key in BATCH_KEYS - {"mask"}:
        assert not batch[key][~mask].any(), f"{key} is not zero where padded"
    idx = _locate(data, batch)
    assert (idx[mask] >= 0).all()
    g = idx[mask]
    np.testing.assert_allclose(batch["observations"][mask],
                               (data.observations[g] - data.obs_mean) / data.obs_std, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(batch["returns_to_go"][mask], data.returns_to_go[g])  # raw
    np.testing.assert_array_equal(batch["rewards"][mask], data.rewards[g])
    np.testing.assert_array_equal(batch["timesteps"][mask], data.timesteps[g])
    # consecutive steps of one episode, running to its end
    ends = data.offsets[np.searchsorted(data.offsets, idx[:, 0], side="right")]
    np.testing.assert_array_equal(mask.sum(1), ends - idx[:, 0])


def test_sampler_episode_mode(tiny_hopper_data):
    data = tiny_hopper_data
    sampler = SegmentSampler(data, seq_len=None, batch_size=16, mode="episode", seed=2)
    assert sampler.seq_len == 1000
    batch = sampler.sample()
    assert batch["observations"].shape == (16, 1000, 11)
    assert (batch["timesteps"][:, 0] == 0).all()  # whole episodes, from their first step
    assert set(batch["mask"].sum(1)) <= set(data.episode_lengths)
    short = SegmentSampler(data, seq_len=5, batch_size=16, mode="episode", seed=2).sample()
    assert short["mask"].all()  # cut to the first 5 steps
    np.testing.assert_array_equal(short["timesteps"], np.tile(np.arange(5), (16, 1)))


def test_sampler_rejects_bad_arguments(tiny_hopper_data):
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="seq_len"):
            SegmentSampler(tiny_hopper_data, seq_len=bad, batch_size=4)
    with pytest.raises(ValueError, match="mode"):
        SegmentSampler(tiny_hopper_data, seq_len=4, batch_size=4, mode="windows")
    with pytest.raises(ValueError, match="batch_size"):
        SegmentSampler(tiny_hopper_data, seq_len=4, batch_size=0)


def test_sampler_is_seeded(tiny_hopper_data):
    a = SegmentSampler(tiny_hopper_data, 8, 16, seed=5).sample()
    b = SegmentSampler(tiny_hopper_data, 8, 16, seed=5).sample()
    for key in BATCH_KEYS:
        np.testing.assert_array_equal(a[key], b[key])


def test_episodes_drawn_proportionally_to_length(make_dataset):
    # episode 0: 1 step of reward 1; episode 1: 9 steps of reward 2
    data = from_minari(make_dataset("test/toy/weights-v0", [_episode([1.0]), _episode([2.0] * 9)]))
    batch = SegmentSampler(data, seq_len=3, batch_size=50_000, seed=0).sample()
    long_ep = batch["rewards"][:, 0] == 2.0
    assert long_ep.mean() == pytest.approx(0.9, abs=0.01)  # ~7 standard errors
    # start uniform within the episode
    counts = np.bincount(batch["timesteps"][long_ep, 0], minlength=9)
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()
    # episode mode draws episodes uniformly by default
    ep_batch = SegmentSampler(data, 9, 50_000, mode="episode", seed=0).sample()
    assert (ep_batch["rewards"][:, 0] == 2.0).mean() == pytest.approx(0.5, abs=0.01)


# ------------------------------------------------------------------------- tasks, scores, registry

def test_registry_finds_the_hopper_task():
    task = get_task("hopper")
    assert isinstance(task, Task)
    assert (task.env_id, task.obs_dim, task.act_dim, task.max_episode_steps) == ("Hopper-v5", 11, 3, 1000)
    assert task.dataset_ids["medium"] == "mujoco/hopper/medium-v0"
    assert get_task("Hopper-v5") is task
    assert {"hopper", "halfcheetah", "walker2d"} <= set(list_tasks())
    assert "Minari issue #323" in task.ref_source
    with pytest.raises(KeyError, match="unknown task 'hoper'.*hopper"):
        get_task("hoper")


def test_registry_register_and_errors():
    toy = Task(name="toy", env_id="Pendulum-v1", max_episode_steps=200, dataset_ids={},
               ref_min=-1500.0, ref_max=0.0, ref_source="test", target_returns=(0.0,))
    from rlmin.task import register_task
    register_task(toy)
    try:
        assert get_task("toy") is toy
    finally:
        registry.unregister(registry.TASKS, "task:toy")
    with pytest.raises(KeyError, match="unknown rlmin.tasks name 'nope'; known: .*locomotion"):
        registry.get(registry.TASKS, "nope")

    def fake_builder(env_name, level, **kwargs):
        return f"fake/{env_name}/{level}-v0"

    registry.register(registry.BUILDERS, "fake", fake_builder)
    try:
        assert registry.load_builder("fake")("hopper", "medium") == "fake/hopper/medium-v0"
    finally:
        registry.unregister(registry.BUILDERS, "fake")
    assert registry.load_agent_class("decision").__name__ == "DecisionAgent"  # the lookup works
    from rlmin.data import list_local
    assert callable(list_local)  # `rlmin data list` needs no entry point


def test_d4rl_names_map_with_a_warning():
    with pytest.warns(UserWarning, match="not D4RL-v2 scores"):
        task, dataset_id = resolve_dataset("hopper-medium-v2")
    assert (task.name, dataset_id) == ("hopper", "mujoco/hopper/medium-v0")
    with pytest.warns(UserWarning):
        assert resolve_dataset("walker2d-medium-replay-v2")[1] == "rlmin/walker2d/medium-replay-v0"
    with pytest.warns(UserWarning):
        assert resolve_dataset("halfcheetah-medium-expert-v2")[1] == "rlmin/halfcheetah/medium-expert-v0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # plain Minari ids do not warn
        assert resolve_dataset("rlmin/hopper/medium-v0")[0].name == "hopper"
        assert resolve_dataset("mujoco/walker2d/expert-v0")[0].name == "walker2d"
    with pytest.raises(ValueError, match="cannot tell which task"):
        resolve_dataset("someone/else-v0")


def test_resolve_dataset_path(tiny_hopper_id, minari_datasets_path):
    task, path = resolve_dataset(minari_datasets_path / tiny_hopper_id)
    assert task.name == "hopper" and path.endswith("tiny-v0")


def test_normalised_score_formula():
    assert normalized_score(4098.0, 24.8, 4098.0) == pytest.approx(100.0)
    assert normalized_score(24.8, 24.8, 4098.0) == pytest.approx(0.0)
    assert normalized_score(50.0, 0.0, 200.0) == pytest.approx(25.0)
    np.testing.assert_allclose(normalized_score([0.0, 100.0, 300.0], 100.0, 300.0), [-50, 0, 100])
    with pytest.raises(ValueError):
        normalized_score(1.0, 5.0, 5.0)


def test_reference_scores_metadata_first_then_task(tiny_hopper, tiny_hopper_data):
    task = get_task("hopper")
    from_meta = reference_scores(tiny_hopper_data.metadata, task)
    assert (from_meta.ref_min, from_meta.ref_max) == TINY_REF
    assert from_meta.source.startswith("dataset metadata (test/hopper/tiny-v0)")
    assert reference_scores(tiny_hopper, task).ref_max == TINY_REF[1]  # a MinariDataset works too
    only_one = {"dataset_id": "x-v0", "ref_min_score": 3.0}  # half a pair is not used
    from_task = reference_scores(only_one, task)
    assert (from_task.ref_min, from_task.ref_max) == (task.ref_min, task.ref_max)
    assert from_task.source.startswith("task table (hopper)")
    assert from_task.normalize(task.ref_max) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no reference scores"):
        reference_scores({"dataset_id": "x-v0"}, None)
