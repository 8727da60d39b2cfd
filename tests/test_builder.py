"""envs.builder: D4RL-style datasets written locally in Minari format (tiny sizes, offline).

Covers the 15 (task, level) datasets through the real loader, the shipped policies (hopper's
always; halfcheetah/walker2d and the replay series when shipped), the snapshot series helper,
all-or-nothing writes (failed, killed and overwriting builds), and the CLI's messages.
"""
from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs.builder as builder
from envs.behaviour import SHIPPED_POLICIES_DIR, GaussianActor, load_actor, save_actor, weights_digest
from rlmin import cli
from rlmin.data import DatasetNotFoundError, SegmentSampler, from_minari, load_minari
from rlmin.data.minari_io import (
    BUILD_PREFIX,
    BuildLockedError,
    IncompleteDatasetError,
    _build_dir,
    _lock,
    clean_stale_builds,
    dataset_status,
    is_local,
    list_local,
    read_metadata,
)
from rlmin.data.resolve import load_dataset_for
from rlmin.task import get_task

HOPPER = get_task("hopper")
TASKS = ("hopper", "halfcheetah", "walker2d")
LEVELS = ("random", "medium", "expert", "medium-replay", "medium-expert")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_shipped_policies(tmp_path, monkeypatch):
    """Point the policies dir (RLMIN_POLICIES_DIR) at an empty folder, so results do not
    depend on what envs/policies holds."""
    empty = tmp_path / "no-policies"
    empty.mkdir()
    monkeypatch.setenv("RLMIN_POLICIES_DIR", str(empty))
    return empty


def _actor(path, obs_dim=11, act_dim=3, seed=0, env_id="Hopper-v5", **meta):
    torch.manual_seed(seed)
    save_actor(GaussianActor(obs_dim, act_dim, hidden=(8,)), path, {"env_id": env_id, **meta})
    return path


