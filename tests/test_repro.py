"""rlmin.repro: grid planning, sharding, resuming (with an injected runner: nothing trains) and the
report from a hand-made grid folder (results.json files and tiny TensorBoard event files)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from rlmin import repro

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- fakes
def fake_results(backbone: str, seed: int, last: dict, history: list[dict] | None = None,
                 dataset_id="mujoco/hopper/medium-v0", name="hopper-medium", steps=1500) -> dict:
    """A results.json in rlmin.train.build_results's layout. ``last``: {target: normalised};
    raw return = 10 x normalised; ``history``: [{"step": s, target: normalised, ...}]."""
    def block(scores):
        return {str(t): {"return_mean": 10.0 * v, "normalized_mean": v} for t, v in scores.items()}

    hist = [{"step": h["step"], "targets": block({k: v for k, v in h.items() if k != "step"})}
            for h in (history or [])] + [{"step": steps, "targets": block(last)}]
    bc = backbone == "bc"
    return {
        "dataset": {"id": dataset_id, "env_id": "Hopper-v5", "task": "hopper", "ref_min": 24.8,
                    "ref_max": 4098.0, "ref_source": "task table (hopper): test",
                    "behaviour_return": 3000.0, "behaviour_normalized": 73.0,
                    "target_returns": [float(t) for t in last]},
        "env_id": "Hopper-v5", "agent": "bc" if bc else "decision",
        "backbone": "mlp" if bc else backbone, "seed": seed, "step": steps, "act_mode": None,
        "last_iterate": {"env_id": "Hopper-v5", "episodes": 10, "targets": {
            str(t): {"target_return": float(t), "episodes": 10, "return_mean": 10.0 * v,
                     "return_std": 1.0, "normalized_mean": v, "normalized_std": 0.1}
            for t, v in last.items()}},
        "best_during_training": None, "history": hist,
        "config": {"data": {"dataset": name, "mode": "segment", "seq_len": 20},
                   "agent": {"name": "bc" if bc else "decision", "backbone": backbone,
                             "token_layout": "interleaved"}},
    }


def write_run(run_dir: Path, results: dict, losses=(1.0, 0.5), evals=None, command=None) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results))
    if command:
        (run_dir / "command.txt").write_text(f"# when\n{command}\n")
    with SummaryWriter(run_dir / "tb") as w:
        for i, loss in enumerate(losses):
            w.add_scalar("train/loss", loss, (i + 1) * 100)
        for step, per_target in (evals or {}).items():
            for t, v in per_target.items():
                w.add_scalar(f"eval/normalized_mean/target_{t}", v, step)


# seeds x (last 3600, last 1800, best-so-far 3600 at step 500)
MINGRU = {0: (50.0, 40.0, 55.0), 1: (60.0, 42.0, 61.0), 2: (70.0, 44.0, 20.0)}
BC = {0: (30.0, 30.0, 10.0), 1: (32.0, 31.0, 10.0), 2: (34.0, 32.0, 10.0)}


@pytest.fixture
def grid(tmp_path):
    root = tmp_path / "grid"
    for backbone, table in (("mingru", MINGRU), ("bc", BC)):
        for seed, (hi, lo, early) in table.items():
            res = fake_results(backbone, seed, {3600: hi, 1800: lo},
                               history=[{"step": 500, 3600: early, 1800: lo - 5}])
            write_run(root / "hopper-medium" / backbone / f"seed{seed}", res,
                      losses=(1.0 + seed, 0.5, 0.25),
                      evals={500: {3600: early, 1800: lo - 5}, 1500: {3600: hi, 1800: lo}},
                      command=f"python -m rlmin.cli train x.yaml train.seed={seed}")
    (root / repro.DRIVER_LOG).write_text("# when\nrlmin repro run --preset small --out grid\n")
    return root


class FakeRunner:
    """Records what it is asked to run; "trains" by writing a results.json (or fails)."""

    def __init__(self, fail=()):
        self.calls, self.prepared, self.fail = [], [], set(fail)

    def prepare(self, run):
        self.prepared.append(run.task)
        return 0

    def run(self, run, argv, log_path):
        self.calls.append((run.name, argv))
        if run.name in self.fail:
            return 1
        if run.name == "hopper-medium/bc/seed1" and "raise" in self.fail:
            raise OSError("cannot start")
        (run.run_dir / "results.json").write_text(json.dumps(
            fake_results(run.backbone, run.seed, {3600: 1.0})))
        return 0


# ----------------------------------------------------------------------------- planning
def test_small_preset_expands_to_a_grid(tmp_path):
    p = repro.PRESETS["small"]
    runs = repro.plan(p.tasks, p.backbones, p.seeds, tmp_path, p.overrides)
    assert len(runs) == 12 and len(p.seeds) >= 3
    assert [r.name for r in runs[:4]] == ["hopper-medium/mingru/seed0", "hopper-medium/mingru/seed1",
                                         "hopper-medium/mingru/seed2", "hopper-medium/minlstm/seed0"]
    r = runs[0]
    assert r.run_dir == tmp_path / "hopper-medium" / "mingru" / "seed0"
    argv = r.argv(num_threads=1)
    assert argv[1:4] == ["-m", "rlmin.cli", "train"]
    assert argv[4].endswith("tasks/hopper-medium.yaml") and argv[5].endswith("backbones/mingru.yaml")
    assert "train.steps=3000" in argv and f"run_dir={r.run_dir}" in argv
    assert "train.seed=0" in argv and "train.num_threads=1" in argv
    assert all(Path(f).is_file() for f in r.config_files)
    # a user-given thread count wins over the driver's
    own = repro.plan(["hopper-medium"], ["mingru"], [0], tmp_path, ["train.num_threads=3"])[0]
    assert [a for a in own.argv(num_threads=1) if "num_threads" in a] == ["train.num_threads=3"]


def test_full_preset_and_bad_names(tmp_path):
    p = repro.PRESETS["full"]
    runs = repro.plan(p.tasks, p.backbones, p.seeds, tmp_path, p.overrides)
    assert len(runs) == 9 * 6 * 5
    assert {r.task for r in runs} == {f"{e}-{lv}" for e in repro.ENVS for lv in repro.LEVELS}
    with pytest.raises(repro.ReproError, match="choose from"):
        repro.plan(["hopper-nope"], ["mingru"], [0], tmp_path)
    with pytest.raises(repro.ReproError, match="driver sets"):
        repro.plan(["hopper-medium"], ["mingru"], [0], tmp_path, ["train.seed=3"])
    with pytest.raises(repro.ReproError, match="repeat"):
        repro.plan(["hopper-medium"], ["mingru"], [0, 0], tmp_path)


def test_shards_partition_the_grid(tmp_path):
    p = repro.PRESETS["full"]
    runs = repro.plan(p.tasks, p.backbones, p.seeds, tmp_path)
    shards = [repro.shard(runs, i, 4) for i in range(4)]
    names = [r.name for s in shards for r in s]
    assert sorted(names) == sorted(r.name for r in runs) and len(set(names)) == len(runs)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # a shard does not depend on what is finished
    (runs[0].run_dir).mkdir(parents=True)
    (runs[0].run_dir / "results.json").write_text("{}")
    assert [r.name for r in repro.shard(runs, 0, 4)] == [r.name for r in shards[0]]
    assert repro.parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "0/0", "-1/2"):
        with pytest.raises(repro.ReproError):
            repro.parse_shard(bad)


# ----------------------------------------------------------------------------- running
def test_finished_runs_are_skipped_and_commands_recorded(tmp_path):
    runs = repro.plan(["hopper-medium"], ["mingru", "bc"], [0, 1, 2], tmp_path / "g")
    runs[1].run_dir.mkdir(parents=True)
    (runs[1].run_dir / "results.json").write_text("{}")
    runner = FakeRunner(fail={"hopper-medium/bc/seed2"})
    out = repro.run_grid(runs, workers=2, runner=runner, cores=4, echo=lambda s: None)
    ran = sorted(name for name, _ in runner.calls)
    assert ran == sorted(r.name for r in runs if r is not runs[1])
    assert [r.name for r in out.skipped] == [runs[1].name]
    assert [r.name for r, _ in out.failed] == ["hopper-medium/bc/seed2"]
    assert len(out.succeeded) == 4
    assert runner.prepared == ["hopper-medium"]  # one dataset preparation before the pool
    for _, argv in runner.calls:
        assert "train.num_threads=2" in argv  # 4 cores / 2 workers
    cmd = (runs[0].run_dir / "command.txt").read_text().splitlines()
    assert cmd[0].startswith("# ") and "rlmin.cli train" in cmd[1]
    # again: only the failed run is left
    again = FakeRunner()
    repro.run_grid(runs, workers=1, runner=again, echo=lambda s: None)
    assert [name for name, _ in again.calls] == ["hopper-medium/bc/seed2"]
    assert again.prepared == []  # sequential: no separate preparation


def test_a_runner_that_raises_fails_one_run_only(tmp_path):
    runs = repro.plan(["hopper-medium"], ["bc"], [0, 1, 2], tmp_path)
    out = repro.run_grid(runs, runner=FakeRunner(fail={"raise"}), echo=lambda s: None)
    assert [r.name for r, _ in out.failed] == ["hopper-medium/bc/seed1"]
    assert len(out.succeeded) == 2


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    run = repro.plan(["hopper-medium"], ["mingru"], [0], tmp_path)[0]
    (run.run_dir / "checkpoints").mkdir(parents=True)
    (run.run_dir / "checkpoints" / "step_00000500.pt").write_bytes(b"")
    assert run.argv()[-2:] == ["--resume", str(run.run_dir)]


def test_main_with_injected_runner_and_shards(tmp_path, capsys):
    out = tmp_path / "g"
    base = ["run", "--tasks", "hopper-medium", "--backbones", "mingru,bc", "--seeds", "3",
            "--out", str(out), "--no-report", "train.steps=5"]
    runner = FakeRunner()
    assert repro.main(base + ["--shard", "1/2"], runner=runner) == 0
    assert len(runner.calls) == 3
    assert all("train.steps=5" in argv for _, argv in runner.calls)
    runner2 = FakeRunner()
    assert repro.main(base + ["--shard", "0/2"], runner=runner2) == 0
    assert {n for n, _ in runner.calls} | {n for n, _ in runner2.calls} == {
        f"hopper-medium/{b}/seed{s}" for b in ("mingru", "bc") for s in range(3)}
    assert len(list(out.rglob("results.json"))) == 6
    log = (out / repro.DRIVER_LOG).read_text()
    assert "--shard 1/2" in log and "--shard 0/2" in log and "train.steps=5" in log
    assert "MINARI_DATASETS_PATH=" in log  # set by conftest: recorded with the command
    grid = json.loads((out / repro.GRID_FILE).read_text())
    assert len(grid["runs"]) == 6 and grid["seeds"] == [0, 1, 2]
    # everything finished: a third call runs nothing
    runner3 = FakeRunner()
    assert repro.main(base, runner=runner3) == 0 and runner3.calls == []
    # dry run prints commands and runs nothing
    capsys.readouterr()
    assert repro.main(["run", "--preset", "small", "--out", str(tmp_path / "d"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.count("rlmin.cli train") == 12 and not (tmp_path / "d").exists()
    assert repro.main(["run", "--out", str(out), "--seeds", "0"]) == 2  # bad: a count of 0


# ----------------------------------------------------------------------------- the report
def test_report_table_statistics_and_pngs(grid):
    result = repro.report(grid, n_resamples=2000, echo=lambda s: None)
    rows = result["rows"]
    assert [(r["label"], r["target_key"]) for r in rows] == [
        ("mingru", "3600"), ("mingru", "1800"), ("bc", "3600"), ("bc", "1800")]
    mg = rows[0]
    assert mg["n"] == 3 and mg["seeds"] == [0, 1, 2]
    assert mg["normalized"]["mean"] == pytest.approx(60.0)
    assert mg["normalized"]["std"] == pytest.approx(10.0)
    assert mg["normalized"]["iqm"] == pytest.approx(60.0)  # weights 1/6, 2/3, 1/6
    assert mg["normalized"]["ci_low"] < 60.0 < mg["normalized"]["ci_high"]
    assert 50.0 <= mg["normalized"]["ci_low"] and mg["normalized"]["ci_high"] <= 70.0
    assert mg["raw"]["mean"] == pytest.approx(600.0)
    # best during training, per run: max(55, 50), max(61, 60), max(20, 70) -> mean 62
    assert mg["best_normalized"]["mean"] == pytest.approx(62.0)
    assert mg["dt_paper_d4rl_v2"] == 67.6
    bc = rows[2]
    assert bc["normalized"]["mean"] == pytest.approx(32.0)
    assert bc["best_normalized"]["mean"] == pytest.approx(32.0)  # early evals were worse

    md = (grid / "report.md").read_text()
    assert "best during training (normalised; optimistic, not the headline)" in md
    assert "DT paper (D4RL-v2, not comparable)" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| mujoco/hopper/medium-v0 | mingru | 3600"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:] == ["1500", "3", "60.0 ± 10.0", cells[6], "60.0", "600 ± 100", "62.0 ± 7.5",
                         "67.6"]
    assert re.fullmatch(r"\[\d+\.\d, \d+\.\d\]", cells[6])
    assert "rlmin repro run --preset small --out grid" in md  # the driver command
    assert md.count("python -m rlmin.cli train x.yaml") == 6  # each run's command
    assert "Minari" in md and "Gymnasium v5" in md
    for png in ("scores.png", "curves.png"):
        assert (grid / png).read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((grid / "report.json").read_text())
    assert len(saved["rows"]) == 4


def test_report_through_the_cli(grid, capsys):
    from rlmin.cli import main

    assert main(["repro", "report", str(grid), "--resamples", "500"]) == 0
    assert "mingru" in capsys.readouterr().out
    assert main(["repro", "report", str(grid / "nothing-here")]) == 2


def test_learning_curves_from_tensorboard(grid):
    scalars = repro.read_scalars(grid / "hopper-medium" / "mingru" / "seed1" / "tb")
    assert scalars["train/loss"] == ([100, 200, 300], [2.0, 0.5, 0.25])
    assert scalars["eval/normalized_mean/target_3600"] == ([500, 1500], [61.0, 60.0])
    curves = repro.collect_curves(repro.collect(grid))
    series = curves["mujoco/hopper/medium-v0"]["mingru"]["train/loss"]
    assert len(series) == 3
    from rlmin.plots import mean_curve

    steps, mean, lo, hi = mean_curve(series)
    np.testing.assert_allclose(steps, [100, 200, 300])
    np.testing.assert_allclose(mean, [2.0, 0.5, 0.25])
    np.testing.assert_allclose(lo, [1.0, 0.5, 0.25])
    np.testing.assert_allclose(hi, [3.0, 0.5, 0.25])


def test_rows_keep_variants_and_training_lengths_apart(tmp_path):
    root = tmp_path / "g"
    for seed in range(3):
        write_run(root / "a" / f"s{seed}", fake_results("mingru", seed, {3600: 10.0}, steps=100))
        write_run(root / "b" / f"s{seed}", fake_results("mingru", seed, {3600: 20.0}, steps=200))
        ep = fake_results("mingru", seed, {3600: 30.0}, steps=200)
        ep["config"]["data"].update(mode="episode", seq_len=1000)
        write_run(root / "c" / f"s{seed}", ep)
    rows = repro.aggregate(repro.collect(root), n_resamples=200)
    got = {(r["label"], r["steps"]): r["normalized"]["mean"] for r in rows}
    assert got == {("mingru", 100): 10.0, ("mingru", 200): 20.0,
                   ("mingru [episode L=1000]", 200): 30.0}


def test_task_level_parsing():
    assert repro.task_level("hopper-medium") == ("hopper", "medium")
    assert repro.task_level(None, "mujoco/walker2d/medium-expert-v0") == ("walker2d", "medium-expert")
    assert repro.task_level("halfcheetah-medium-replay") == ("halfcheetah", "medium-replay")
    assert repro.task_level("mujoco/hopper/simple-v0") is None


def test_run_label_names_only_what_differs_from_the_backbone_defaults():
    from rlmin.repro import run_label

    def res(backbone, act, agent="decision", **cfg):
        return {"agent": agent, "backbone": backbone, "act_mode": act, "config": cfg}

    assert run_label(res("mingru", "carry")) == "mingru"
    assert run_label(res("mingru", None, agent={"act_mode": "carry"})) == "mingru"
    assert run_label(res("mingru", "window")) == "mingru [act=window]"
    assert run_label(res("transformer", "window")) == "transformer"
    assert run_label(res("mlp", None, agent="bc")) == "bc"
    assert run_label(res("mingru", "carry", data={"mode": "episode", "seq_len": 1000})) == \
        "mingru [episode L=1000]"
