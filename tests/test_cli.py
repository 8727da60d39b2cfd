"""The ``rlmin`` command line: config errors, ``data list``, ``eval``, ``export`` -> ``Policy``.

Commands run in-process through ``rlmin.cli.main(argv)`` (its return value is the exit status).
One tiny run, trained once for the module, gives the checkpoint that eval and export use.
"""
from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlmin import cli
from rlmin.checkpoint import list_checkpoints, load_checkpoint
from rlmin.config import ConfigError, load_config

TINY_YAML = """\
data: {{dataset: {dataset}, seq_len: 10}}
agent: {{d_model: 16, n_layers: 1, dropout: 0.0}}
train: {{steps: 10, batch_size: 8, warmup_steps: 2, lr: 1.0e-3, log_every: 5, checkpoint_every: 5,
        num_threads: 1, progress: false, device: cpu}}
eval: {{episodes: 1, target_returns: [100], max_episode_steps: 15}}
"""


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_yaml(tmp_path, tiny_hopper_id):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML.format(dataset=tiny_hopper_id))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_hopper_id):
    """(run_dir, last checkpoint) of a 10-step run made with ``rlmin train``."""
    n = torch.get_num_threads()
    root = tmp_path_factory.mktemp("cli_run")
    config = root / "tiny.yaml"
    config.write_text(TINY_YAML.format(dataset=tiny_hopper_id))
    try:
        assert cli.main(["train", str(config), f"run_dir={root / 'run'}"]) == 0
    finally:
        torch.set_num_threads(n)
    return root / "run", list_checkpoints(root / "run")[-1]


# ----------------------------------------------------------------------------- config errors

# (overrides, what the message must contain)
BAD_OVERRIDES = [
    (["train.stepz=5"], ["'train.stepz'", "Did you mean", "steps"]),          # unknown key
    (["nosuch.key=1"], ["'nosuch'"]),                                          # unknown section
    (["train.steps=abc"], ["'train.steps'", "abc"]),                           # wrong type
    (["agent.dropout=true"], ["'agent.dropout'"]),                             # wrong type
    (["agent.backbone=mamba"], ["'agent.backbone'", "mamba", "mingru"]),       # unknown backbone
    (["agent.name=ppo"], ["'agent.name'", "ppo", "decision"]),                 # unknown agent
    (["agent.d_model=0"], ["'agent.d_model'", "> 0"]),                         # zero size
    (["train.batch_size=-4"], ["'train.batch_size'", "> 0"]),                  # negative size
    (["data.seq_len=0"], ["'data.seq_len'", "> 0"]),
    (["eval.max_episode_steps=-1"], ["'eval.max_episode_steps'", ">= 0"]),
    (["train.steps"], ["key=value"]),                                          # not an override
]


@pytest.mark.parametrize("overrides, needles", BAD_OVERRIDES,
                         ids=[o[0][0] for o in BAD_OVERRIDES])
def test_load_config_errors_name_the_key(tiny_yaml, overrides, needles):
    with pytest.raises(ConfigError) as info:
        load_config([tiny_yaml], overrides)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} missing from the error: {msg}"


@pytest.mark.parametrize("overrides, needles", BAD_OVERRIDES,
                         ids=[o[0][0] for o in BAD_OVERRIDES])
