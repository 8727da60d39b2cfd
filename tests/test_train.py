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
from conftest import TINY_EVAL_STEPS as EVAL_STEPS

from rlmin.checkpoint import list_checkpoints, load_checkpoint
from rlmin.config import ConfigError
from rlmin.data.episodes import DataError
from rlmin.data.minari_io import DatasetNotFoundError
from rlmin.policy import agent_from_payload
from rlmin.rundir import RunDirError
from rlmin.train import TrainingError, build_optimizer, train

HOPPER_OBS, HOPPER_ACT = 11, 3


def metrics_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def hopper_episodes(lengths, seed=0):
    """Hand-made episodes with Hopper-v5's shapes (obs 11, act 3), actions in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return [{"observations": rng.normal(size=(T + 1, HOPPER_OBS)).astype(np.float32),
             "actions": rng.uniform(-1, 1, size=(T, HOPPER_ACT)).astype(np.float32),
             "rewards": rng.uniform(0, 1, size=T)} for T in lengths]


# ----------------------------------------------------------------------------- a normal run

def test_tiny_run_writes_checkpoints_tensorboard_and_results(tmp_path, tiny_config, tiny_hopper_id,
                                                             monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)  # a run writes nothing outside its run dir (MUJOCO_LOG.TXT)
    run = tmp_path / "run"
    result = train(tiny_config(run))

    assert result.step == 12 and result.run_dir == run
    steps = [int(p.stem.split("_")[1]) for p in list_checkpoints(run)]
    assert steps == [5, 10, 12], f"checkpoints at every 5 steps and the last; got {steps}"
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 12 and results["agent"] == "decision"
    assert results["label"] == "mingru" and results["act_mode"] == "carry"
    last = results["last_iterate"]
    assert last["max_episode_steps"] == EVAL_STEPS, "eval.max_episode_steps was not used"
    assert last["agent"] == {"label": "mingru", "act_mode": "carry"}
    assert last["dataset_id"] == tiny_hopper_id
    target = last["targets"]["100"]
    assert target["episodes"] == 1 and 1 <= target["lengths"][0] <= EVAL_STEPS
    # The tiny set's own reference scores (its metadata) normalise, not the task table's.
    spec = results["eval_spec"]
    assert spec["ref_min"] == 1.0 and spec["ref_max"] == 101.0
    assert spec["ref_source"].startswith("dataset metadata") and last["ref_source"] == spec["ref_source"]
    assert (spec["env_id"], spec["obs_dim"], spec["act_dim"], spec["dataset_id"]) == \
        ("Hopper-v5", HOPPER_OBS, HOPPER_ACT, tiny_hopper_id)
    assert results["dataset"]["id"] == tiny_hopper_id and len(results["dataset"]["fingerprint"]) == 16

    # The checkpoint holds the agent once (name, options, spec) and the eval spec once.
    payload = load_checkpoint(list_checkpoints(run)[-1])
    assert set(payload) == {"step", "model", "optimizer", "scheduler", "rng_per_rank", "sampler",
                            "config", "agent", "eval_spec", "dataset", "eval_history",
                            "timesteps_seen", "commands"}
    assert payload["agent"]["name"] == "decision"
    assert payload["agent"]["options"]["d_model"] == 16
    assert payload["agent"]["spec"]["seq_len"] == 10  # K: data.seq_len, through the spec
    assert "context_steps" not in payload["agent"]["options"]
    assert payload["eval_spec"] == spec
    assert set(payload["dataset"]) == {"id", "steps", "episodes", "behaviour_return",
                                       "behaviour_normalized", "fingerprint"}
    assert payload["dataset"] == results["dataset"]

    # metrics.jsonl: one row per logged step (log_every=1) and one per evaluation.
    rows = metrics_rows(run)
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 13))
    assert all(math.isfinite(r["loss"]) and {"lr", "grad_norm", "samples_per_s"} <= set(r)
               for r in rows if r["kind"] == "train")
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [12] and \
        evals[0]["targets"]["100"]["return_mean"] == pytest.approx(target["return_mean"])
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists(), "the run wrote MUJOCO_LOG.TXT into the cwd"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "files outside the run dir"

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    logged = [e.step for e in acc.Scalars("train/loss")]
    assert logged == list(range(1, 13)), (
        f"train/loss must be logged once per step (log_every=1); got steps {logged}. A duplicate "
        "means a metric named 'loss' was written to the same tag twice.")
    assert all(math.isfinite(e.value) for e in acc.Scalars("train/loss"))


def test_unknown_backbone_fails_before_any_dataset_work(tmp_path, tiny_config):
    # The dataset does not exist and may not be built: were the backbone checked only when the
    # agent is built, this would be a dataset error instead.
    with pytest.raises(ConfigError, match=r"agent\.backbone.*'mamba'.*mingru"):
        cfg = tiny_config(tmp_path / "run", "agent.backbone=mamba", "data.build_if_missing=false",
                          dataset="rlmin/hopper/nothere-v0")
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, needle", [
    (["agent.context_steps=20"], "agent.context_steps"),  # K is data.seq_len now
    (["agent.name=bc", "agent.d_model=16"], "agent.d_model"),  # a decision option, not bc's
    (["agent.backbone_options.bogus=1"], "bogus"),
    (["agent.name=bc", "agent.hidden=[0]"], "hidden"),
])
def test_agent_options_are_the_agents_own(tmp_path, tiny_config, overrides, needle):
    """agent.* is typed and checked by the agent's Options, before any dataset work."""
    with pytest.raises(ConfigError, match=needle):
        tiny_config(tmp_path / "run", "data.build_if_missing=false", *overrides,
                    dataset="rlmin/hopper/nothere-v0")


