"""Runs that go wrong: a damaged newest checkpoint, a hostile checkpoint, a killed process.

The kill test runs ``python -m rlmin.cli train`` as a real subprocess, SIGKILLs it after its first
checkpoint, resumes it with ``--resume`` and checks the result against an uninterrupted run.
(Atomic saves themselves are tested in test_checkpoint.py.)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlmin import cli
from rlmin.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from rlmin.config import load_config
from rlmin.train import train


def write_config(tiny_config, path: Path, steps: int, every: int, eval_every: int = 0,
                 dropout: float = 0.1) -> Path:
    return tiny_config.yaml(path, f"train.steps={steps}", f"train.checkpoint_every={every}",
                            f"train.eval_every={eval_every}", f"agent.dropout={dropout}",
                            "train.warmup_steps=5", "train.seed=3", "train.keep_checkpoints=3",
                            "eval.max_episode_steps=10")


def cli_env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def assert_same_models(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    worst = max((x.double() - b[k].double()).abs().max().item() for k, x in a.items())
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7), (
            f"{what}: parameter {k} differs (largest difference over all tensors: {worst:.3g}). "
            "Something that drives training is not saved/restored exactly: RNG states, the "
            "sampler's generator, the scheduler, or the order of RNG use around eval/checkpoint.")


def tb_scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_a_resumed_runs_event_file_sorts_after_the_killed_runs(tmp_path):
    """TensorBoard reads event files in name order; names start with the creation second. A
    resume within the killed run's second must still come last, or its purge is undone."""
    from torch.utils.tensorboard import SummaryWriter

    from rlmin.runlog import _wait_for_a_later_second

    tb = tmp_path / "tb"
    tb.mkdir()
    killed = tb / f"events.out.tfevents.{int(time.time()):010d}.zzzz.99999999.9"  # sorts last in its second
    killed.write_bytes(b"")
    _wait_for_a_later_second(tb)
    SummaryWriter(tb).close()
    names = sorted(p.name for p in tb.glob("events.out.tfevents.*"))
    assert names[0] == killed.name, names


# ----------------------------------------------------------------------------- damaged checkpoint

