"""rlmin repro run's launchers (rlmin/launch.py) and a grid's run states (rlmin.grid):
submitit's local executor end to end, a pre-timeout signal that saves, requeues and resumes to the
same model, failed runs (failed.json, left alone, --rerun-failed), unreadable results.json files,
Slurm through stand-in sbatch/srun/sacct scripts, and `rlmin repro status`.

Real runs are tiny (``tiny_config``: a dozen steps on the session's tiny hopper set)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from rlmin import grid
from rlmin.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals and /proc")


def make_grid(root: Path, tiny_config, *task_extra: str, seeds=(0, 1),
              backbones: dict | None = None) -> Path:
    """A config root with tasks/tiny.yaml (a tiny run), backbones/<name>.yaml and grids/tiny.yaml."""
    for folder in ("tasks", "backbones", "grids"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    tiny_config.yaml(root / "tasks" / "tiny.yaml", *task_extra)
    backbones = backbones or {"tiny": "agent:\n  dropout: 0.0\n"}
    for name, text in backbones.items():
        (root / "backbones" / f"{name}.yaml").write_text(text)
    path = root / "grids" / "tiny.yaml"
    path.write_text(f"tasks: [tiny]\nbackbones: [{', '.join(backbones)}]\n"
                    f"seeds: [{', '.join(map(str, seeds))}]\noverrides: [train.num_threads=1]\n")
    return path


def planned(grid_file: Path, out: Path) -> list[grid.Run]:
    g = grid.load_grid(str(grid_file))
    return grid.plan(g.tasks, g.backbones, g.seeds, out, g.overrides, grid_file.parent.parent)


def repro(grid_file: Path, out: Path, *extra: str, runner=None) -> int:
    return grid.main(["run", "--grid", str(grid_file), "--out", str(out), "--config-root",
                      str(grid_file.parent.parent), "--no-report", *extra], runner=runner)


@pytest.fixture(autouse=True)
def one_thread_children(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the runs' processes share two busy cores


# ----------------------------------------------------------------------------- submitit-local
def test_a_grid_through_submitits_local_executor(tmp_path, tiny_config, capsys):
    grid_file = make_grid(tmp_path / "configs", tiny_config)
    out = tmp_path / "out"
    runs = planned(grid_file, out)
    commands = {r.name: shlex.join(r.argv(num_threads=1)) for r in runs}  # before: no --resume
    assert repro(grid_file, out, "--launcher", "submitit-local") == 0, capsys.readouterr().out
    text = capsys.readouterr().out
    # the local launcher's places: <out>/<task>/<backbone>/seed<k>, and nothing else
    assert sorted(out.rglob("results.json")) == sorted(r.run_dir / "results.json" for r in runs)
    for r in runs:
        assert r.finished and not (r.run_dir / "failed.json").exists()
        # the job ran the run's own command (what --launcher local runs), logged in its folder
        assert commands[r.name] in (r.run_dir / "command.txt").read_text()
        assert "run dir:" in (r.run_dir / "train.log").read_text()
    assert list((out / ".submitit").glob("*_log.out")), "submitit's logs belong in <out>/.submitit"
    assert text.count(" done  tiny/tiny/seed") == 2, text
    # the same command again: everything is finished, no job starts
    assert repro(grid_file, out, "--launcher", "submitit-local") == 0
    assert "2 finished (skipped), 0 to run" in capsys.readouterr().out


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_job_told_to_stop_saves_requeues_and_resumes_to_the_same_model(tmp_path, tiny_config,
                                                                          capsys):
    """Slurm's pre-timeout signal (USR2) as submitit's local executor would get it: sent to the
    job and to the trainer alike. The trainer must ignore it, the job must make the trainer save
    (SIGTERM) and requeue itself, and the requeued job resume: same final model as a run never
    stopped. Dropout and an evaluation on the way: every RNG stream has to be restored."""
    total = 150
    grid_file = make_grid(tmp_path / "configs", tiny_config, f"train.steps={total}",
                          "train.checkpoint_every=10", "train.eval_every=50", "agent.dropout=0.1",
                          "train.warmup_steps=5", seeds=(3,))
    out = tmp_path / "out"
    (run,) = planned(grid_file, out)
    codes = []
    driver = threading.Thread(target=lambda: codes.append(
        repro(grid_file, out, "--launcher", "submitit-local")))
    driver.start()
    try:
        deadline = time.monotonic() + 300
        while not (list_checkpoints(run.run_dir) and (run.run_dir / "lock.owner").exists()):
            assert driver.is_alive() and time.monotonic() < deadline, \
                f"no checkpoint:\n{capsys.readouterr().out}"
            time.sleep(0.01)
        trainer = int(re.match(r"pid (\d+)", (run.run_dir / "lock.owner").read_text())[1])
        job = _ppid(trainer)
        os.kill(trainer, signal.SIGUSR2)  # Slurm signals every process of the job step
        os.kill(job, signal.SIGUSR2)
    finally:
        driver.join(timeout=600)
    assert codes == [0], capsys.readouterr().out
    log = (run.run_dir / "train.log").read_text()
    stopped = re.search(r"stopped at step (\d+) and saved a checkpoint", log)
    assert stopped, f"the trainer did not save on the forwarded SIGTERM:\n{log}"
    assert 0 < int(stopped[1]) < total, "the run was not interrupted"
    assert f"(step {stopped[1]})" in log, f"the requeued job did not resume:\n{log}"
    commands = (run.run_dir / "command.txt").read_text()
    assert commands.count("rlmin.cli train") == 2 and f"--resume {run.run_dir}" in commands
    assert run.finished and not (run.run_dir / "failed.json").exists()

    from rlmin.config import load_config
    from rlmin.train import train

    reference = tmp_path / "uninterrupted"
    train(load_config(list(run.config_files), [*run.overrides, f"run_dir={reference}",
                                               f"train.seed={run.seed}", "train.progress=false"]))
    resumed = load_checkpoint(run.run_dir / "checkpoints" / f"step_{total:08d}.pt")["model"]
    expected = load_checkpoint(reference / "checkpoints" / f"step_{total:08d}.pt")["model"]
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), f"{key} differs after the requeue"


def test_a_failed_run_is_recorded_left_alone_and_rerun_when_asked(tmp_path, tiny_config, capsys):
    bad = "agent:\n  dropout: 0.0\n  no_such_option: 3\n"
    grid_file = make_grid(tmp_path / "configs", tiny_config, seeds=(0,), backbones={"tiny": bad})
    out = tmp_path / "out"
    (run,) = planned(grid_file, out)
    assert repro(grid_file, out, "--launcher", "submitit-local") == 1
    assert "FAILED tiny/tiny/seed0 (exit 2" in capsys.readouterr().out
    failure = json.loads((run.run_dir / "failed.json").read_text())
    assert failure["exit_code"] == 2 and "no_such_option" in failure["error"], failure
    assert failure["error"].startswith("error: ") and failure["time"]

    assert grid.main(["status", str(out)]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "tiny/tiny/seed0" in ln]
    assert line.startswith("failed ") and failure["error"] in line and "exit 2" in line

    commands = (run.run_dir / "command.txt").read_text()
    assert repro(grid_file, out, "--launcher", "submitit-local") == 1  # left alone
    text = capsys.readouterr().out
    assert "1 failed before (left alone: --rerun-failed" in text, text
    assert "add --rerun-failed to run them again" in text
    assert (run.run_dir / "command.txt").read_text() == commands, "a failed run was started"

    (grid_file.parent.parent / "backbones" / "tiny.yaml").write_text("agent:\n  dropout: 0.0\n")
    assert repro(grid_file, out, "--launcher", "submitit-local", "--rerun-failed") == 0
    assert run.finished and not (run.run_dir / "failed.json").exists()
    assert (run.run_dir / "command.txt").read_text().count("rlmin.cli train") == 2


class WritesResults:
    """A runner that "trains" by writing a finished run's results.json."""

    def __init__(self):
        self.ran = []

    def prepare(self, run):
        return 0

    def run(self, run, argv, log_path):
        self.ran.append(run.name)
        (run.run_dir / "results.json").write_text(json.dumps({"step": 1, "last_iterate": {}}))
        return 0