def _fake_run(run_dir, task, steps, learning_starts, episodes_per_step=0.02):
    """A SAC run dir as envs.sac.train_sac writes it: actor_<step>.pt and curve.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, step in enumerate(steps):
        _actor(run_dir / f"actor_{step}.pt", task.obs_dim, task.act_dim, seed=i,
               env_id=task.env_id, sac_steps=step, learning_starts=learning_starts,
               return_stochastic=10.0 * i)
        lines.append(json.dumps({"step": step, "episodes": int(step * episodes_per_step)}))
    (run_dir / "curve.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


def _fake_policies(folder, task, expert_return=5000.0):
    """<task>-{medium,expert}.pt and a <task>-replay/ series, all tiny and made here."""
    _actor(folder / f"{task.name}-medium.pt", task.obs_dim, task.act_dim, seed=1,
           env_id=task.env_id, return_stochastic=expert_return / 3)
    _actor(folder / f"{task.name}-expert.pt", task.obs_dim, task.act_dim, seed=2,
           env_id=task.env_id, return_stochastic=expert_return)
    run = _fake_run(folder / "run", task, steps=range(1000, 7000, 1000), learning_starts=1000)
    builder.make_replay_series(run, 5000, folder / f"{task.name}-replay", n_snapshots=3)
    return folder


def _loaded(task_name, level):
    cfg = SimpleNamespace(dataset=f"{task_name}-{level}", task=None, download=False,
                          build_if_missing=False)
    return load_dataset_for(cfg)


def _check_episodes(dataset_id, task, expect_terminations):
    """T + 1 observations per episode; a termination or a truncation on the last step only."""
    ds = load_minari(dataset_id)
    terminated = 0
    for ep in ds.iterate_episodes():
        T = len(ep.actions)
        assert ep.observations.shape == (T + 1, task.obs_dim)
        assert ep.actions.shape == (T, task.act_dim) and len(ep.rewards) == T
        assert not (ep.terminations[:-1].any() or ep.truncations[:-1].any())
        assert ep.terminations[-1] or ep.truncations[-1]
        terminated += bool(ep.terminations[-1])
    assert (terminated > 0) == expect_terminations, (dataset_id, terminated)
    data = from_minari(ds)
    assert data.final_observations.shape == (ds.total_episodes, task.obs_dim)
    last = data.offsets[1:] - 1
    assert (data.terminations[last] | data.truncations[last]).all()
    assert not np.delete(data.terminations | data.truncations, last).any()


# ----------------------------------------------------------------------------- the 15 datasets

@pytest.mark.parametrize("task_name", TASKS)
def test_every_level_builds_offline_and_loads(task_name, fresh_minari_path, tmp_path):
    task = get_task(task_name)
    policies = _fake_policies(tmp_path / "policies", task, expert_return=5000.0)
    steps = {"random": 150, "medium": 120, "expert": 90, "medium-replay": 160}
    for level in LEVELS:
        dataset_id = builder.build_dataset(task_name, level, n_steps=steps.get(level),
                                           policies_dir=policies, max_episode_steps=60,
                                           progress=False)
        assert dataset_id == f"rlmin/{task_name}/{level}-v0"
        loaded = _loaded(task_name, level)  # the loader training uses
        spec = loaded.eval_spec
        assert spec.dataset_id == dataset_id and spec.level == level
        assert (loaded.data.obs_dim, loaded.data.act_dim) == (task.obs_dim, task.act_dim)
        want = steps["medium"] + steps["expert"] if level == "medium-expert" else steps[level]
        assert loaded.data.num_steps == want
        meta = read_metadata(dataset_id)
        assert (meta["ref_min_score"], meta["ref_max_score"]) == (task.ref_min, 5000.0)
        assert (spec.ref_min, spec.ref_max) == (task.ref_min, 5000.0)
        assert dataset_id in spec.ref_source
        assert "expert policy" in meta["ref_max_source"] and "random" in meta["ref_min_source"]
        assert meta["rlmin_recipe"]["level"] == level
        # HalfCheetah never terminates; hopper and walker2d fall under random-ish actors
        _check_episodes(dataset_id, task, expect_terminations=task_name != "halfcheetah")

    recipe = read_metadata(f"rlmin/{task_name}/medium-v0")["rlmin_recipe"]
    assert recipe["policy"]["metadata"]["return_stochastic"] == pytest.approx(5000.0 / 3)
    assert recipe["seed"] == 0 and recipe["n_steps"] == 120
    replay = read_metadata(f"rlmin/{task_name}/medium-replay-v0")
    per_snapshot = replay["rlmin_recipe"]["series"]["steps_per_snapshot"]
    assert sum(per_snapshot) == 160 and per_snapshot[0] == 32  # random: 1000 of 5000 run steps
    assert "Unlike D4RL's medium-replay" in replay["description"]
    assert [s["steps"] for s in replay["rlmin_recipe"]["segments_built"]] == per_snapshot


def test_medium_replay_defaults_to_the_runs_steps(fresh_minari_path, tmp_path):
    task = get_task("walker2d")
    policies = _fake_policies(tmp_path / "policies", task)
    manifest = json.loads((policies / "walker2d-replay" / "manifest.json").read_text())
    manifest["steps"] = 300  # shrink the run (and its snapshots' steps) so the default is cheap
    for e, n in zip(manifest["snapshots"], (60, 80, 80, 80)):
        e["steps"] = n
    (policies / "walker2d-replay" / "manifest.json").write_text(json.dumps(manifest))
    builder.build_dataset("walker2d", "medium-replay", policies_dir=policies, progress=False)
    assert load_minari("rlmin/walker2d/medium-replay-v0").total_steps == 300


# ----------------------------------------------------------------------------- shipped policies

def _shipped(name):
    return SHIPPED_POLICIES_DIR / name


def test_shipped_hopper_policies_build_every_policy_level(fresh_minari_path, monkeypatch):
    monkeypatch.delenv("RLMIN_POLICIES_DIR", raising=False)
    expert_meta = load_actor(_shipped("hopper-expert.pt"))[1]
    for level in ("random", "medium", "expert", "medium-expert"):
        builder.build_dataset("hopper", level, n_steps=80, max_episode_steps=50, progress=False)
        meta = read_metadata(f"rlmin/hopper/{level}-v0")
        assert meta["ref_max_score"] == expert_meta["return_stochastic"]
        assert "hopper-expert.pt" in meta["ref_max_source"]
        _check_episodes(f"rlmin/hopper/{level}-v0", HOPPER, expect_terminations=level == "random")
    recipe = read_metadata("rlmin/hopper/medium-v0")["rlmin_recipe"]
    assert recipe["policy"]["sha256"] == builder._sha256(_shipped("hopper-medium.pt"))
    assert recipe["policy"]["metadata"]["sac_steps"] == 80_000


@pytest.mark.parametrize("task_name", ("halfcheetah", "walker2d"))
def test_shipped_policies_of_the_other_tasks(task_name, fresh_minari_path, monkeypatch):
    if not (_shipped(f"{task_name}-medium.pt").exists()
            and _shipped(f"{task_name}-expert.pt").exists()):
        pytest.skip(f"{task_name}'s policies are not shipped yet")
    monkeypatch.delenv("RLMIN_POLICIES_DIR", raising=False)
    task = get_task(task_name)
    for level in ("medium", "expert"):
        builder.build_dataset(task_name, level, n_steps=60, progress=False)
        assert _loaded(task_name, level).data.act_dim == task.act_dim
    assert read_metadata(f"rlmin/{task_name}/medium-v0")["ref_max_score"] == \
        load_actor(_shipped(f"{task_name}-expert.pt"))[1]["return_stochastic"]


@pytest.mark.parametrize("task_name", TASKS)
def test_shipped_replay_series(task_name, fresh_minari_path, monkeypatch):
    series = _shipped(f"{task_name}-replay")
    if not (series / "manifest.json").exists():
        pytest.skip(f"{task_name}'s replay series is not shipped yet")
    monkeypatch.delenv("RLMIN_POLICIES_DIR", raising=False)
    task = get_task(task_name)
    manifest = builder.load_replay_series(series, task)
    assert len(manifest["snapshots"]) <= 11  # a few snapshots, never a buffer
    assert sum(p.stat().st_size for p in series.iterdir()) < 1_000_000
    medium, meta = load_actor(_shipped(f"{task_name}-medium.pt"))
    assert manifest["medium_step"] == meta["sac_steps"]
    assert manifest["medium_policy"]["weights_sha256"] == weights_digest(medium), \
        "the series must come from the run (and step) that made the shipped medium policy"
    builder.build_dataset(task_name, "medium-replay", n_steps=100, progress=False)
    assert _loaded(task_name, "medium-replay").data.num_steps == 100


def test_shipped_policies_load_and_act_without_stable_baselines3(fresh_minari_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # `import` now raises
    with pytest.raises(ImportError):
        import stable_baselines3  # noqa: F401
    monkeypatch.delenv("RLMIN_POLICIES_DIR", raising=False)
    files = sorted(SHIPPED_POLICIES_DIR.glob("*.pt")) + sorted(SHIPPED_POLICIES_DIR.glob("*/*.pt"))
    assert _shipped("hopper-medium.pt") in files and _shipped("hopper-expert.pt") in files
    for path in files:
        actor, meta = load_actor(path)
        env = gym.make(meta["env_id"])
        obs, _ = env.reset(seed=0)
        for deterministic in (True, False):
            action = actor.act(obs, deterministic=deterministic)
            assert action.shape == env.action_space.shape and np.all(np.abs(action) <= 1)
        env.close()
    builder.build_dataset("hopper", "medium", n_steps=30, progress=False)
    assert load_minari("rlmin/hopper/medium-v0").total_steps == 30


def test_actors_from_the_running_sac_jobs_load(tmp_path):
    # envs/sac.py puts torch.__version__ (a TorchVersion, not a plain str) in the metadata; a
    # weights_only load refuses unknown classes, so such files must still load (and new ones
    # are saved with plain values).
    actor = GaussianActor(11, 3, hidden=(8,))
    payload = {"state_dict": actor.state_dict(), "obs_dim": 11, "act_dim": 3, "hidden": [8],
               "metadata": {"env_id": "Hopper-v5", "versions": {"torch": torch.__version__}}}
    torch.save(payload, tmp_path / "old.pt")
    loaded, meta = load_actor(tmp_path / "old.pt")
    assert meta["versions"]["torch"] == torch.__version__
    assert weights_digest(loaded) == weights_digest(actor)
    save_actor(loaded, tmp_path / "new.pt", meta)
    raw = torch.load(tmp_path / "new.pt", weights_only=True)  # no allowlist needed any more
    assert type(raw["metadata"]["versions"]["torch"]) is str


# ----------------------------------------------------------------------------- replay series

def test_make_replay_series_picks_snapshots_and_shares(tmp_path):
    task = get_task("walker2d")
    run = _fake_run(tmp_path / "run", task, steps=range(1000, 21000, 1000), learning_starts=2000)
    out = tmp_path / "walker2d-replay"
    manifest = builder.make_replay_series(run, 16000, out, n_snapshots=4)
    entries = manifest["snapshots"]
    assert entries[0]["file"] is None and (entries[0]["from_step"], entries[0]["to_step"]) == \
        (0, 2000)
    assert entries[0]["episodes"] == 40  # curve.jsonl's count at step 2000
    snaps = entries[1:]
    assert len(snaps) == 4 and all(2000 <= e["sac_step"] <= 16000 for e in snaps)
    # contiguous stretches covering the run up to the medium step, each holding its snapshot
    assert [e["from_step"] for e in entries[1:]] == [e["to_step"] for e in entries[:-1]]
    assert entries[-1]["to_step"] == 16000 and manifest["steps"] == 16000
    assert all(e["from_step"] <= e["sac_step"] <= e["to_step"] for e in snaps)
    assert sum(e["step_share"] for e in entries) == pytest.approx(1.0)
    assert sum(e["episode_share"] for e in entries) == pytest.approx(1.0)
    assert manifest["episodes"] == 320 and manifest["learning_starts_source"] == "actor metadata"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [e["file"] for e in snaps] + ["curve.jsonl", "manifest.json"])
    assert builder.load_replay_series(out, task) == manifest
    with pytest.raises(FileExistsError, match="overwrite"):
        builder.make_replay_series(run, 16000, out)
    with pytest.raises(FileNotFoundError, match="actor_15500.pt"):
        builder.make_replay_series(run, 15500, tmp_path / "other")
    with pytest.raises(ValueError, match="Hopper-v5"):
        builder.load_replay_series(out, HOPPER)


def test_make_replay_series_script(tmp_path, monkeypatch, capsys):
    run = _fake_run(tmp_path / "run", HOPPER, steps=(100, 200, 300, 400), learning_starts=100)
    out = tmp_path / "series"
    script = str(REPO / "scripts" / "make_replay_series.py")
    argv = [script, str(run), "--medium-step", "300", "--out", str(out), "--snapshots", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(script, run_name="__main__")
    assert info.value.code == 0 and (out / "manifest.json").exists()
    assert "actor_200.pt" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:  # exists: one line, exit 2
        runpy.run_path(script, run_name="__main__")
    assert info.value.code == 2 and "overwrite" in capsys.readouterr().err


# ----------------------------------------------------------------------------- original levels

def test_random_level(fresh_minari_path, no_shipped_policies):
    dataset_id = builder.build_dataset("hopper", "random", n_steps=120, seed=3, progress=False)
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
    a = builder.build_dataset("hopper", "medium", n_steps=60, policy_path=policy, seed=1,
                              progress=False)
    b = builder.build_dataset("hopper", "medium", n_steps=60, policy_path=policy, seed=1,
                              dataset_id="rlmin/hopper/medium-again-v0", progress=False)
    da, db = from_minari(a), from_minari(b)
    assert da.num_steps == 60
    np.testing.assert_array_equal(da.actions, db.actions)
    np.testing.assert_array_equal(da.observations, db.observations)
    meta = read_metadata(a)
    assert "medium.pt" in meta["description"] and "sac_steps" in meta["description"]
    # no expert policy anywhere: ref_max falls back to the task table, and says so
    assert meta["ref_max_score"] == HOPPER.ref_max and "task table" in meta["description"]
    assert meta["rlmin_recipe"]["policy"]["sha256"] == builder._sha256(policy)
    last = da.offsets[1:] - 1
    assert (da.terminations[last] | da.truncations[last]).all()
    assert np.abs(da.actions).max() <= 1.0


def test_medium_expert_combines_and_keeps_refs(fresh_minari_path, no_shipped_policies, tmp_path):
    medium = _actor(tmp_path / "m.pt", seed=0, return_stochastic=300.0)
    expert = _actor(tmp_path / "e.pt", seed=1, return_stochastic=900.0)
    builder.build_dataset("hopper", "medium", n_steps=70, policy_path=medium, ref_max=900.0,
                          progress=False)
    builder.build_dataset("hopper", "expert", n_steps=50, policy_path=expert, progress=False)
    assert read_metadata("rlmin/hopper/expert-v0")["ref_max_score"] == 900.0  # the expert's return
    dataset_id = builder.build_dataset("hopper", "medium-expert")
    ds = load_minari(dataset_id)
    meta = ds.storage.metadata
    assert ds.total_steps == 70 + 50
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (HOPPER.ref_min, 900.0)
    assert meta["combined_datasets"] == ["rlmin/hopper/medium-v0", "rlmin/hopper/expert-v0"]
    assert set(meta["rlmin_recipe"]["parts"]) == set(meta["combined_datasets"])
    rows = {r["id"]: r for r in list_local()}
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
    assert meta["rlmin_recipe"]["source"] == "SB3 replay buffer"


def test_replay_wrapped_buffer_drops_the_overwritten_episode(tmp_path):
    pytest.importorskip("stable_baselines3")
    episodes = _sb3_replay(tmp_path / "run", n_transitions=90, buffer_size=50, seed=4, limit=15)
    got = builder.replay_episodes(tmp_path / "run" / "replay.pkl")
    assert sum(len(ep["rewards"]) for ep in got) <= 50 and len(got) < len(episodes)
    for mine, theirs in zip(reversed(got), reversed(episodes)):
        np.testing.assert_allclose(mine["rewards"], np.array(theirs["rew"], np.float32), rtol=1e-6)
        assert len(mine["observations"]) == len(theirs["obs"])


def test_built_dataset_feeds_the_sampler(fresh_minari_path, no_shipped_policies, tmp_path):
    policy = _actor(tmp_path / "p.pt", return_stochastic=500.0)
    data = from_minari(builder.build_dataset("hopper", "expert", n_steps=40, policy_path=policy,
                                             progress=False))
    batch = SegmentSampler(data, seq_len=20, batch_size=8, seed=0).sample()
    assert batch["observations"].shape == (8, 20, 11) and batch["mask"][:, 0].all()


# ----------------------------------------------------------------------------- messages

def test_missing_sources_name_the_real_flags(fresh_minari_path, no_shipped_policies, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        builder.build_dataset("walker2d", "medium", n_steps=10)
    msg = str(info.value)
    assert "no behaviour policy" in msg
    assert "`rlmin data build walker2d medium --policy PATH`" in msg
    assert "--policies-dir" in msg
    with pytest.raises(FileNotFoundError) as info:
        builder.build_dataset("halfcheetah", "medium-replay", n_steps=10)
    msg = str(info.value)
    assert "--sac-run RUN_DIR" in msg and "scripts/make_replay_series.py" in msg
    assert "--sac-run-dir" not in msg and "sac_run_dir=" not in msg
    with pytest.raises(FileNotFoundError, match="replay.pkl"):
        builder.build_dataset("hopper", "medium-replay", sac_run_dir=tmp_path)
    with pytest.raises(ValueError, match="--policy"):
        builder.build_dataset("hopper", "random", policy_path=tmp_path / "x.pt")


def test_bad_requests_are_clear_errors(fresh_minari_path, no_shipped_policies, tmp_path):
    with pytest.raises(ValueError, match="-vN"):
        builder.build_dataset("hopper", "random", n_steps=10, dataset_id="rlmin/hopper/random")
    with pytest.raises(ValueError, match="unknown level"):
        builder.build_dataset("hopper", "mediocre")
    with pytest.raises(KeyError, match="unknown task"):
        builder.build_dataset("hoppper", "random")
    wrong = _actor(tmp_path / "cheetah.pt", obs_dim=17, act_dim=6)
    with pytest.raises(ValueError, match=r"\(17,\).*\(11,\)"):
        builder.build_dataset("hopper", "expert", n_steps=10, policy_path=wrong)
    assert not any(fresh_minari_path.rglob("metadata.json"))


def test_cli_build_names_the_references_and_list_shows_status(fresh_minari_path, capsys,
                                                              monkeypatch):
    monkeypatch.delenv("RLMIN_POLICIES_DIR", raising=False)
    assert cli.main(["data", "build", "hopper", "random", "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "built rlmin/hopper/random-v0" in out and "40 steps" in out and " ± " in out
    assert "ref_min 24.80 (task table" in out, out
    assert "ref_max 2867.00 (expert policy hopper-expert.pt" in out, out
    assert cli.main(["data", "list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "rlmin/hopper/random-v0" in line)
    assert "| complete | 40 |" in row and "| 24.8 | 2867.0 |" in row, row
    assert "each row with its own ref_min/ref_max" in out


def test_cli_errors_are_one_line(fresh_minari_path, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(["data", "build", "walker2d", "medium", "--policies-dir", str(empty)], 1, "--policy"),
             (["data", "build", "hopper", "random", "--steps", "-5"], 2, "--steps"),
             (["data", "build", "ant", "random"], 2, "unknown task")]
    for argv, code, words in cases:
        assert cli.main(argv) == code, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
    assert cli.main(["data", "build", "hopper", "random", "--steps", "20"]) == 0
    capsys.readouterr()
    assert cli.main(["data", "build", "hopper", "random", "--steps", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err, err


# ----------------------------------------------------------------------------- all or nothing

def _no_builds_left(root):
    return not [p for p in root.iterdir() if p.name.startswith((BUILD_PREFIX, "tmp"))]


def _fail_once(monkeypatch, owner, name, at_call=1):
    """Make ``owner.name`` raise on its ``at_call``-th call only (a build dying midway)."""
    count = {"n": 0}
    original = getattr(owner, name)

    def failing(*args, **kwargs):
        count["n"] += 1
        if count["n"] == at_call:
            raise OSError(28, "No space left on device (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)


def test_failed_build_leaves_nothing_that_loads(fresh_minari_path, no_shipped_policies,
                                                monkeypatch, tmp_path):
    import minari

    policy = _actor(tmp_path / "p.pt")
    _fail_once(monkeypatch, GaussianActor, "act", at_call=25)
    with pytest.raises(OSError, match="simulated"):
        builder.build_dataset("hopper", "medium", n_steps=50, policy_path=policy, progress=False)
    assert dataset_status("rlmin/hopper/medium-v0") == "missing"
    with pytest.raises(DatasetNotFoundError):
        load_minari("rlmin/hopper/medium-v0")
    assert _no_builds_left(fresh_minari_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a partial folder would make this warn
        assert minari.list_local_datasets() == {}


@pytest.mark.parametrize("where", ["collecting", "metadata"])
def test_failed_overwrite_keeps_the_old_dataset(where, fresh_minari_path, no_shipped_policies,
                                                monkeypatch, tmp_path):
    policy = _actor(tmp_path / "p.pt")
    builder.build_dataset("hopper", "expert", n_steps=30, policy_path=policy, progress=False)
    before = read_metadata("rlmin/hopper/expert-v0")
    if where == "collecting":
        _fail_once(monkeypatch, GaussianActor, "act", at_call=10)
    else:  # after Minari wrote everything, while rlmin adds its keys
        _fail_once(monkeypatch, builder, "write_metadata")
    with pytest.raises(OSError, match="simulated"):
        builder.build_dataset("hopper", "expert", n_steps=60, policy_path=policy,
                              overwrite=True, progress=False)
    assert load_minari("rlmin/hopper/expert-v0").total_steps == 30
    assert read_metadata("rlmin/hopper/expert-v0") == before
    assert _no_builds_left(fresh_minari_path)
    builder.build_dataset("hopper", "expert", n_steps=60, policy_path=policy, overwrite=True,
                          progress=False)
    assert load_minari("rlmin/hopper/expert-v0").total_steps == 60


_KILLED_BUILD = """
import envs.builder as b
b.build_dataset("hopper", "random", n_steps=10**8, overwrite=True, progress=False)
"""


def test_killed_overwrite_keeps_the_old_and_the_next_build_cleans_up(fresh_minari_path,
                                                                     no_shipped_policies, capsys):
    builder.build_dataset("hopper", "random", n_steps=30, progress=False)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    build = _build_dir(fresh_minari_path, "rlmin/hopper/random-v0")
    try:
        deadline = time.time() + 60
        while not list(build.glob("tmp*")) and time.time() < deadline:  # collecting
            assert proc.poll() is None, "the build should still be running"
            time.sleep(0.1)
        statuses = [(r["id"], r["status"]) for r in list_local()]
        assert ("rlmin/hopper/random-v0", "complete") in statuses  # the old one, still there
        assert ("rlmin/hopper/random-v0", "building") in statuses
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert load_minari("rlmin/hopper/random-v0").total_steps == 30  # the old one, untouched
    assert cli.main(["data", "list"]) == 0
    assert "interrupted build" in capsys.readouterr().out
    builder.build_dataset("hopper", "random", n_steps=20, dataset_id="rlmin/hopper/other-v0",
                          progress=False)
    assert not build.exists() and _no_builds_left(fresh_minari_path)


def test_a_kill_between_the_two_renames_is_undone(fresh_minari_path, no_shipped_policies):
    builder.build_dataset("hopper", "random", n_steps=30, progress=False)
    build = _build_dir(fresh_minari_path, "rlmin/hopper/random-v0")
    build.mkdir()
    (fresh_minari_path / "rlmin/hopper/random-v0").rename(build / "replaced")  # state after #1
    assert dataset_status("rlmin/hopper/random-v0") == "missing"
    assert clean_stale_builds() == [build]
    assert load_minari("rlmin/hopper/random-v0").total_steps == 30


def test_an_incomplete_dataset_is_shown_refused_and_replaced(fresh_minari_path,
                                                             no_shipped_policies, capsys):
    builder.build_dataset("hopper", "random", n_steps=30, progress=False)
    (fresh_minari_path / "rlmin/hopper/random-v0/data/metadata.json").write_text("")  # 0 bytes
    assert not is_local("rlmin/hopper/random-v0")
    with pytest.raises(IncompleteDatasetError, match="rlmin data build hopper random"):
        load_minari("rlmin/hopper/random-v0")
    assert cli.main(["data", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "random-v0" in line)
    assert "incomplete: unreadable metadata.json" in row
    with pytest.warns(UserWarning, match="incomplete"):
        builder.build_dataset("hopper", "random", n_steps=25, progress=False)  # no --overwrite
    assert load_minari("rlmin/hopper/random-v0").total_steps == 25


def test_stale_minari_caches_are_removed_and_live_builds_locked(fresh_minari_path,
                                                                no_shipped_policies):
    old, fresh = fresh_minari_path / "tmpold", fresh_minari_path / "tmpfresh"
    for cache in (old, fresh):  # what a killed DataCollector leaves in the root
        cache.mkdir()
        (cache / "metadata.json").write_text("{}")
        (cache / "main_data.hdf5").write_bytes(b"")
    for f in old.iterdir():
        os.utime(f, (time.time() - 7200, time.time() - 7200))
    with _lock(_build_dir(fresh_minari_path, "rlmin/hopper/random-v0")):  # someone else's build
        with pytest.raises(BuildLockedError, match="another process"):
            builder.build_dataset("hopper", "random", n_steps=10, progress=False)
    builder.build_dataset("hopper", "random", n_steps=10, progress=False)
    assert not old.exists() and fresh.exists()