def test_resume_falls_back_from_a_truncated_newest_checkpoint(tmp_path, tiny_config, capsys):
    config = write_config(tiny_config, tmp_path / "tiny.yaml", steps=15, every=5)
    run = tmp_path / "run"
    assert cli.main(["train", str(config), f"run_dir={run}"]) == 0
    newest = run / "checkpoints" / "step_00000015.pt"
    uninterrupted = load_checkpoint(newest)["model"]

    data = newest.read_bytes()  # a crash mid-write by something that is not save_checkpoint
    newest.write_bytes(data[: len(data) // 3])
    capsys.readouterr()

    assert cli.main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "step_00000015.pt could not be loaded" in out and "falling back to step_00000010.pt" \
        in out, f"the resume should say it skipped the damaged checkpoint:\n{out}"
    assert "from step_00000010.pt (step 10)" in out, out
    resumed = load_checkpoint(newest)  # rewritten, whole, by the resumed run
    assert resumed["step"] == 15
    assert_same_models(uninterrupted, resumed["model"], "resumed after a truncated checkpoint")
    steps = [s for s, _ in tb_scalars(run / "tb", "train/loss")]
    assert steps == list(range(1, 16)), f"train/loss steps after the resume: {steps}"


class _Hostile:
    """Unpickling this creates a file: proof that arbitrary code would have run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_loading_never_unpickles_arbitrary_objects(tmp_path, capsys):
    from rlmin.policy import Policy

    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "step_00000005.pt"
    torch.save({"step": 5, "model": {"w": torch.zeros(1)}, "evil": _Hostile(marker)}, ckpt)

    assert cli.main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "step_00000005.pt" in err, err
    assert "holds Python code" in err and "never runs code" in err, err
    with pytest.raises(CheckpointError, match="holds Python code"):
        Policy.load(ckpt)
    assert cli.main(["eval", str(ckpt), "--episodes", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "holds Python code" in err and "weights_only=False" not in err, err
    assert not marker.exists(), "a checkpoint load ran code from the pickle"


# ----------------------------------------------------------------------------- killed process

TOTAL = 200


def _kill_after_first_checkpoint(cmd: list[str], run: Path, log: Path) -> int:
    """Start ``cmd``; SIGKILL it as soon as a checkpoint exists; returns the newest's step."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=cli_env())
        try:
            deadline = time.monotonic() + 300
            while not list_checkpoints(run):
                if proc.poll() is not None:
                    pytest.fail(f"training exited ({proc.returncode}) before its first "
                                f"checkpoint:\n{log.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no checkpoint after 300 s:\n{log.read_text()}")
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL, \
        f"expected the run to die by SIGKILL, got {proc.returncode}:\n{log.read_text()}"
    steps = [int(p.stem.split("_")[1]) for p in list_checkpoints(run)]
    assert steps and steps[-1] < TOTAL, (
        f"the run wrote checkpoints {steps} before it was killed: it was not interrupted. "
        f"Raise TOTAL in this test if this machine is that much faster.")
    return steps[-1]


def test_killed_run_resumes_to_the_same_model_as_an_uninterrupted_one(tmp_path, tiny_config):
    # Dropout on and an evaluation every 50 steps: the RNG streams, the sampler and the order of
    # RNG use around eval and checkpoints must all be restored for the models to match.
    config = write_config(tiny_config, tmp_path / "tiny.yaml", steps=TOTAL, every=10,
                          eval_every=50, dropout=0.1)
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rlmin.cli", "train"]
    killed_at = _kill_after_first_checkpoint(cmd + [str(config), f"run_dir={run}"], run,
                                             tmp_path / "first.log")

    # SIGKILL leaves the lock file behind; the OS released the lock itself, so resume may take it.
    assert (run / "lock").exists()
    resumed = subprocess.run(cmd + ["--resume", str(run)], capture_output=True, text=True,
                             env=cli_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"(step {killed_at})" in resumed.stdout, resumed.stdout

    reference = tmp_path / "uninterrupted"
    train(load_config([config], [f"run_dir={reference}"]))

    final = load_checkpoint(run / "checkpoints" / f"step_{TOTAL:08d}.pt")
    expected = load_checkpoint(reference / "checkpoints" / f"step_{TOTAL:08d}.pt")
    assert final["step"] == TOTAL
    assert_same_models(expected["model"], final["model"],
                       f"killed at step {killed_at}, resumed to {TOTAL}")

    losses = tb_scalars(run / "tb", "train/loss")
    steps = [s for s, _ in losses]
    duplicated = sorted({s for s in steps if steps.count(s) > 1})
    assert not duplicated, f"train/loss logged more than once at steps {duplicated}"
    assert steps == list(range(1, TOTAL + 1)), \
        f"train/loss should have every step 1..{TOTAL} once; missing " \
        f"{sorted(set(range(1, TOTAL + 1)) - set(steps))[:10]}"
    ref_losses = tb_scalars(reference / "tb", "train/loss")
    assert losses[-1][1] == pytest.approx(ref_losses[-1][1], rel=1e-6), \
        "the final loss differs from the uninterrupted run's"
    evals = [s for s, _ in tb_scalars(run / "tb", "eval/return_mean/target_100")]
    assert evals == [50, 100, 150, 200], f"evaluation steps after the resume: {evals}"


# ----------------------------------------------------------------------------- one run per run dir

def test_a_finished_run_dir_is_refused_in_one_line(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_00000200.pt").write_bytes(b"an earlier run's checkpoint")
    (run / "results.json").write_text("{}")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert cli.main(["train", str(tiny_config.yaml(tmp_path / "tiny.yaml")), f"run_dir={run}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert f"--resume {run}" in err and "already holds a run" in err, err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before, "the old run was touched"
    assert (run / "results.json").read_text() == "{}"


LONG = ("train.steps=100000", "train.checkpoint_every=100000", "train.log_every=1",
        "train.eval_every=0")


def start_training(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlmin.cli", "train", *argv], cwd=cwd,
                            stdout=log.open("w"), stderr=subprocess.PIPE, text=True, env=cli_env())


def wait_for(proc: subprocess.Popen, what, description: str, log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not what():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {description}:\n"
                        f"{log.read_text()}\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {description} after {timeout} s:\n{log.read_text()}")
        time.sleep(0.02)


def train_rows(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    import json
    lines = path.read_text().split("\n")[:-1]  # a line still being written has no newline yet
    return [json.loads(line)["step"] for line in lines if '"kind": "train"' in line]


def test_a_live_run_holds_its_dir_and_sigterm_saves_and_exits_143(tmp_path, tiny_config):
    run = tmp_path / "run"
    config = tiny_config.yaml(tmp_path / "tiny.yaml")
    first = start_training([str(config), f"run_dir={run}", *LONG], tmp_path, tmp_path / "first.log")
    try:
        wait_for(first, lambda: (run / "lock.owner").exists(), "its lock.owner file",
                 tmp_path / "first.log")
        holder = f"pid {first.pid}"
        for argv in ([str(config), f"run_dir={run}", *LONG], ["--resume", str(run)]):
            started = time.monotonic()
            second = subprocess.run([sys.executable, "-m", "rlmin.cli", "train", *argv],
                                    cwd=tmp_path, capture_output=True, text=True, env=cli_env(),
                                    timeout=300)
            err = second.stderr.strip()
            assert second.returncode == 2, (second.returncode, err)
            assert err.startswith("error: ") and "\n" not in err and holder in err, err
            assert "in use" in err, err
            assert time.monotonic() - started < 120, "the second run waited for the lock"
        assert first.poll() is None, "the second process disturbed the first"
    except BaseException:
        first.kill()
        first.wait()
        raise
    err = interrupt_after_two_steps(first, run, tmp_path / "first.log", signal.SIGTERM)
    assert first.returncode == 143, (first.returncode, err)
    assert "Traceback" not in err and f"rlmin train --resume {run}" in err, err
    (ckpt,) = list_checkpoints(run)
    stopped = load_checkpoint(ckpt)["step"]
    assert 2 <= stopped < 100000 and train_rows(run) == list(range(1, stopped + 1))
    assert not (run / "lock.owner").exists(), "the run's lock owner file outlived it"
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def interrupt_after_two_steps(proc, run, log, sig) -> str:
    """Send ``sig`` once the run has logged two steps; returns its stderr (killed on failure)."""
    try:
        wait_for(proc, lambda: len(train_rows(run)) >= 2, "two training steps", log)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err


def test_ctrl_c_saves_exits_130_and_resume_continues(tmp_path, tiny_config):
    """Also: shipped configs are found from another cwd, and nothing is written into the cwd."""
    run = tmp_path / "run"
    shipped = ["configs/tasks/hopper-medium.yaml", "configs/backbones/mingru.yaml"]
    assert not (tmp_path / "configs").exists()
    first = start_training([*shipped, *tiny_config.overrides(*LONG, run_dir=run)], tmp_path,
                           tmp_path / "first.log")
    err = interrupt_after_two_steps(first, run, tmp_path / "first.log", signal.SIGINT)
    assert first.returncode == 130, (first.returncode, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert f"rlmin train --resume {run}" in err and "saved a checkpoint" in err, err
    (ckpt,) = list_checkpoints(run)
    stopped = load_checkpoint(ckpt)["step"]
    assert stopped >= 2 and ckpt.name == f"step_{stopped:08d}.pt", "saved where it stopped"

    resumed = subprocess.run([sys.executable, "-m", "rlmin.cli", "train", "--resume", str(run),
                              f"train.steps={stopped + 2}"], cwd=tmp_path, capture_output=True,
                             text=True, env=cli_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"(step {stopped})" in resumed.stdout, resumed.stdout
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == stopped + 2
    assert train_rows(run) == list(range(1, stopped + 3)), "metrics.jsonl: each step once"
    assert (run / "results.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.log", "run"], \
        "a run writes nothing into its working directory (e.g. MUJOCO_LOG.TXT)"


# ----------------------------------------------------------------------------- signals in evaluations
# Evaluations long enough that running them out would take minutes: 20,000 one-env episodes.
LONG_EVAL = ("eval.episodes=20000", "eval.n_envs=1")


def _stop_within(proc: subprocess.Popen, sig, seconds: float) -> tuple[str, float]:
    """Send ``sig``; returns (stderr, seconds until the process ended). Killed on failure."""
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"still running {seconds} s after {sig!r}: the evaluation ignored it\n{err}")
    return err, time.monotonic() - started


def test_sigterm_in_the_final_evaluation_stops_it_keeps_the_checkpoint_and_resume_finishes(
        tmp_path, tiny_config):
    run = tmp_path / "run"
    config = tiny_config.yaml(tmp_path / "tiny.yaml", "train.steps=6", "train.checkpoint_every=3")
    proc = start_training([str(config), f"run_dir={run}", *LONG_EVAL], tmp_path,
                          tmp_path / "first.log")
    last = run / "checkpoints" / "step_00000006.pt"
    try:
        wait_for(proc, lambda: last.exists() and 6 in train_rows(run), "the last checkpoint",
                 tmp_path / "first.log")
        time.sleep(1.0)  # well into the final evaluation (minutes long)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    saved = last.read_bytes()
    err, took = _stop_within(proc, signal.SIGTERM, 30)
    assert proc.returncode == 143, (proc.returncode, err)
    assert "Traceback" not in err and "final evaluation" in err, err
    assert f"rlmin eval {run}" in err and f"rlmin train --resume {run}" in err, err
    assert last.read_bytes() == saved and not (run / "results.json").exists()

    # Resume: no training step and no new checkpoint, only the final evaluation and results.json
    # (an evaluation key may change on resume: one short episode here).
    resumed = subprocess.run([sys.executable, "-m", "rlmin.cli", "train", "--resume", str(run),
                              "eval.episodes=1", "eval.n_envs=0"], cwd=tmp_path,
                             capture_output=True, text=True, env=cli_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003.pt", "step_00000006.pt"]
    assert last.read_bytes() == saved, "resuming at the last step rewrote its checkpoint"
    assert train_rows(run) == list(range(1, 7)), "resuming at the last step trained"
    import json
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 6 and results["last_iterate"]["episodes"] == 1


def test_ctrl_c_in_a_periodic_evaluation_stops_it_and_saves(tmp_path, tiny_config):
    run = tmp_path / "run"
    proc = start_training([str(tiny_config.yaml(tmp_path / "tiny.yaml")), f"run_dir={run}",
                           *LONG, "train.eval_every=2", *LONG_EVAL], tmp_path,
                          tmp_path / "first.log")
    try:
        wait_for(proc, lambda: 2 in train_rows(run), "the evaluation at step 2",
                 tmp_path / "first.log")
        time.sleep(1.0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    err, took = _stop_within(proc, signal.SIGINT, 30)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and f"rlmin train --resume {run}" in err, err
    (ckpt,) = list_checkpoints(run)
    assert load_checkpoint(ckpt)["step"] == 3, "the step after the stopped evaluation, saved"