def test_an_unreadable_results_json_is_set_aside_and_the_run_goes_again(tmp_path, tiny_config,
                                                                        capsys):
    grid_file = make_grid(tmp_path / "configs", tiny_config, seeds=(0, 1, 2, 3))
    out = tmp_path / "out"
    runs = planned(grid_file, out)
    broken = {0: b"\x89PNG\r\n\x1a\n\x00\xff", 1: b'{"step": 12, "last_iterate": {"targ',
              2: b"[1, 2]"}
    for seed, content in broken.items():
        runs[seed].run_dir.mkdir(parents=True)
        (runs[seed].run_dir / "results.json").write_bytes(content)
        assert not runs[seed].finished
    runs[3].run_dir.mkdir(parents=True)
    (runs[3].run_dir / "results.json").write_text('{"last_iterate": {}, "mine": true}')
    runner = WritesResults()
    assert repro(grid_file, out, runner=runner) == 0
    text = capsys.readouterr().out
    assert sorted(runner.ran) == [runs[s].name for s in broken], "the broken runs go again"
    for seed, content in broken.items():
        (kept,) = runs[seed].run_dir.glob("results.json.broken-*")
        assert kept.read_bytes() == content, "the broken file must be kept as it was"
        assert runs[seed].finished
        (line,) = [ln for ln in text.splitlines() if ln.startswith(runs[seed].name + ":")]
        assert "moved it to results.json.broken-" in line and "goes again" in line
    assert "not text" in text and "not JSON" in text and "JSON list, not an object" in text
    assert json.loads((runs[3].run_dir / "results.json").read_text())["mine"] is True