def test_cli_config_errors_exit_2_with_one_line(tiny_yaml, tmp_path, capsys, overrides,
                                                needles):
    code = cli.main(["train", str(tiny_yaml), f"run_dir={tmp_path / 'run'}", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit status {code}, stderr: {err}"
    assert err.startswith("config error: ") and "\n" not in err, f"not one line: {err!r}"
    assert all(needle in err for needle in needles), err
    assert not (tmp_path / "run").exists(), "a bad config must fail before anything is written"


def test_yaml_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 5\n")
    assert cli.main(["train", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'train.stepz'" in err and str(bad) in err and "\n" not in err, err


def test_include_of_a_missing_file(tmp_path, capsys):
    top = tmp_path / "top.yaml"
    top.write_text("include: [parts/missing.yaml]\ntrain:\n  steps: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config([top])
    msg = str(info.value)
    assert str(top) in msg and str(tmp_path / "parts" / "missing.yaml") in msg, msg
    assert cli.main(["train", str(top)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: ") and "missing.yaml" in err and "\n" not in err, err


def test_includes_merge_before_the_files_own_keys(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  steps: 7\n  lr: 0.5\n")
    (tmp_path / "top.yaml").write_text("include: base.yaml\ntrain:\n  lr: 0.25\n")
    cfg = load_config([tmp_path / "top.yaml"], ["train.batch_size=4"])
    assert (cfg.train.steps, cfg.train.lr, cfg.train.batch_size) == (7, 0.25, 4)


def test_cli_missing_dataset_is_one_error_line(tiny_yaml, tmp_path, fresh_minari_path, capsys):
    code = cli.main(["train", str(tiny_yaml), "data.dataset=hopper-medium",
                     "data.build_if_missing=false", f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: ") and "\n" not in err, err
    assert "rlmin data build hopper medium" in err, err


# ----------------------------------------------------------------------------- data, eval, export

def test_data_list_shows_the_fixture_dataset(tiny_hopper_id, capsys):
    assert cli.main(["data", "list"]) == 0
    out = capsys.readouterr().out
    row = next((line for line in out.splitlines() if tiny_hopper_id in line), None)
    assert row is not None, f"{tiny_hopper_id} not listed:\n{out}"
    assert "| 1.0 | 101.0 |" in row, f"its reference scores should be listed: {row}"


def test_eval_window_mode_writes_json(trained, tmp_path, capsys):
    _, ckpt = trained
    out = tmp_path / "eval.json"
    code = cli.main(["eval", str(ckpt), "--episodes", "1", "--mode", "window", "--targets", "100",
                     "--max-episode-steps", "15", "--out", str(out)])
    assert code == 0
    assert str(out) in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["env_id"] == "Hopper-v5" and res["episodes"] == 1
    assert res["max_episode_steps"] == 15
    target = res["targets"]["100"]
    assert target["episodes"] == 1 and 1 <= target["lengths"][0] <= 15
    assert math.isfinite(target["return_mean"]) and target["normalized_mean"] is not None


def test_eval_default_output_is_next_to_the_checkpoint(trained, tmp_path, capsys):
    run, ckpt = trained
    assert cli.main(["eval", str(ckpt), "--episodes", "1", "--targets", "50",
                     "--max-episode-steps", "5"]) == 0
    res = json.loads(ckpt.with_suffix(".eval.json").read_text())
    assert list(res["targets"]) == ["50"]


def test_export_then_policy_acts_without_the_dataset(trained, tmp_path, fresh_minari_path,
                                                     capsys):
    from rlmin.policy import Policy, agent_from_checkpoint

    _, ckpt = trained
    out = tmp_path / "policy.pt"
    assert cli.main(["export", str(ckpt), str(out)]) == 0
    assert "Policy.load" in capsys.readouterr().out
    # MINARI_DATASETS_PATH now points at an empty folder: the policy must need nothing from it.
    assert not any(fresh_minari_path.iterdir())

    policy = Policy.load(out)
    assert policy.info["env_id"] == "Hopper-v5" and policy.agent.act_mode == "carry"
    reference = agent_from_checkpoint(load_checkpoint(ckpt))  # the same weights, acting alone
    ref_state = reference.reset(1, 100.0)

    env = gym.make("Hopper-v5")
    try:
        obs, _ = env.reset(seed=0)
        policy.reset(n_envs=1, target_return=100.0)
        reward, steps = None, 0
        for _ in range(5):
            action = policy.act(obs[None], reward)
            expected, ref_state = reference.act(obs[None], reward, ref_state)
            assert action.shape == (1, 3) and np.all(np.isfinite(action))
            assert np.all(np.abs(action) <= 1.0)
            np.testing.assert_allclose(action, expected, rtol=1e-5, atol=1e-6)
            obs, reward, terminated, truncated, _ = env.step(action[0])
            steps += 1
            if terminated or truncated:
                break
    finally:
        env.close()
    # The state is carried inside the policy: its step count and the backbone's recurrent state.
    assert int(policy.state["t"][0]) == steps
    assert any(k.startswith("backbone.") for k in policy.state)


def test_policy_load_refuses_a_training_checkpoint(trained):
    from rlmin.checkpoint import CheckpointError
    from rlmin.policy import Policy

    with pytest.raises(CheckpointError, match="rlmin export"):
        Policy.load(trained[1])