def test_weight_decay_scope(tiny_config):
    from agents.decision import DecisionAgent
    from rlmin.config import agent_options
    from rlmin.spec import DataSpec

    cfg = tiny_config(None)
    agent = DecisionAgent(DataSpec(HOPPER_OBS, HOPPER_ACT, seq_len=4, max_episode_steps=8),
                          agent_options(cfg))
    params = [p for p in agent.parameters() if p.requires_grad]
    decay, no_decay = build_optimizer(agent, cfg.train).param_groups
    spared = {id(p) for p in no_decay["params"]}
    assert decay["weight_decay"] == cfg.train.weight_decay and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(params)
    assert id(agent.embed_timestep.weight) in spared and id(agent.embed_ln.weight) in spared
    assert id(agent.embed_state.bias) in spared and id(agent.embed_state.weight) not in spared
    everything = build_optimizer(agent, tiny_config(None, "train.weight_decay_scope=all").train)
    (group,) = everything.param_groups  # DT's gym code: every parameter decays
    assert len(group["params"]) == len(params) and group["weight_decay"] == cfg.train.weight_decay
    with pytest.raises(ConfigError, match="weight_decay_scope"):
        tiny_config(None, "train.weight_decay_scope=some")


# ----------------------------------------------------------------------------- missing data

def test_missing_dataset_offline_names_the_build_command(tmp_path, fresh_minari_path, tiny_config):
    cfg = tiny_config(tmp_path / "run", "data.build_if_missing=false", dataset="hopper-medium")
    with pytest.raises(DatasetNotFoundError) as info:
        train(cfg)
    msg = str(info.value)
    assert "rlmin data build hopper medium" in msg, f"the error should say how to build it: {msg}"
    assert str(fresh_minari_path) in msg, f"the error should say where it looked: {msg}"
    assert not (tmp_path / "run" / "config.yaml").exists() and not list_checkpoints(tmp_path / "run"), \
        "nothing should be written before the data is there"


def test_missing_dataset_without_a_shipped_policy_fails_fast(tmp_path, fresh_minari_path,
                                                              monkeypatch, tiny_config):
    # build_if_missing=true, but no behaviour policy to build from: the build must fail at once
    # (no 100k-step collection), leave no half-made dataset, and still name the command.
    import envs.builder

    monkeypatch.setattr(envs.builder, "shipped_policy_path",
                        lambda env, level: tmp_path / f"no-such-{env}-{level}.pt")
    with pytest.raises(DatasetNotFoundError) as info:
        train(tiny_config(tmp_path / "run", dataset="hopper-medium"))
    msg = str(info.value)
    assert "rlmin data build hopper medium" in msg and "automatic build failed" in msg, msg
    assert "no behaviour policy" in msg, msg
    assert not (fresh_minari_path / "rlmin" / "hopper" / "medium-v0").exists(), \
        "a failed build must not leave a partial dataset folder"


# ----------------------------------------------------------------------------- bad data

def test_episodes_shorter_than_k_are_padded_and_train(tmp_path, fresh_minari_path,
                                                      make_dataset, tiny_config):
    dataset = make_dataset("test/hopper/short-v0", hopper_episodes([3, 4, 5, 2]))
    result = train(tiny_config(tmp_path / "run", "data.seq_len=10", dataset=dataset))  # K = 10 > every episode
    assert result.step == 12
    payload = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert payload["dataset"]["steps"] == 14 and payload["dataset"]["episodes"] == 4
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())