# ----------------------------------------------------------------------------- Slurm
STAND_INS = {
    # Keeps the script it was given, runs it in the background (each array task in turn, with
    # the SLURM_* variables submitit's job environment reads) and prints the job id at once:
    # submitit moves the job's pickle into place only after sbatch answers.
    "sbatch": r'''#!/bin/bash
dir="$FAKE_SLURM"; script="${@: -1}"
id=$(( $(cat "$dir/last_id" 2>/dev/null || echo 1000) + 1 )); echo $id > "$dir/last_id"
cp "$script" "$dir/sbatch_$id.sh"
range=$(sed -n 's/^#SBATCH --array=\([0-9]*\)-\([0-9]*\).*/\1 \2/p' "$script")
run_task() {  # $1: the job id sacct reports; the rest: environment
  echo RUNNING > "$dir/state.$1"
  if env "${@:2}" SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NODEID=0 SLURM_NTASKS=1 \
      SLURM_JOB_NUM_NODES=1 bash "$dir/sbatch_$id.sh"; then echo COMPLETED > "$dir/state.$1"
  else echo FAILED > "$dir/state.$1"; fi
}
(
  if [ -n "$range" ]; then
    for t in $(seq $range); do
      run_task "${id}_$t" SLURM_JOB_ID=$((id * 100 + t)) SLURM_ARRAY_JOB_ID=$id SLURM_ARRAY_TASK_ID=$t
    done
  else
    run_task "$id" SLURM_JOB_ID=$id
  fi
) </dev/null >"$dir/job_$id.log" 2>&1 &
echo "Submitted batch job $id"
''',
    # Drops its options and sends the command's output where --output/--error say.
    "srun": r'''#!/bin/bash
out=/dev/null; err=/dev/null
while [[ "$1" == -* ]]; do
  case "$1" in --output) out="$2"; shift 2;; --error) err="$2"; shift 2;; *) shift;; esac
done
fill() { local p="$1"; p="${p//%A/${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}"
  p="${p//%a/${SLURM_ARRAY_TASK_ID:-0}}"; p="${p//%j/$SLURM_JOB_ID}"; echo "${p//%t/0}"; }
exec "$@" >>"$(fill "$out")" 2>>"$(fill "$err")"
''',
    "sacct": r'''#!/bin/bash
echo "JobID|State|NodeList"
for f in "$FAKE_SLURM"/state.*; do [ -e "$f" ] && echo "${f##*/state.}|$(cat "$f")|localhost"; done
exit 0
''',
    "squeue": '#!/bin/bash\necho "JOBID PARTITION NAME USER ST TIME NODES NODELIST(REASON)"\n',
    "scancel": '#!/bin/bash\necho "$@" >> "$FAKE_SLURM/scancel.log"\n',
    "scontrol": '#!/bin/bash\necho "$@" >> "$FAKE_SLURM/scontrol.log"\n',
}


