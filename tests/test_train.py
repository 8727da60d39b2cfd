"""The trainer end to end on tiny real data: a normal run, and the dataset problems a user meets.

Every run here is tiny (d_model 16, one layer, a few dozen steps, one evaluation episode of at
most ``EVAL_STEPS`` steps), so the whole file takes seconds of compute.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rlmin.checkpoint import list_checkpoints, load_checkpoint
from rlmin.config import ConfigError, load_config
from rlmin.data.episodes import DataError
from rlmin.data.minari_io import DatasetNotFoundError
from rlmin.policy import agent_from_checkpoint
from rlmin.train import TrainingError, train

EVAL_STEPS = 15
HOPPER_OBS, HOPPER_ACT = 11, 3


def tiny(run_dir, dataset: str, *extra: str):
    """A validated config for a seconds-long run on ``dataset``, writing to ``run_dir``."""
    return load_config([], [
        f"data.dataset={dataset}", "data.seq_len=10",
        "agent.d_model=16", "agent.n_layers=1", "agent.dropout=0.0",
        "train.steps=12", "train.batch_size=8", "train.warmup_steps=2", "train.lr=1e-3",
        "train.log_every=1", "train.checkpoint_every=5", "train.num_threads=1",
        "train.progress=false", "train.device=cpu",
        "eval.episodes=1", "eval.target_returns=[100]", f"eval.max_episode_steps={EVAL_STEPS}",
        f"run_dir={run_dir}", *extra])


@pytest.fixture(autouse=True)
def _restore_threads():
    """train.num_threads=1 sets torch's global thread count: give other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def hopper_episodes(lengths, seed=0):
    """Hand-made episodes with Hopper-v5's shapes (obs 11, act 3), actions in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return [{"observations": rng.normal(size=(T + 1, HOPPER_OBS)).astype(np.float32),
             "actions": rng.uniform(-1, 1, size=(T, HOPPER_ACT)).astype(np.float32),
             "rewards": rng.uniform(0, 1, size=T)} for T in lengths]


# ----------------------------------------------------------------------------- a normal run

def test_tiny_run_writes_checkpoints_tensorboard_and_results(tmp_path, tiny_hopper_id):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = train(tiny(run, tiny_hopper_id))

    assert result.step == 12 and result.run_dir == run
    steps = [int(p.stem.split("_")[1]) for p in list_checkpoints(run)]
    assert steps == [5, 10, 12], f"checkpoints at every 5 steps and the last; got {steps}"
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 12 and results["backbone"] == "mingru"
    last = results["last_iterate"]
    assert last["max_episode_steps"] == EVAL_STEPS, "eval.max_episode_steps was not used"
    target = last["targets"]["100"]
    assert target["episodes"] == 1 and 1 <= target["lengths"][0] <= EVAL_STEPS
    # The tiny set's own reference scores (its metadata) normalise, not the task table's.
    assert results["dataset"]["ref_min"] == 1.0 and results["dataset"]["ref_max"] == 101.0

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    logged = [e.step for e in acc.Scalars("train/loss")]
    assert logged == list(range(1, 13)), (
        f"train/loss must be logged once per step (log_every=1); got steps {logged}. A duplicate "
        "means a metric named 'loss' was written to the same tag twice.")
    assert all(math.isfinite(e.value) for e in acc.Scalars("train/loss"))


def test_unknown_backbone_fails_before_any_dataset_work(tmp_path):
    # The dataset does not exist and may not be built: were the backbone checked only when the
    # agent is built, this would be a dataset error instead.
    with pytest.raises(ConfigError, match=r"agent\.backbone.*'mamba'.*mingru"):
        cfg = tiny(tmp_path / "run", "rlmin/hopper/nothere-v0", "agent.backbone=mamba",
                   "data.build_if_missing=false")
        train(cfg)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- missing data

def test_missing_dataset_offline_names_the_build_command(tmp_path, fresh_minari_path):
    cfg = tiny(tmp_path / "run", "hopper-medium", "data.build_if_missing=false")
    with pytest.raises(DatasetNotFoundError) as info:
        train(cfg)
    msg = str(info.value)
    assert "rlmin data build hopper medium" in msg, f"the error should say how to build it: {msg}"
    assert str(fresh_minari_path) in msg, f"the error should say where it looked: {msg}"
    assert not (tmp_path / "run").exists(), "nothing should be written before the data is there"


def test_missing_dataset_without_a_shipped_policy_fails_fast(tmp_path, fresh_minari_path,
                                                              monkeypatch):
    # build_if_missing=true, but no behaviour policy to build from: the build must fail at once
    # (no 100k-step collection), leave no half-made dataset, and still name the command.
    import envs.builder

    monkeypatch.setattr(envs.builder, "shipped_policy_path",
                        lambda env, level: tmp_path / f"no-such-{env}-{level}.pt")
    with pytest.raises(DatasetNotFoundError) as info:
        train(tiny(tmp_path / "run", "hopper-medium"))
    msg = str(info.value)
    assert "rlmin data build hopper medium" in msg and "automatic build failed" in msg, msg
    assert "no behaviour policy" in msg, msg
    assert not (fresh_minari_path / "rlmin" / "hopper" / "medium-v0").exists(), \
        "a failed build must not leave a partial dataset folder"


# ----------------------------------------------------------------------------- bad data

def test_episodes_shorter_than_k_are_padded_and_train(tmp_path, fresh_minari_path,
                                                      make_dataset):
    dataset = make_dataset("test/hopper/short-v0", hopper_episodes([3, 4, 5, 2]))
    result = train(tiny(tmp_path / "run", dataset, "data.seq_len=10"))  # K = 10 > every episode
    assert result.step == 12
    payload = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert payload["dataset"]["steps"] == 14 and payload["dataset"]["episodes"] == 4
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())


def test_empty_dataset_is_refused(tmp_path, fresh_minari_path, make_dataset):
    import gymnasium as gym

    box = lambda n: gym.spaces.Box(-np.inf, np.inf, (n,), np.float32)  # noqa: E731
    dataset = make_dataset("test/hopper/empty-v0", [], observation_space=box(HOPPER_OBS),
                           action_space=box(HOPPER_ACT))
    with pytest.raises(DataError, match=r"empty.*nothing to train on"):
        train(tiny(tmp_path / "run", dataset))


@pytest.mark.parametrize("field", ["observations", "rewards"])
def test_nan_in_the_data_names_the_episode(tmp_path, fresh_minari_path, make_dataset, field):
    episodes = hopper_episodes([6, 7, 8])
    episodes[1][field][(2, 4) if field == "observations" else 2] = np.nan  # episode 1, step 2
    dataset = make_dataset(f"test/hopper/nan-{field}-v0", episodes)
    with pytest.raises(DataError) as info:
        train(tiny(tmp_path / "run", dataset))
    msg = str(info.value)
    assert "episode 1" in msg and field in msg and "NaN" in msg and "step 2" in msg, msg


def test_obs_shape_that_disagrees_with_the_env_is_refused(tmp_path, fresh_minari_path,
                                                          make_dataset):
    rng = np.random.default_rng(0)
    episodes = [{"observations": rng.normal(size=(6, 5)).astype(np.float32),
                 "actions": rng.uniform(-1, 1, size=(5, HOPPER_ACT)).astype(np.float32),
                 "rewards": np.ones(5)}]
    dataset = make_dataset("test/hopper/narrow-v0", episodes)  # "hopper" namespace -> Hopper-v5
    with pytest.raises(DataError) as info:
        train(tiny(tmp_path / "run", dataset))
    msg = str(info.value)
    assert "(5,)" in msg and "(11,)" in msg and "Hopper-v5" in msg, msg


# ----------------------------------------------------------------------------- NaN loss

def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_hopper_id,
                                                                   monkeypatch):
    from agents.decision import DecisionAgent

    real_loss, calls = DecisionAgent.loss, []

    def loss_going_nan(self, batch):  # a loss that diverges at the 13th step
        calls.append(1)
        value, metrics = real_loss(self, batch)
        return (value * math.nan if len(calls) >= 13 else value), metrics

    monkeypatch.setattr(DecisionAgent, "loss", loss_going_nan)
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        train(tiny(run, tiny_hopper_id, "train.steps=30"))
    msg = str(info.value)
    assert "non-finite loss" in msg and "step 13" in msg, msg
    assert "step_00000010.pt" in msg and "--resume" in msg, \
        f"the error should name the checkpoint that was kept and how to resume: {msg}"

    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["step_00000005.pt", "step_00000010.pt"]
    payload = load_checkpoint(ckpts[-1])
    assert payload["step"] == 10
    agent = agent_from_checkpoint(payload)
    assert all(torch.isfinite(p).all() for p in agent.parameters())
    assert not (run / "results.json").exists()


# ----------------------------------------------------------------------------- backbones by config

@pytest.mark.parametrize("overrides", [
    ["agent.backbone=minlstm"], ["agent.backbone=transformer"], ["agent.backbone=gru"],
    ["agent.backbone=lstm"], ["agent.name=bc"], ["agent.token_layout=stacked"],
    ["agent.backbone=minlstm", "eval.mode=window"],
])
def test_one_override_swaps_the_agent(tmp_path, tiny_hopper_id, overrides):
    run = tmp_path / "run"
    result = train(tiny(run, tiny_hopper_id, "train.steps=3", *overrides))
    res = json.loads((run / "results.json").read_text())
    assert result.step == 3 and res["last_iterate"]["targets"]["100"]["episodes"] == 1
    expected = {"agent.name=bc": "mlp", "agent.backbone=minlstm": "minlstm",
                "agent.backbone=transformer": "transformer", "agent.backbone=gru": "gru",
                "agent.backbone=lstm": "lstm"}.get(overrides[0], "mingru")
    assert res["backbone"] == expected
    if "agent.backbone=transformer" in overrides:
        assert res["act_mode"] == "window"  # the transformer re-runs its window
    elif "eval.mode=window" in overrides:
        assert res["act_mode"] == "window"


def test_whole_episode_training(tmp_path, tiny_hopper_id, tiny_hopper_data):
    """data.mode=episode: rows are whole episodes from their first step (what carry acting sees)."""
    longest = int(tiny_hopper_data.episode_lengths.max())
    run = tmp_path / "run"
    result = train(tiny(run, tiny_hopper_id, "data.mode=episode", f"data.seq_len={longest}",
                        "train.steps=3"))
    res = json.loads((run / "results.json").read_text())
    assert result.step == 3 and res["act_mode"] == "carry"
    assert res["config"]["data"]["mode"] == "episode"