def test_empty_dataset_is_refused(tmp_path, fresh_minari_path, make_dataset, tiny_config):
    import gymnasium as gym

    box = lambda n: gym.spaces.Box(-np.inf, np.inf, (n,), np.float32)  # noqa: E731
    dataset = make_dataset("test/hopper/empty-v0", [], observation_space=box(HOPPER_OBS),
                           action_space=box(HOPPER_ACT))
    with pytest.raises(DataError, match=r"empty.*nothing to train on"):
        train(tiny_config(tmp_path / "run", dataset=dataset))


@pytest.mark.parametrize("field", ["observations", "rewards"])
def test_nan_in_the_data_names_the_episode(tmp_path, fresh_minari_path, make_dataset, field,
                                          tiny_config):
    episodes = hopper_episodes([6, 7, 8])
    episodes[1][field][(2, 4) if field == "observations" else 2] = np.nan  # episode 1, step 2
    dataset = make_dataset(f"test/hopper/nan-{field}-v0", episodes)
    with pytest.raises(DataError) as info:
        train(tiny_config(tmp_path / "run", dataset=dataset))
    msg = str(info.value)
    assert "episode 1" in msg and field in msg and "NaN" in msg and "step 2" in msg, msg


def test_obs_shape_that_disagrees_with_the_env_is_refused(tmp_path, fresh_minari_path,
                                                          make_dataset, tiny_config):
    rng = np.random.default_rng(0)
    episodes = [{"observations": rng.normal(size=(6, 5)).astype(np.float32),
                 "actions": rng.uniform(-1, 1, size=(5, HOPPER_ACT)).astype(np.float32),
                 "rewards": np.ones(5)}]
    dataset = make_dataset("test/hopper/narrow-v0", episodes)  # "hopper" namespace -> Hopper-v5
    with pytest.raises(DataError) as info:
        train(tiny_config(tmp_path / "run", dataset=dataset))
    msg = str(info.value)
    assert "(5,)" in msg and "(11,)" in msg and "Hopper-v5" in msg, msg


# ----------------------------------------------------------------------------- NaN loss

def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_config,
                                                                   monkeypatch):
    from agents.decision import DecisionAgent

    real_loss, calls = DecisionAgent.loss, []

    def loss_going_nan(self, batch):  # a loss that diverges at the 13th step
        if len(batch["mask"]) == 8:  # a training batch, not the memory probe's (rlmin.train)
            calls.append(1)
        value, metrics = real_loss(self, batch)
        return (value * math.nan if len(calls) >= 13 else value), metrics

    monkeypatch.setattr(DecisionAgent, "loss", loss_going_nan)
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        train(tiny_config(run, "train.steps=30"))
    msg = str(info.value)
    assert "non-finite loss" in msg and "step 13" in msg, msg
    assert "step_00000010.pt" in msg and "--resume" in msg, \
        f"the error should name the checkpoint that was kept and how to resume: {msg}"

    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["step_00000005.pt", "step_00000010.pt"]
    payload = load_checkpoint(ckpts[-1])
    assert payload["step"] == 10
    agent = agent_from_payload(payload)
    assert all(torch.isfinite(p).all() for p in agent.parameters())
    assert not (run / "results.json").exists()


# ----------------------------------------------------------------------------- backbones by config

@pytest.mark.parametrize("overrides", [
    ["agent.backbone=minlstm"], ["agent.backbone=transformer"], ["agent.backbone=gru"],
    ["agent.backbone=lstm"], ["agent.name=bc"], ["agent.token_layout=stacked"],
    ["agent.backbone=minlstm", "eval.mode=window"],
])
def test_one_override_swaps_the_agent(tmp_path, tiny_config, overrides):
    run = tmp_path / "run"
    result = train(tiny_config(run, "train.steps=3", *overrides))
    res = json.loads((run / "results.json").read_text())
    assert result.step == 3 and res["last_iterate"]["targets"]["100"]["episodes"] == 1
    expected = {"agent.name=bc": "bc", "agent.backbone=minlstm": "minlstm",
                "agent.backbone=transformer": "transformer", "agent.backbone=gru": "gru",
                "agent.backbone=lstm": "lstm", "agent.token_layout=stacked": "mingru stacked",
                }.get(overrides[0], "mingru")
    if "eval.mode=window" in overrides:
        expected += " (window)"  # evaluated outside its default mode: the label says so
    assert res["label"] == expected
    assert res["agent"] == ("bc" if "agent.name=bc" in overrides else "decision")
    if "agent.name=bc" in overrides:
        assert res["act_mode"] is None  # one way to act
    elif "agent.backbone=transformer" in overrides:
        assert res["act_mode"] == "window"  # the transformer re-runs its window
    elif "eval.mode=window" in overrides:
        assert res["act_mode"] == "window"
        # evaluated in window mode, but the agent itself (and its checkpoint) keeps carry
        payload = load_checkpoint(list_checkpoints(run)[-1])
        assert payload["agent"]["options"]["act_mode"] == "carry"
    else:
        assert res["act_mode"] == "carry"