def test_a_grid_submitted_to_slurm_as_a_job_array(tmp_path, tiny_config, monkeypatch, capsys):
    fake, bin_dir = tmp_path / "slurm", tmp_path / "bin"
    fake.mkdir()
    bin_dir.mkdir()
    for name, text in STAND_INS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("FAKE_SLURM", str(fake))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    grid_file = make_grid(tmp_path / "configs", tiny_config)
    with grid_file.open("a") as f:  # resources from the grid file; the flags win over them
        f.write("slurm:\n  partition: cpu\n  time: 240\n  mem_gb: 8\n  sbatch: {qos: low}\n")
    out = tmp_path / "out"
    assert repro(grid_file, out, "--launcher", "slurm", "--partition", "gpu-test", "--time", "30",
                 "--cpus-per-run", "1", "--gpus-per-run", "1", "--sbatch", "account=proj1",
                 "--array-parallelism", "2", "--wait") == 0, capsys.readouterr().out
    text = capsys.readouterr().out
    (script,) = fake.glob("sbatch_*.sh")  # one submission: the array
    sbatch = [ln for ln in script.read_text().splitlines() if ln.startswith("#SBATCH")]
    for line in ("--partition=gpu-test", "--time=30", "--cpus-per-task=1", "--gpus-per-node=1",
                 "--array=0-1%2", "--mem=8GB", "--qos=low", "--account=proj1",
                 "--signal=USR2@180", "--job-name=rlmin-tiny"):
        assert f"#SBATCH {line}" in sbatch, (line, sbatch)
    assert "submitted 2 run(s) to Slurm as job array 1001" in text, text
    runs = planned(grid_file, out)
    assert sorted(out.rglob("results.json")) == sorted(r.run_dir / "results.json" for r in runs)
    assert all(r.finished for r in runs)
    assert list((out / ".submitit").glob("1001_*_log.out"))
    assert text.count(" done  tiny/tiny/seed") == 2, text


