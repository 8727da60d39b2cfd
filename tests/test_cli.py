"""The ``rlmin`` command line: config errors, ``data list``, ``eval``, ``export`` -> ``Policy``.

Commands run in-process through ``rlmin.cli.main(argv)`` (its return value is the exit status).
One tiny run, trained once for the module, gives the checkpoint that eval and export use.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import torch_threads_kept

from rlmin import cli
from rlmin.checkpoint import list_checkpoints, load_checkpoint
from rlmin.config import ConfigError, load_config


@pytest.fixture
def tiny_yaml(tmp_path, tiny_config):
    return tiny_config.yaml(tmp_path / "tiny.yaml", "train.steps=10", "train.log_every=5")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    """(run_dir, last checkpoint) of a 10-step run made with ``rlmin train``."""
    root = tmp_path_factory.mktemp("cli_run")
    config = tiny_config.yaml(root / "tiny.yaml", "train.steps=10", "train.log_every=5")
    with torch_threads_kept():
        assert cli.main(["train", str(config), f"run_dir={root / 'run'}"]) == 0
    return root / "run", list_checkpoints(root / "run")[-1]


def one_error_line(capsys) -> str:
    """stderr of the last command: exactly one line ``error: ...`` and no traceback."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, f"not one error line: {err!r}"
    assert "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- config errors

# (overrides, what the message must contain)
BAD_OVERRIDES = [
    (["train.stepz=5"], ["'train.stepz'", "Did you mean", "steps"]),          # unknown key
    (["nosuch.key=1"], ["'nosuch'"]),                                          # unknown section
    (["train.steps=abc"], ["'train.steps'", "abc"]),                           # wrong type
    (["agent.dropout=true"], ["'agent.dropout'"]),                             # wrong type
    (["agent.backbone=mamba"], ["'agent.backbone'", "mamba", "mingru"]),       # unknown backbone
    (["agent.name=ppo"], ["'agent.name'", "ppo", "decision"]),                 # unknown agent
    (["agent.d_model=0"], ["'agent.d_model'", "positive"]),                    # zero size
    (["agent.nope=1"], ["'agent.nope'", "not an option", "d_model"]),          # unknown option
    (["agent.backbone_options.bogus=1"], ["bogus", "mingru", "expansion"]),    # backbone option
    (["eval.target_returns=3600"], ["'eval.target_returns'", "[3600]"]),       # a scalar
    (["eval.target_returns=[nan]"], ["'eval.target_returns'", "finite"]),
    (["eval.mode=carry", "agent.backbone=transformer"], ["'eval.mode'", "window"]),
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
    assert err.startswith("error: ") and "\n" not in err, f"not one line: {err!r}"
    assert "Traceback" not in err
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
    assert err.startswith("error: ") and "missing.yaml" in err and "\n" not in err, err


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
                     "--max-episode-steps", "5", "--seed", "7"]) == 0
    # one file per setting: mode, seed and episodes are in its name; in the run dir's eval/, as
    # nothing but the trainer writes in checkpoints/
    out = run / "eval" / f"{ckpt.stem}.default.seed7.ep1.eval.json"
    try:
        res = json.loads(out.read_text())
        assert list(res["targets"]) == ["50"]
        # it records what was evaluated: checkpoint, step, dataset, mode, targets, seed, episodes
        assert res["checkpoint"] == {"path": str(ckpt), "step": 10}
        assert res["dataset_id"] == load_checkpoint(ckpt)["dataset"]["id"]
        assert res["agent"] == {"label": "mingru", "act_mode": "carry"}
        assert (res["seed"], res["episodes"]) == (7, 1) and res["ref_source"]
        table = capsys.readouterr().out
        assert "± n/a" in table, f"one episode has no std: the table should say n/a:\n{table}"

        # the same evaluation again would replace it: refused, before any work
        assert cli.main(["eval", str(ckpt), "--episodes", "1", "--targets", "50",
                         "--max-episode-steps", "5", "--seed", "7"]) == 2
        err = one_error_line(capsys)
        assert str(out) in err and "--overwrite" in err, err
        assert json.loads(out.read_text()) == res
        assert cli.main(["eval", str(ckpt), "--episodes", "1", "--targets", "60",
                         "--max-episode-steps", "5", "--seed", "7", "--overwrite"]) == 0
        assert list(json.loads(out.read_text())["targets"]) == ["60"]
    finally:
        out.unlink(missing_ok=True)  # the checkpoint dir is shared by the module's tests


def test_eval_accepts_a_run_dir(trained, capsys):
    run, ckpt = trained
    assert cli.main(["eval", str(run), "--episodes", "1", "--targets", "50",
                     "--max-episode-steps", "5"]) == 0
    out = run / "eval" / "latest.default.seed10000.ep1.eval.json"
    res = json.loads(out.read_text())
    assert res["checkpoint"] == {"path": str(ckpt), "step": 10}, "the run's latest checkpoint"
    assert str(out) in capsys.readouterr().out