def test_whole_episode_training(tmp_path, tiny_config, tiny_hopper_data):
    """data.mode=episode: rows are whole episodes from their first step (what carry acting sees)."""
    longest = int(tiny_hopper_data.episode_lengths.max())
    run = tmp_path / "run"
    result = train(tiny_config(run, "data.mode=episode", f"data.seq_len={longest}",
                               "train.steps=3"))
    res = json.loads((run / "results.json").read_text())
    assert result.step == 3 and res["act_mode"] == "carry"
    assert res["config"]["data"]["mode"] == "episode"


# ----------------------------------------------------------------------------- run integrity

def test_a_run_dir_that_holds_a_run_is_refused_before_any_work(tmp_path, tiny_config):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: earlier\n")
    # The dataset does not exist and may not be built: the refusal comes first.
    cfg = tiny_config(run, "data.build_if_missing=false", dataset="rlmin/hopper/nothere-v0")
    # It saved no checkpoint: resuming could not work, so the refusal says what does.
    with pytest.raises(RunDirError, match=rf"{run}.*already holds a run.*nothing to resume.*rm -r {run}"):
        train(cfg)
    assert (run / "config.yaml").read_text() == "name: earlier\n"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_resume_extends_a_finished_run_and_accepts_only_safe_keys(tmp_path, tiny_config):
    run = tmp_path / "run"
    assert train(tiny_config(run, "train.steps=5")).step == 5
    with pytest.raises(RunDirError, match="--resume"):  # finished: refused as a new run ...
        train(tiny_config(run, "train.steps=5"))
    with pytest.raises(ConfigError, match=r"'agent\.d_model=32'.*model or data"):
        train(resume=run, overrides=["agent.d_model=32"])  # ... and resume changes no model
    with pytest.raises(RunDirError, match="no such run dir"):
        train(resume=tmp_path / "elsewhere")

    result = train(resume=run, overrides=["train.steps=8"])  # ... but it may run longer
    assert result.step == 8 and result.results["step"] == 8
    assert [p.name for p in list_checkpoints(run)][-1] == "step_00000008.pt"
    train_rows = [r["step"] for r in metrics_rows(run) if r["kind"] == "train"]
    assert train_rows == list(range(1, 9)), f"metrics.jsonl train rows after the resume: {train_rows}"
    assert json.loads((run / "results.json").read_text())["config"]["train"]["steps"] == 8


def test_resume_refuses_data_that_changed(tmp_path, fresh_minari_path, make_dataset, tiny_config):
    """The run pins the resolved dataset id and a fingerprint of the data: a rebuilt dataset
    (rlmin data build --overwrite) or a name that now resolves elsewhere is refused."""
    import shutil

    local = make_dataset("rlmin/hopper/medium-v0", hopper_episodes([20, 25, 30], seed=1))
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=3", "data.build_if_missing=false", dataset="hopper-medium"))
    first = load_checkpoint(list_checkpoints(run)[-1])["dataset"]
    assert first["id"] == local

    shutil.rmtree(fresh_minari_path / "rlmin" / "hopper" / "medium-v0")  # rebuilt: other data
    make_dataset("rlmin/hopper/medium-v0", hopper_episodes([20, 25, 30], seed=2))
    with pytest.raises(TrainingError) as info:
        train(resume=run, overrides=["train.steps=6"])
    msg = str(info.value)
    assert first["fingerprint"] in msg and local in msg and "new run" in msg, msg

    make_dataset("mujoco/hopper/medium-v0", hopper_episodes([20, 25, 30], seed=1))  # resolves here now
    with pytest.raises(TrainingError) as info:
        train(resume=run, overrides=["train.steps=6"])
    msg = str(info.value)
    assert local in msg and "mujoco/hopper/medium-v0" in msg, msg
    assert [p.name for p in list_checkpoints(run)][-1] == "step_00000003.pt", "nothing was trained"