def test_user_mistakes_are_one_line_and_exit_2(tmp_path, tiny_config, monkeypatch, capsys):
    grid_file = make_grid(tmp_path / "configs", tiny_config)
    out = tmp_path / "out"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch anywhere
    cases = [(["--launcher", "slurm", "--time", "10"], "no sbatch, srun, sacct on PATH"),
             (["--launcher", "slurm"], "needs a time limit"),
             (["--launcher", "slurm", "--time", "ten"], "--time takes a whole number"),
             (["--launcher", "slurm", "--time", "9", "--sbatch", "qos"], "--sbatch takes KEY=VALUE"),
             (["--launcher", "slurm", "--time", "9", "--sbatch", "array=0-3"], "not yours to set"),
             (["--launcher", "cloud"], "--launcher takes local, submitit-local, slurm"),
             (["--partition", "gpu"], "--partition is for --launcher slurm")]
    for argv, message in cases:
        assert repro(grid_file, out, *argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err and message in err, (argv, err)
    assert not out.exists(), "a refused command wrote into the grid folder"
    with grid_file.open("a") as f:
        f.write("slurm:\n  partitoin: gpu\n")
    assert repro(grid_file, out, "--launcher", "slurm", "--time", "10") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown slurm key(s) ['partitoin']" in err, err


# ----------------------------------------------------------------------------- status
@contextlib.contextmanager
def lock_held_elsewhere(path: Path):
    """Another process holds the OS lock on ``path`` (as a live trainer or driver would) while the
    block runs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from filelock import FileLock; "
         f"l = FileLock({str(path)!r}); l.acquire(); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_status_reads_each_runs_state_from_its_folder(tmp_path, capsys):
    out = tmp_path / "grid"
    names = [f"t/b/seed{k}" for k in range(6)]
    (out).mkdir()
    (out / "grid.json").write_text(json.dumps({"runs": [{"name": n} for n in names]}))
    finished, running, interrupted, failed, broken, _pending = (out / n for n in names)
    finished.mkdir(parents=True)
    (finished / "results.json").write_text(json.dumps(
        {"step": 12, "last_iterate": {"targets": {"100": {"normalized_mean": 42.25}}}}))
    for d in (running, interrupted):
        (d / "checkpoints").mkdir(parents=True)
        (d / "checkpoints" / "step_00000005.pt").write_bytes(b"")
        (d / "config.yaml").write_text("{}\n")
    (interrupted / "lock").write_text("")  # left behind by a killed run: nobody holds it
    (running / "lock.owner").write_text("pid 4242 on node7\n")
    with lock_held_elsewhere(running / "lock"):
        failed.mkdir(parents=True)
        (failed / "failed.json").write_text(json.dumps(
            {"exit_code": 1, "time": "2026-01-02T03:04:05", "error": "error: dataset gone"}))
        broken.mkdir(parents=True)
        (broken / "results.json").write_bytes(b"\x00\x01binary")
        from rlmin.cli import main

        assert main(["repro", "status", str(out)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert grid.lock_holder(running) == "pid 4242 on node7", "status took the live lock"
    rows = {ln.split()[1]: ln for ln in lines[1:-2]}
    expected = ["finished", "running", "interrupted", "failed", "broken", "pending"]
    assert [rows[n].split()[0] for n in names] == expected, lines
    assert "step 12" in rows[names[0]] and "100: 42.2" in rows[names[0]]
    assert "pid 4242 on node7" in rows[names[1]] and "step 5" in rows[names[1]]
    assert "step 5" in rows[names[2]] and "resumes it" in rows[names[2]]
    assert "exit 1" in rows[names[3]] and "error: dataset gone" in rows[names[3]]
    assert "is not JSON" in rows[names[4]]
    assert lines[-2] == ("6 runs: 1 finished, 1 running, 1 interrupted, 1 failed, 1 broken, "
                         "1 pending")
    assert "--rerun-failed" in lines[-1]
    # no grid.json: the folders alone (the pending run has none)
    (out / "grid.json").unlink()
    assert [name for name, _ in grid.grid_run_dirs(out)] == names[:5]


def test_status_calls_a_run_its_driver_is_starting_running(tmp_path):
    """Between a driver's claim (attempt.lock) and its trainer's own lock a run has a config.yaml
    and no checkpoint: status must not call it interrupted, nor a second driver restart it."""
    run = tmp_path / "t" / "b" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    assert grid.run_state(run)[0] == "interrupted"
    with lock_held_elsewhere(run / "attempt.lock"):
        state, detail = grid.run_state(run)
        assert (state, "grid driver" in detail) == ("running", True), detail
    assert grid.run_state(run)[0] == "interrupted", "the released claim still read as running"