def test_eval_of_a_config_file_says_it_is_not_a_checkpoint(trained, capsys):
    run, _ = trained
    assert cli.main(["eval", str(run / "config.yaml"), "--episodes", "1"]) == 1
    err = one_error_line(capsys)
    assert "config.yaml is not a checkpoint" in err and "Delete" not in err, err


def test_eval_out_is_checked_before_evaluating(trained, tmp_path, capsys, monkeypatch):
    import rlmin.evaluate

    def never(*args, **kwargs):
        raise AssertionError("evaluated although --out cannot be written")

    monkeypatch.setattr(rlmin.evaluate, "evaluate_checkpoint", never)
    _, ckpt = trained
    missing = tmp_path / "no" / "such" / "dir" / "x.json"
    assert cli.main(["eval", str(ckpt), "--episodes", "1", "--out", str(missing)]) == 2
    err = one_error_line(capsys)
    assert str(missing.parent) in err, err
    assert not (tmp_path / "no").exists(), "a mistyped --out must not create folders"
    assert cli.main(["eval", str(ckpt), "--episodes", "1", "--out", str(tmp_path)]) == 2
    assert "is a directory" in one_error_line(capsys)


@pytest.mark.parametrize("argv, needle", [
    (["--episodes", "0"], "--episodes"),
    (["--n-envs", "-1"], "--n-envs"),
    (["--targets", "nan"], "--targets"),
    (["--targets", "-5"], "--targets"),
])
def test_eval_usage_errors_are_one_line(trained, capsys, argv, needle):
    _, ckpt = trained
    assert cli.main(["eval", str(ckpt), *argv]) == 2
    assert needle in one_error_line(capsys)


@pytest.fixture(scope="module")
def trained_transformer(tmp_path_factory, tiny_config):
    root = tmp_path_factory.mktemp("cli_transformer")
    with torch_threads_kept():
        assert cli.main(["train", str(tiny_config.yaml(root / "t.yaml")), "agent.backbone=transformer",
                         "train.steps=2", "eval.max_episode_steps=3", f"run_dir={root / 'run'}"]) == 0
    return root / "run"


def test_eval_mode_carry_on_a_transformer_is_one_line(trained_transformer, capsys):
    assert cli.main(["eval", str(trained_transformer), "--episodes", "1", "--mode", "carry"]) == 2
    err = one_error_line(capsys)
    assert "carry" in err and "window" in err, err
    assert not (trained_transformer / "eval").exists()


