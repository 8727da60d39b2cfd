"""A user's mistakes refused before they cost anything, and files that survive them.

One class per section (docs/RELIABILITY.md lists them with these tests): outputs that would
overwrite what someone made; bad values that would fail only after the work; memory a value can
blow up; silent changes on resume; messages that point nowhere; tracebacks; overflow hidden in
numbers. Signals during evaluations are in test_reliability.py (real subprocesses and signals).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import torch_threads_kept

from rlmin import cli
from rlmin.checkpoint import list_checkpoints
from rlmin.config import ConfigError
from rlmin.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, f"not one error line: {err!r}"
    assert "Traceback" not in err and "weights_only" not in err, err
    return err


def digest(folder: Path) -> dict:
    """Every file under ``folder`` with the sha256 of its bytes: what must survive a refusal."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_config) -> Path:
    """A finished 6-step run (checkpoints at 3 and 6). Tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("refusals")
    with torch_threads_kept():
        train(tiny_config(root / "run", "train.steps=6", "train.checkpoint_every=3"))
    return root / "run"


@pytest.fixture
def copy(run, tmp_path):
    def make(name="copy") -> Path:
        return Path(shutil.copytree(run, tmp_path / name))
    return make


def hopper_episodes(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [{"observations": rng.normal(size=(T + 1, 11)).astype(np.float32),
             "actions": rng.uniform(-1, 1, size=(T, 3)).astype(np.float32),
             "rewards": rng.uniform(0, 1, size=T)} for T in lengths]


# ============================================================================ outputs
def _writers(run: Path, tmp: Path) -> dict:
    """argv of every subcommand that writes a file, writing to ``{target}``."""
    return {
        "eval --out": ["eval", str(run), "--episodes", "1", "--out", "{target}"],
        "eval --video": ["eval", str(run), "--episodes", "1", "--out", str(tmp / "e.json"),
                         "--video", "{target}"],
        "export .pt": ["export", str(run), "{target}"],
        "export .onnx": ["export", str(run), "{target}"],
        "export .onnx --quantize": ["export", str(run), "{target}", "--quantize", "int8"],
    }


SUFFIX = {"eval --out": ".json", "eval --video": ".mp4", "export .pt": ".pt",
          "export .onnx": ".onnx", "export .onnx --quantize": ".onnx"}


@pytest.mark.parametrize("writer", list(SUFFIX))
def test_every_writer_refuses_an_existing_file(run, tmp_path, capsys, writer):
    target = tmp_path / f"mine{SUFFIX[writer]}"
    target.write_bytes(b"a file someone made")
    argv = [a.replace("{target}", str(target)) for a in _writers(run, tmp_path)[writer]]
    assert cli.main(argv) == 2
    err = one_error_line(capsys)
    assert str(target) in err and "--overwrite" in err, err
    assert target.read_bytes() == b"a file someone made"
    assert not (tmp_path / "e.json").exists(), "refused before any work"


def test_data_build_refuses_an_existing_dataset(fresh_minari_path, make_dataset, capsys):
    dataset = make_dataset("rlmin/hopper/medium-v0", hopper_episodes([10, 12]))
    before = digest(fresh_minari_path / dataset)
    assert cli.main(["data", "build", "hopper", "medium", "--steps", "50"]) == 2
    assert "--overwrite" in one_error_line(capsys)
    assert digest(fresh_minari_path / dataset) == before


def test_export_replaces_a_policy_only_with_overwrite(run, tmp_path, capsys):
    from rlmin.policy import Policy

    out = tmp_path / "policy.pt"
    assert cli.main(["export", str(run / "checkpoints" / "step_00000003.pt"), str(out)]) == 0
    first = out.read_bytes()
    assert cli.main(["export", str(run), str(out)]) == 2
    assert "--overwrite" in one_error_line(capsys) and out.read_bytes() == first
    assert cli.main(["export", str(run), str(out), "--overwrite"]) == 0
    assert Policy.load(out) is not None and out.read_bytes() != first  # step 6's weights now


@pytest.mark.parametrize("where", ["checkpoints/step_00000006.pt", "checkpoints/new.pt",
                                   "checkpoints/p.onnx", "results.json", "config.yaml",
                                   "metrics.jsonl", "tb/x.pt", "link-to-checkpoint.pt"])
def test_nothing_but_the_trainer_writes_a_runs_own_files(copy, capsys, where):
    """Not even with --overwrite: `rlmin export RUN RUN/checkpoints/step_N.pt` replaced the run's
    only checkpoint with a policy, and the run could not resume any more."""
    run = copy()
    target = run / where
    if where.startswith("link"):
        target.symlink_to(run / "checkpoints" / "step_00000006.pt")
    before = digest(run)
    for argv in (["export", str(run), str(target)], ["export", str(run), str(target), "--overwrite"],
                 ["eval", str(run), "--episodes", "1", "--out", str(target), "--overwrite"]):
        assert cli.main(argv) == 2
        err = one_error_line(capsys)
        assert "own files" in err and "only `rlmin train` writes" in err, err
    assert digest(run) == before
    if where == "checkpoints/step_00000006.pt":
        assert train(resume=run, overrides=["train.steps=7"]).step == 7, "the run still resumes"


def test_no_command_writes_over_its_own_input(run, tmp_path, capsys):
    policy = tmp_path / "policy.pt"
    assert cli.main(["export", str(run), str(policy)]) == 0
    made = policy.read_bytes()
    for argv in (["export", str(policy), str(policy), "--overwrite"],
                 ["eval", str(policy), "--episodes", "1", "--out", str(policy), "--overwrite"]):
        assert cli.main(argv) == 2
        assert "the file this command reads" in one_error_line(capsys)
    assert policy.read_bytes() == made


def test_eval_of_a_runs_checkpoint_writes_in_the_runs_eval_folder(copy, capsys):
    run = copy()
    ckpt = run / "checkpoints" / "step_00000006.pt"
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert cli.main(["eval", str(ckpt), "--episodes", "1", "--max-episode-steps", "3"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert (run / "eval" / "step_00000006.default.seed10000.ep1.eval.json").is_file()


# ============================================================================ bad values
@pytest.mark.parametrize("override, needle", [
    ("eval.target_returns=[100,100]", "eval.target_returns"),          # failed the final evaluation
    ("eval.seed=-1", "eval.seed"),                                      # failed the final evaluation
    ("train.seed=-1", "train.seed"),                                    # numpy's error, unnamed
    ("eval.target_returns=[1e30]", "eval.target_returns"),              # NaN actions at the end
    ("data.seq_len=100000", "data.seq_len <= 1000"),                    # 24 GB, then killed
    ("data.mode=episode data.seq_len=3", "cuts every episode at its first 3 steps"),  # a task's K
    ("train.batch_size=10000000", "train.batch_size"),                  # the memory estimate
    ("eval.n_envs=100000 eval.episodes=100000", "eval.n_envs"),         # 1 MB an env, at the end
])
def test_a_bad_value_is_refused_before_the_first_step(tiny_config, tmp_path, capsys, override,
                                                      needle):
    rundir = tmp_path / "run"
    assert cli.main(["train", str(tiny_config.yaml(tmp_path / "t.yaml")), f"run_dir={rundir}",
                     *override.split()]) == 2
    assert needle in one_error_line(capsys)
    assert not (rundir / "config.yaml").exists() and not list_checkpoints(rundir), "work was done"


def test_duplicate_targets_are_refused_at_load(tiny_config):
    for key in ("eval.target_returns=[100,100]", "eval.target_scores=[50,50]"):
        with pytest.raises(ConfigError, match=r"config key 'eval\.target_\w+' has duplicates"):
            tiny_config(None, "eval.target_returns=null", key)


def test_target_scores_that_round_to_one_target_are_refused_before_the_first_step(tiny_config,
                                                                                  tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.target_scores.*before the first step"):
        train(tiny_config(tmp_path / "run", "eval.target_returns=null",
                          "eval.target_scores=[50,50.00001]"))
    assert not list_checkpoints(tmp_path / "run")


@pytest.mark.parametrize("refs, key", [
    ({"ref_min_score": 5.0, "ref_max_score": 5.0}, "ref_max_score"),    # failed at the first save
    ({"ref_min_score": "abc", "ref_max_score": 10.0}, "ref_min_score"),  # "could not convert..."
])
def test_bad_reference_scores_are_refused_at_load_naming_file_and_key(
        tiny_config, tmp_path, fresh_minari_path, make_dataset, capsys, refs, key):
    dataset = make_dataset("test/hopper/refs-v0", hopper_episodes([12, 14]), **refs)
    rundir = tmp_path / "run"
    assert cli.main(["train", str(tiny_config.yaml(tmp_path / "t.yaml", dataset=dataset)),
                     f"run_dir={rundir}"]) == 1
    err = one_error_line(capsys)
    assert "metadata.json" in err and f"'{key}'" in err and "could not convert" not in err, err
    assert not (rundir / "config.yaml").exists()
    assert cli.main(["data", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if dataset in line)
    assert "bad metadata" in row and key in row, row


def test_a_malformed_metadata_key_names_the_file(tiny_config, tmp_path, fresh_minari_path,
                                                 make_dataset, capsys):
    dataset = make_dataset("test/hopper/spec-v0", hopper_episodes([12]))
    meta = fresh_minari_path / dataset / "data" / "metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "eval_env_spec": "{not json"}))
    assert cli.main(["train", str(tiny_config.yaml(tmp_path / "t.yaml", dataset=dataset)),
                     f"run_dir={tmp_path / 'run'}"]) == 1
    err = one_error_line(capsys)
    assert str(meta) in err and "eval_env_spec" in err, err


def test_eval_keys_are_accepted_on_resume(copy):
    """And resuming a run whose checkpoint is at its last step runs only the final evaluation."""
    run = copy()
    (run / "results.json").unlink()  # as if stopped during its final evaluation
    ckpts, rows = digest(run / "checkpoints"), (run / "metrics.jsonl").read_text()
    result = train(resume=run, overrides=["eval.target_returns=[50,60]", "eval.seed=3",
                                          "eval.episodes=2", "eval.max_episode_steps=4"])
    assert result.step == 6 and digest(run / "checkpoints") == ckpts, "no step, no new checkpoint"
    assert (run / "metrics.jsonl").read_text().startswith(rows)
    res = json.loads((run / "results.json").read_text())
    assert list(res["last_iterate"]["targets"]) == ["50", "60"] and res["last_iterate"]["seed"] == 3
    with pytest.raises(ConfigError, match="agent.d_model"):
        train(resume=run, overrides=["agent.d_model=32"])


def test_a_finished_run_is_not_resumed_again(copy):
    run = copy()
    before = digest(run)
    from rlmin.rundir import RunDirError

    with pytest.raises(RunDirError, match=r"finished.*train\.steps=N.*rlmin eval"):
        train(resume=run, overrides=["eval.episodes=3"])
    assert digest(run) == before


def test_a_read_only_checkpoint_folder_is_found_before_the_first_step_of_a_resume(
        copy, monkeypatch, capsys):
    run = copy()
    (run / "results.json").unlink()
    before = digest(run)
    real_access = os.access
    # root passes every permission check, so the check itself is faked (as for a new run dir)
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == run / "checkpoints"
                        else real_access(p, mode))
    assert cli.main(["train", "--resume", str(run), "train.steps=9"]) == 2
    err = one_error_line(capsys)
    assert str(run / "checkpoints") in err and "not writable" in err, err
    after = digest(run)
    assert {k: v for k, v in after.items() if not k.startswith("lock")} == \
        {k: v for k, v in before.items() if not k.startswith("lock")}, "work was done"


# ============================================================================ memory
def test_the_memory_probe_changes_nothing_training_sees(tiny_config, tiny_hopper_id):
    from rlmin.config import agent_class, agent_options
    from rlmin.data.resolve import load_dataset_for
    from rlmin.train import step_memory

    cfg = tiny_config(None, "agent.dropout=0.1", "data.mode=episode", "data.seq_len=30")

    def draws(probe: bool):
        torch.manual_seed(0)
        data = load_dataset_for(cfg.data)
        sampler = data.sampler(cfg.data, 8, seed=0)
        agent = agent_class(cfg)(data.agent_spec(30), agent_options(cfg)).train()
        need = step_memory(agent, sampler, 8, torch.device("cpu")) if probe else None
        return sampler.sample()["observations"], torch.rand(3), need

    obs, rand, need = draws(True)
    obs0, rand0, _ = draws(False)
    assert np.array_equal(obs, obs0) and torch.equal(rand, rand0)
    assert need > 8 * 30 * 16 * 4, f"{need} bytes: less than one float per step and feature"


def test_a_step_that_does_not_fit_names_the_keys_to_lower(tiny_config, tmp_path, monkeypatch):
    import rlmin.train

    monkeypatch.setattr(rlmin.train, "free_memory", lambda device: 1 << 10)  # 1 KiB free
    with pytest.raises(ConfigError, match=r"GiB.*free.*data\.seq_len.*train\.batch_size"):
        train(tiny_config(tmp_path / "run"))
    assert not list_checkpoints(tmp_path / "run")


def test_a_failed_allocation_is_one_line_naming_the_keys(tiny_config, tmp_path, monkeypatch,
                                                       capsys):
    import rlmin.train

    real, calls = rlmin.train.optimizer_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                               "not enough memory: you tried to allocate 25769803776 bytes.")
        return real(*args, **kwargs)

    monkeypatch.setattr(rlmin.train, "optimizer_step", step)
    assert cli.main(["train", str(tiny_config.yaml(tmp_path / "t.yaml")),
                     f"run_dir={tmp_path / 'run'}"]) == 1
    err = one_error_line(capsys)
    assert "out of memory at step 4" in err and "data.seq_len" in err and \
        "train.batch_size" in err, err


# ============================================================================ resume edits
def test_resume_takes_an_edit_of_an_eval_key_and_says_so(copy, capsys):
    run = copy()
    (run / "results.json").unlink()
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("episodes: 1", "episodes: 2"))
    train(resume=run)
    assert "eval.episodes 1 -> 2" in capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["last_iterate"]["episodes"] == 2
    assert "episodes: 2" in config.read_text(), "the edit was written away"


def test_resume_refuses_an_edit_of_the_model_naming_the_key(copy, capsys):
    run = copy()
    config = run / "config.yaml"
    edited = config.read_text().replace("d_model: 16", "d_model: 32")
    config.write_text(edited)
    assert cli.main(["train", "--resume", str(run), "train.steps=9"]) == 2
    err = one_error_line(capsys)
    assert "agent.d_model" in err and "32" in err and "16" in err and str(config) in err, err
    assert config.read_text() == edited and [p.name for p in list_checkpoints(run)][-1] == \
        "step_00000006.pt"
    config.write_text("train: [unclosed\n")
    assert cli.main(["train", "--resume", str(run), "train.steps=9"]) == 2
    assert str(config) in one_error_line(capsys)


# ============================================================================ messages
def test_a_run_that_saved_nothing_gets_the_same_advice_both_ways(tiny_config, tmp_path, capsys):
    crashed = tmp_path / "crashed"
    (crashed / "tb").mkdir(parents=True)
    (crashed / "config.yaml").write_text("name: run\n")
    (crashed / "checkpoints").mkdir()
    (crashed / "checkpoints" / "step_00000005.pt").write_bytes(b"half a checkpoint")
    for argv in (["train", str(tiny_config.yaml(tmp_path / "t.yaml")), f"run_dir={crashed}"],
                 ["train", "--resume", str(crashed)]):
        assert cli.main(argv) in (1, 2)
        err = one_error_line(capsys)
        assert "nothing to resume" in err and f"rm -r {crashed}" in err, err
        assert "--resume" not in err.split("nothing to resume")[1], err
    (crashed / "checkpoints" / "step_00000005.pt").unlink()
    assert cli.main(["train", "--resume", str(crashed)]) == 2
    assert "saved no checkpoint" in one_error_line(capsys)


def test_runs_lists_every_run_and_marks_what_it_cannot_read(copy, capsys):
    good, binary, cut = copy("good"), copy("binary"), copy("cut")
    (binary / "results.json").write_bytes(b"\x80\x81\xfe\xff" * 8)
    text = (cut / "results.json").read_text()
    (cut / "results.json").write_text(text[: len(text) // 2])
    assert cli.main(["runs", str(good.parent)]) == 0
    out = capsys.readouterr().out
    rows = {name: next(line for line in out.splitlines() if line.startswith(f"| {good.parent / name} "))
            for name in ("good", "binary", "cut")}
    assert "| finished |" in rows["good"]
    for name in ("binary", "cut"):
        assert "| unreadable |" in rows[name], rows[name]
        note = next(line for line in out.splitlines()
                    if line.startswith("unreadable:") and str(good.parent / name) in line)
        assert "results.json" in note and f"rlmin train --resume {good.parent / name}" in note


# ============================================================================ tracebacks
@pytest.fixture
def not_actors(run, tmp_path) -> dict:
    """Files that are not behaviour actors, by what they are."""
    from rlmin.policy import export_policy

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    pickled = tmp_path / "pickled.pt"

    class Code:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": Code()}, pickled)
    return {"garbage": garbage, "training checkpoint": list_checkpoints(run)[-1],
            "exported policy": export_policy(run, tmp_path / "policy.pt"), "code": pickled}


@pytest.mark.parametrize("kind", ["garbage", "training checkpoint", "exported policy", "code"])
def test_data_build_with_a_file_that_is_not_an_actor_is_one_line(not_actors, fresh_minari_path,
                                                                capsys, kind):
    assert cli.main(["data", "build", "hopper", "medium", "--steps", "50", "--policy",
                     str(not_actors[kind])]) == 2
    err = one_error_line(capsys)
    assert str(not_actors[kind]) in err and "not a behaviour actor" in err, err
    if kind in ("training checkpoint", "exported policy"):
        assert kind in err, err
    assert not any(fresh_minari_path.glob("rlmin/hopper/*")), "a dataset was started"


def test_resume_from_a_policy_in_checkpoints_is_one_line(copy, tmp_path, capsys):
    run = copy()
    from rlmin.policy import export_policy

    export_policy(run, tmp_path / "p.pt")
    for ckpt in list_checkpoints(run):
        shutil.copy(tmp_path / "p.pt", ckpt)  # by hand: rlmin export refuses to
    assert cli.main(["train", "--resume", str(run), "train.steps=9"]) == 1
    err = one_error_line(capsys)
    assert "not a training checkpoint" in err and "KeyError" not in err, err


# ============================================================================ overflow
def test_a_target_that_overflows_float32_is_refused_by_both_policies(run, tmp_path, capsys):
    from rlmin.onnx_export import export_onnx
    from rlmin.onnx_policy import OnnxPolicy
    from rlmin.policy import Policy

    onnx = export_onnx(run, tmp_path / "p.onnx")
    assert cli.main(["export", str(run), str(tmp_path / "p.pt")]) == 0
    for policy in (Policy.load(tmp_path / "p.pt"), OnnxPolicy.load(onnx)):
        policy.reset(2, 3600.0)  # a real target is fine
        with pytest.raises(ValueError, match=r"1e\+30.*overflows"):
            policy.reset(2, 1e30)
    capsys.readouterr()
    for source in (onnx, run):
        assert cli.main(["eval", str(source), "--episodes", "1", "--targets", "1e30",
                         "--out", str(tmp_path / "e.json")]) == 2
        err = one_error_line(capsys)
        assert "--targets" in err and "1e+30" in err, err
    assert not (tmp_path / "e.json").exists()