@pytest.mark.parametrize("overrides, needle, code", [
    (["train.device=tpu"], "train.device", 2),
    pytest.param(["train.device=cuda"], "train.device=cpu", 2, id="cuda-without-cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
    (["data.task=ant"], "ant", 2),
])
def test_train_mistakes_are_one_line(tiny_yaml, tmp_path, capsys, overrides, needle, code):
    assert cli.main(["train", str(tiny_yaml), f"run_dir={tmp_path / 'run'}", *overrides]) == code
    assert needle in one_error_line(capsys)


def test_debug_shows_the_traceback(tiny_yaml, tmp_path, monkeypatch, capsys):
    argv = ["train", str(tiny_yaml), f"run_dir={tmp_path / 'run'}", "train.device=tpu"]
    with pytest.raises(ConfigError, match="train.device"):
        cli.main(["--debug", *argv])
    monkeypatch.setenv("RLMIN_DEBUG", "1")
    with pytest.raises(ConfigError, match="train.device"):
        cli.main(argv)
    proc = subprocess.run([sys.executable, "-m", "rlmin.cli", "--debug", "eval", "nothere.pt"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr, proc.stderr
    monkeypatch.delenv("RLMIN_DEBUG")
    proc = subprocess.run([sys.executable, "-m", "rlmin.cli", "eval", "nothere.pt"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={k: v for k, v in {**os.environ, "OMP_NUM_THREADS": "1"}.items()
                               if k != "RLMIN_DEBUG"}, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "nothere.pt" in proc.stderr


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rlmin {version('rlmin')}"


def test_shipped_configs_are_found_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing called configs/ here
    path = cli.find_config("configs/backbones/mingru.yaml")
    assert path.is_file() and path == cli.CONFIG_ROOT / "backbones" / "mingru.yaml"
    assert cli.find_config("backbones/mingru.yaml") == path
    cfg = load_config([cli.find_config("configs/tasks/hopper-medium.yaml"), path])
    assert cfg.agent.name == "decision" and cfg.agent.backbone == "mingru"
    mine = tmp_path / "configs" / "backbones"
    mine.mkdir(parents=True)
    (mine / "mingru.yaml").write_text("train: {steps: 3}\n")
    assert cli.find_config("configs/backbones/mingru.yaml").resolve() == \
        (mine / "mingru.yaml").resolve(), "a file under the cwd wins over the shipped one"


def test_export_then_policy_acts_without_the_dataset(trained, tmp_path, fresh_minari_path,
                                                     capsys):
    from rlmin.policy import FORMAT, Policy, agent_from_payload

    _, ckpt = trained
    out = tmp_path / "policy.pt"
    assert cli.main(["export", str(ckpt), str(out)]) == 0
    assert "Policy.load" in capsys.readouterr().out
    # MINARI_DATASETS_PATH now points at an empty folder: the policy must need nothing from it.
    assert not any(fresh_minari_path.iterdir())

    payload = load_checkpoint(out)
    assert payload["format"] == FORMAT == "rlmin-policy-v2"
    assert payload["eval_spec"] == load_checkpoint(ckpt)["eval_spec"]  # saved once, whole
    assert set(payload["agent"]) == {"name", "options", "spec"} and payload["step"] == 10
    policy = Policy.load(out)
    assert policy.eval_spec.env_id == "Hopper-v5" and policy.agent.act_mode == "carry"
    assert policy.eval_spec.target_returns == tuple(payload["eval_spec"]["target_returns"])
    assert policy.eval_spec.ref_max == 101.0  # the tiny set's own reference score
    reference = agent_from_payload(load_checkpoint(ckpt))  # the same weights, acting alone
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


def test_export_from_a_run_dir_and_its_target_checks(trained, tmp_path, capsys):
    from rlmin.policy import Policy

    run, _ = trained
    out = tmp_path / "from_run.pt"
    assert cli.main(["export", str(run), str(out)]) == 0
    assert Policy.load(out).eval_spec.env_id == "Hopper-v5"
    capsys.readouterr()

    target = tmp_path / "a_dir"
    target.mkdir()
    assert cli.main(["export", str(run), str(target)]) == 2
    assert "is a directory" in one_error_line(capsys)
    assert list(target.iterdir()) == [] and not list(tmp_path.glob("*.tmp*")), "left a temp file"
    assert cli.main(["export", str(run), str(tmp_path / "nothere" / "p.pt")]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert not list(tmp_path.glob("**/.tmp-*")) and not list(tmp_path.glob("**/*.tmp"))


def test_a_malicious_pickle_is_refused_saying_it_holds_code(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"agent": {}, "eval_spec": {}, "model": {}, "x": Hostile()}, evil)
    for argv in (["eval", str(evil), "--episodes", "1", "--out", str(tmp_path / "e.json")],
                 ["export", str(evil), str(tmp_path / "p.pt")]):
        assert cli.main(argv) == 1
        err = one_error_line(capsys)
        assert "holds Python code" in err and "never runs code" in err, err
        assert "weights_only=False" not in err and "corrupt" not in err, err
    assert not marker.exists(), "loading ran code from the pickle"


def test_an_unwritable_run_dir_is_one_line_before_any_work(tiny_yaml, tmp_path, capsys,
                                                             monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(["train", str(tiny_yaml), f"run_dir={blocker / 'run'}"]) == 2
    assert "cannot create run_dir" in one_error_line(capsys)
    # A read-only mount: root passes every permission check, so the check itself is faked.
    readonly = tmp_path / "mount"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == readonly / "run"
                        else real_access(p, mode))
    assert cli.main(["train", str(tiny_yaml), f"run_dir={readonly / 'run'}"]) == 2
    assert "not writable" in one_error_line(capsys)


def test_runs_lists_each_run_with_its_status_and_score(trained, tmp_path, capsys):
    run_dir, _ = trained
    stopped = tmp_path / "stopped"
    shutil.copytree(run_dir, stopped)
    (stopped / "results.json").unlink()  # a run that saved checkpoints but never finished
    assert cli.main(["runs", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if str(stopped) in line]
    assert len(rows) == 1 and "| stopped |" in rows[0] and "test/hopper/tiny-v0" in rows[0]
    assert cli.main(["runs", str(run_dir.parent)]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if str(run_dir) in line]
    results = json.loads((run_dir / "results.json").read_text())
    assert "| finished |" in row and results["label"] in row
    assert f"{next(iter(results['last_iterate']['targets'].values()))['normalized_mean']:.1f}" in row


def test_configs_lists_the_shipped_configs(capsys):
    assert cli.main(["configs"]) == 0
    out = capsys.readouterr().out
    for name in ("configs/tasks/", "walker2d-medium-replay", "configs/backbones/", "transformer",
                 "configs/grids/", "suite", "configs/protocols/"):
        assert name in out, out
