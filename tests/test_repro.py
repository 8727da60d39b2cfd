"""rlmin.grid and rlmin.report: grid files, planning, sharding, resuming (with an injected runner:
nothing trains) and the report from hand-made grid folders (results.json files, old and new
layouts, and tiny TensorBoard event files)."""
from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from rlmin import grid, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- fakes
def _block(scores: dict) -> dict:
    return {str(t): {"return_mean": 10.0 * v, "normalized_mean": v} for t, v in scores.items()}


def fake_results(label: str, seed: int, last: dict, history: list[dict] | None = None,
                 dataset_id="mujoco/hopper/medium-v0", task="hopper", level="medium",
                 steps=1500, **config) -> dict:
    """A results.json in the trainer's layout. ``last``: {target: normalised}; raw return = 10 x
    normalised; ``history``: [{"step": s, target: normalised, ...}]; ``config``: extra sections."""
    hist = [{"step": h["step"], "targets": _block({k: v for k, v in h.items() if k != "step"})}
            for h in (history or [])] + [{"step": steps, "targets": _block(last)}]
    return {
        "agent": "agent-" + label, "label": label,
        "eval_spec": {"env_id": "Hopper-v5", "max_episode_steps": 1000,
                      "target_returns": [float(t) for t in last], "ref_min": 24.8,
                      "ref_max": 4098.0, "ref_source": "task table (hopper): test", "obs_dim": 11,
                      "act_dim": 3, "dataset_id": dataset_id, "task": task, "level": level},
        "dataset": {"id": dataset_id, "steps": 1000, "episodes": 10, "behaviour_return": 3000.0,
                    "behaviour_normalized": 73.0},
        "seed": seed, "step": steps,
        "last_iterate": {"env_id": "Hopper-v5", "episodes": 10, "targets": {
            str(t): {"target_return": float(t), "episodes": 10, "return_mean": 10.0 * v,
                     "return_std": 1.0, "normalized_mean": v, "normalized_std": 0.1}
            for t, v in last.items()}},
        "best_during_training": None, "history": hist,
        "config": {"name": f"{task}-{level}", "data": {"dataset": f"{task}-{level}",
                                                       "mode": "segment", "seq_len": 20},
                   "agent": {"name": "agent-" + label}, "train": {"seed": seed, "steps": steps},
                   **config},
    }


def old_results(seed: int, last: dict, backbone="mingru", agent="decision", config_name=None,
                dataset_id="mujoco/hopper/medium-v0") -> dict:
    """A results.json as trainers before the eval spec wrote it: no label, no eval_spec."""
    res = fake_results("unused", seed, last, dataset_id=dataset_id)
    del res["label"], res["eval_spec"]
    res.update(agent=agent, backbone=backbone, env_id="Hopper-v5", act_mode="carry")
    res["dataset"].update(env_id="Hopper-v5", task="hopper", ref_min=24.8, ref_max=4098.0,
                          ref_source="old", target_returns=[float(t) for t in last])
    res["config"]["name"] = config_name
    return res


def write_run(run_dir: Path, results: dict, losses=(1.0, 0.5), evals=None, command=None) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results))
    if command:
        (run_dir / "command.txt").write_text(f"# when\n{command}\n")
    if losses or evals:
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
def grid_dir(tmp_path):
    root = tmp_path / "grid"
    for label, table in (("mingru", MINGRU), ("bc", BC)):
        for seed, (hi, lo, early) in table.items():
            res = fake_results(label, seed, {3600: hi, 1800: lo},
                               history=[{"step": 500, 3600: early, 1800: lo - 5}])
            write_run(root / "hopper-medium" / label / f"seed{seed}", res,
                      losses=(1.0 + seed, 0.5, 0.25),
                      evals={500: {3600: early, 1800: lo - 5}, 1500: {3600: hi, 1800: lo}},
                      command=f"python -m rlmin.cli train x.yaml train.seed={seed}")
    (root / grid.DRIVER_LOG).write_text("# when\nrlmin repro run --grid small --out grid\n")
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
def test_small_grid_file_expands_to_a_grid(tmp_path):
    g = grid.load_grid("small")
    runs = grid.plan(g.tasks, g.backbones, g.seeds, tmp_path, g.overrides,
                     backbone_overrides=g.backbone_overrides)
    assert len(runs) == 12 and len(g.seeds) >= 3 and g.workers == 2
    bc = next(r for r in runs if r.backbone == "bc")  # each agent gets its own options
    assert "agent.hidden=[64,64]" in bc.overrides and "agent.d_model=64" not in bc.overrides
    assert [r.name for r in runs[:4]] == ["hopper-medium/mingru/seed0", "hopper-medium/mingru/seed1",
                                         "hopper-medium/mingru/seed2", "hopper-medium/minlstm/seed0"]
    r = runs[0]
    assert r.run_dir == tmp_path / "hopper-medium" / "mingru" / "seed0"
    argv = r.argv(num_threads=1)
    assert argv[1:4] == ["-m", "rlmin.cli", "train"]
    assert argv[4].endswith("tasks/hopper-medium.yaml") and argv[5].endswith("backbones/mingru.yaml")
    assert "train.steps=3000" in argv and "train.lr=1e-3" in argv and f"run_dir={r.run_dir}" in argv
    assert "train.seed=0" in argv and "train.num_threads=1" in argv
    assert all(Path(f).is_file() for f in r.config_files)
    # a user-given thread count wins over the driver's
    own = grid.plan(["hopper-medium"], ["mingru"], [0], tmp_path, ["train.num_threads=3"])[0]
    assert [a for a in own.argv(num_threads=1) if "num_threads" in a] == ["train.num_threads=3"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (grid.CONFIG_ROOT / "grids").glob("*.yaml")))
def test_every_run_of_a_shipped_grid_is_a_valid_config(name, tmp_path):
    from rlmin.config import load_config

    g = grid.load_grid(name)
    for run in grid.plan(g.tasks, g.backbones, g.seeds[:1], tmp_path, g.overrides,
                         backbone_overrides=g.backbone_overrides, variants=g.variants):
        load_config(list(run.config_files), list(run.overrides))  # an agent's unknown option fails


def test_full_grid_file_and_bad_names(tmp_path):
    g = grid.load_grid(str(grid.CONFIG_ROOT / "grids" / "full.yaml"))  # a path works too
    runs = grid.plan(g.tasks, g.backbones, g.seeds, tmp_path, g.overrides)
    assert len(runs) == 9 * 6 * 5 and len({r.task for r in runs}) == 9
    assert {r.task for r in runs} == {p.stem for p in (grid.CONFIG_ROOT / "tasks").glob("*.yaml")}
    with pytest.raises(grid.ReproError, match="choose from .*small"):
        grid.load_grid("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [hopper-medium]\nbackbones: [mingru]\nseeds: [0]\nsteps: 3\n")
    with pytest.raises(grid.ReproError, match="unknown key.*steps"):
        grid.load_grid(str(bad))
    with pytest.raises(grid.ReproError, match="choose from"):
        grid.plan(["hopper-nope"], ["mingru"], [0], tmp_path)
    with pytest.raises(grid.ReproError, match="driver sets"):
        grid.plan(["hopper-medium"], ["mingru"], [0], tmp_path, ["train.seed=3"])
    with pytest.raises(grid.ReproError, match="key=value"):
        grid.plan(["hopper-medium"], ["mingru"], [0], tmp_path, backbone_overrides={"mingru": ["x"]})
    # the command line's overrides come last, so they win over the grid's
    (run,) = grid.plan(["hopper-medium"], ["mingru"], [0], tmp_path, ["agent.d_model=8"],
                       backbone_overrides={"mingru": ["agent.d_model=64"], "bc": ["agent.hidden=[]"]})
    assert run.overrides == ("agent.d_model=64", "agent.d_model=8")
    with pytest.raises(grid.ReproError, match="repeat"):
        grid.plan(["hopper-medium"], ["mingru"], [0, 0], tmp_path)


def test_shards_partition_the_grid(tmp_path):
    g = grid.load_grid("full")
    runs = grid.plan(g.tasks, g.backbones, g.seeds, tmp_path)
    shards = [grid.shard(runs, i, 4) for i in range(4)]
    names = [r.name for s in shards for r in s]
    assert sorted(names) == sorted(r.name for r in runs) and len(set(names)) == len(runs)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # a shard does not depend on what is finished
    (runs[0].run_dir).mkdir(parents=True)
    (runs[0].run_dir / "results.json").write_text("{}")
    assert [r.name for r in grid.shard(runs, 0, 4)] == [r.name for r in shards[0]]
    assert grid.parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "0/0", "-1/2"):
        with pytest.raises(grid.ReproError):
            grid.parse_shard(bad)


# ----------------------------------------------------------------------------- running
def test_finished_runs_are_skipped_and_commands_recorded(tmp_path):
    runs = grid.plan(["hopper-medium"], ["mingru", "bc"], [0, 1, 2], tmp_path / "g")
    runs[1].run_dir.mkdir(parents=True)
    (runs[1].run_dir / "results.json").write_text(json.dumps(fake_results("mingru", 1, {3600: 1.0})))
    runner = FakeRunner(fail={"hopper-medium/bc/seed2"})
    out = grid.run_grid(runs, workers=2, runner=runner, cores=4, echo=lambda s: None)
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
    grid.run_grid(runs, workers=1, runner=again, echo=lambda s: None)
    assert [name for name, _ in again.calls] == ["hopper-medium/bc/seed2"]
    assert again.prepared == []  # sequential: no separate preparation


def test_a_runner_that_raises_fails_one_run_only(tmp_path):
    runs = grid.plan(["hopper-medium"], ["bc"], [0, 1, 2], tmp_path)
    out = grid.run_grid(runs, runner=FakeRunner(fail={"raise"}), echo=lambda s: None)
    assert [r.name for r, _ in out.failed] == ["hopper-medium/bc/seed1"]
    assert len(out.succeeded) == 2


def test_two_drivers_of_one_grid_never_both_start_a_run(tmp_path):
    """A second `repro run` of the same grid (a second terminal, a resubmitted array) while the
    first driver's trainer is in its first seconds: no checkpoint yet, and its own run lock not
    taken yet. The second must leave that run alone, not set its config.yaml and tb/ aside (the
    first trainer then died on its vanished tb/ folder) and start it over."""
    import threading

    runs = grid.plan(["hopper-medium"], ["bc"], [0, 1], tmp_path)
    first, second = runs
    started, go = threading.Event(), threading.Event()

    class SlowStart(FakeRunner):  # a trainer that has written its first files, no checkpoint
        def run(self, run, argv, log_path):
            if run is first:
                (run.run_dir / "config.yaml").write_text("seed: 0\n")
                (run.run_dir / "tb").mkdir()
                started.set()
                assert go.wait(10)
            return super().run(run, argv, log_path)

    outcomes = {}
    driver_a = threading.Thread(target=lambda: outcomes.setdefault("a", grid.run_grid(
        [first], runner=SlowStart(), echo=lambda s: None)))
    driver_a.start()
    assert started.wait(10)
    lines, runner_b = [], FakeRunner()
    outcomes["b"] = grid.run_grid(runs, runner=runner_b, echo=lines.append)
    go.set()
    driver_a.join(10)
    assert [name for name, _ in runner_b.calls] == [second.name]  # the other run only
    assert [r.name for r in outcomes["b"].running] == [first.name]
    assert any("skipped hopper-medium/bc/seed0" in line for line in lines)
    assert sorted(p.name for p in first.run_dir.iterdir()) == [
        "attempt.lock", "command.txt", "config.yaml", "results.json", "tb"]  # nothing set aside
    assert [r.name for r in outcomes["a"].succeeded] == [first.name]
    # a run another driver finished since this one's triage is skipped, not run again
    with grid.claim_attempt(first) as taken:
        assert taken == "finished elsewhere"


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    run = grid.plan(["hopper-medium"], ["mingru"], [0], tmp_path)[0]
    (run.run_dir / "checkpoints").mkdir(parents=True)
    (run.run_dir / "checkpoints" / "step_00000500.pt").write_bytes(b"")
    assert run.argv()[-2:] == ["--resume", str(run.run_dir)]


def test_main_with_injected_runner_and_shards(tmp_path, capsys):
    out = tmp_path / "g"
    base = ["run", "--tasks", "hopper-medium", "--backbones", "mingru,bc", "--seeds", "3",
            "--out", str(out), "--no-report", "train.steps=5"]
    runner = FakeRunner()
    assert grid.main(base + ["--shard", "1/2"], runner=runner) == 0
    assert len(runner.calls) == 3
    assert all("train.steps=5" in argv for _, argv in runner.calls)
    runner2 = FakeRunner()
    assert grid.main(base + ["--shard", "0/2"], runner=runner2) == 0
    assert {n for n, _ in runner.calls} | {n for n, _ in runner2.calls} == {
        f"hopper-medium/{b}/seed{s}" for b in ("mingru", "bc") for s in range(3)}
    assert len(list(out.rglob("results.json"))) == 6
    log = (out / grid.DRIVER_LOG).read_text()
    assert "--shard 1/2" in log and "--shard 0/2" in log and "train.steps=5" in log
    assert "MINARI_DATASETS_PATH=" in log  # set by conftest: recorded with the command
    plan = json.loads((out / grid.GRID_FILE).read_text())
    assert len(plan["runs"]) == 6 and plan["seeds"] == [0, 1, 2]
    first = plan["runs"][0]  # which config files each run used: the report reads them here
    assert first["task"] == "hopper-medium" and first["task_config"].endswith("hopper-medium.yaml")
    assert first["backbone_config"].endswith("mingru.yaml")
    # everything finished: a third call runs nothing
    runner3 = FakeRunner()
    assert grid.main(base, runner=runner3) == 0 and runner3.calls == []
    # dry run prints commands and runs nothing; --preset is the old spelling of --grid
    for flag in ("--grid", "--preset"):
        capsys.readouterr()
        assert grid.main(["run", flag, "small", "--out", str(tmp_path / "d"), "--dry-run"]) == 0
        text = capsys.readouterr().out
        assert text.count("rlmin.cli train") == 12 and not (tmp_path / "d").exists()
    assert grid.main(["run", "--out", str(out), "--seeds", "0"]) == 2  # bad: a count of 0
    assert grid.main(["run", "--grid", "nope", "--out", str(out)]) == 2
    # "--seeds 3" on a grid of seeds 3-5 is a count (0, 1, 2): refused with the list spelling, nothing run
    capsys.readouterr()
    table = tmp_path / "table"
    assert grid.main(["run", "--grid", "table", "--out", str(table), "--seeds", "3"],
                     runner=FakeRunner()) == 2
    assert "--seeds 3, for seed 3 alone" in capsys.readouterr().err and not table.exists()
    assert grid.main(["run", "--grid", "table", "--out", str(table), "--seeds", "3,", "--dry-run"]) == 0
    assert "36 runs" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the report
def test_report_tables_statistics_and_pngs(grid_dir):
    result = report.report(grid_dir, n_resamples=2000, echo=lambda s: None)
    rows = result["rows"]
    assert [(r["label"], r["target_key"]) for r in rows] == [
        ("bc", "3600"), ("bc", "1800"), ("mingru", "3600"), ("mingru", "1800")]
    mg = rows[2]
    assert mg["n"] == 3 and mg["seeds"] == [0, 1, 2]
    assert (mg["task"], mg["level"]) == ("hopper", "medium")
    assert mg["normalized"]["mean"] == pytest.approx(60.0)
    assert mg["normalized"]["std"] == pytest.approx(10.0)
    assert mg["normalized"]["ci_low"] < 60.0 < mg["normalized"]["ci_high"]
    assert 50.0 <= mg["normalized"]["ci_low"] and mg["normalized"]["ci_high"] <= 70.0
    assert mg["raw"]["mean"] == pytest.approx(600.0)
    # best during training, per run: max(55, 50), max(61, 60), max(20, 70) -> mean 62
    assert mg["best_normalized"]["mean"] == pytest.approx(62.0)
    # the DT paper's number comes from the task registry (envs/tasks.py), labelled D4RL-v2
    assert [(p["method"], p["score"], p["benchmark"]) for p in mg["published"]] == [
        ("DT", 67.6, "D4RL-v2")]
    assert rows[0]["normalized"]["mean"] == pytest.approx(32.0)
    assert rows[0]["best_normalized"]["mean"] == pytest.approx(32.0)  # early evals were worse
    # per agent: the IQM of the last-iterate scores at the first target (3600), all runs
    agents = {a["label"]: a for a in result["agents"]}
    assert agents["mingru"]["iqm"] == pytest.approx(60.0)  # 3 runs: trim_mean drops none
    assert agents["mingru"]["n"] == 3 and agents["mingru"]["datasets"] == ["mujoco/hopper/medium-v0"]
    assert 50.0 - 1e-9 <= agents["mingru"]["ci_low"] < 60.0 < agents["mingru"]["ci_high"] <= 70.0 + 1e-9
    assert agents["bc"]["iqm"] == pytest.approx(32.0)
    assert result["warnings"] == []

    md = (grid_dir / "report.md").read_text()
    assert "best during training (normalised; optimistic, not the headline)" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| mujoco/hopper/medium-v0 | mingru | 3600"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # no D4RL-v2 cell beside a Minari score: the paper's number has its own table, after ours
    # the last two: parameters and timesteps seen, which these results.json do not record
    assert cells[3:] == ["1500", "3", "60.0 ± 10.0", cells[6], "600 ± 100", "62.0 ± 7.5", "—",
                         "–", "–"]
    ours, papers = md.split("## Published on another benchmark")
    assert "67.6" not in ours and "D4RL-v2" not in ours.split("## Per agent")[1]
    assert "| task | level | DT paper (D4RL-v2) |" in papers and "| hopper | medium | 67.6 |" in papers
    assert re.fullmatch(r"\[\d+\.\d, \d+\.\d\]", cells[6])
    line = next(ln for ln in md.splitlines() if ln.startswith("| mingru | 1500"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:5] == ["3", "1", "60.0"] and cells[6] == "60.0"
    assert "stratified bootstrap" in md and "Chen et al. 2021" in md
    assert "rlmin repro run --grid small --out grid" in md  # the driver command
    assert md.count("python -m rlmin.cli train x.yaml") == 6  # each run's command
    assert "Minari" in md and "Gymnasium v5" in md
    for png in ("headline.png", "scores.png", "curves.png"):
        assert (grid_dir / png).read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((grid_dir / "report.json").read_text())
    assert len(saved["rows"]) == 4 and len(saved["agents"]) == 2


def test_agent_iqm_pools_datasets_with_a_stratified_ci(tmp_path):
    root = tmp_path / "g"
    for seed, (a, b) in enumerate([(50.0, 10.0), (60.0, 20.0), (70.0, 30.0)]):
        write_run(root / "m" / f"s{seed}", fake_results("mingru", seed, {3600: a}), losses=())
        write_run(root / "r" / f"s{seed}", fake_results(
            "mingru", seed, {3600: b}, dataset_id="rlmin/hopper/medium-replay-v0",
            level="medium-replay"), losses=())
    records = report.collect(root)
    (agent,) = report.agent_rows(records, n_resamples=2000)
    assert agent["n"] == 6 and len(agent["datasets"]) == 2
    assert agent["iqm"] == pytest.approx(40.0)  # trim_mean: 10 and 70 dropped, (20+30+50+60)/4
    # every resample keeps 3 runs of each dataset: the IQM stays within [30, 50]
    assert 30.0 - 1e-9 <= agent["ci_low"] < 40.0 < agent["ci_high"] <= 50.0 + 1e-9
    rows = report.dataset_rows(records, n_resamples=200)
    assert [(r["level"], r["published"][0]["score"]) for r in rows] == [
        ("medium", 67.6), ("medium-replay", 82.7)]


def test_window_evaluations_of_the_final_checkpoints_are_reported_beside_carry(tmp_path):
    """`rlmin eval RUN --mode window` files count only for the run's final checkpoint with the last
    iterate's episodes; they get their own agent row and a paired carry - window difference."""
    root = tmp_path / "g"
    for seed, (carry, window) in enumerate([(50.0, 40.0), (60.0, 65.0), (70.0, 55.0)]):
        res = fake_results("mingru", seed, {3600: carry})
        res["act_mode"] = "carry"
        res["last_iterate"].update(seed=10000, episodes=10)
        run = root / f"s{seed}"
        write_run(run, res, losses=())
        (run / "eval").mkdir()

        def ev(name, score, step=1500, episodes=10, mode="window", run=run):
            (run / "eval" / name).write_text(json.dumps({
                "seed": 10000, "episodes": episodes, "agent": {"act_mode": mode},
                "checkpoint": {"step": step}, "targets": {"3600": {"normalized_mean": score}}}))
        ev("latest.window.seed10000.ep10.eval.json", window)
        ev("step_500.window.seed10000.ep10.eval.json", -100.0, step=500)  # not the final checkpoint
        ev("latest.window.seed10000.ep3.eval.json", -100.0, episodes=3)  # other episodes
        ev("latest.carry.seed10000.ep10.eval.json", -100.0, mode="carry")  # the run's own mode
    records = report.collect(root)
    own, window = report.agent_rows(records, n_resamples=200)
    assert own["label"] == "mingru" and own["iqm"] == pytest.approx(60.0)
    assert window["label"] == "mingru, window acting (same checkpoints)" and window["n"] == 3
    assert window["mean"] == pytest.approx(160.0 / 3)
    d = window["own_minus_this"]  # per run: 50-40, 60-65, 70-55
    assert {k: d[k] for k in ("n", "own_higher", "own_lower", "word")} == {
        "n": 3, "own_higher": 2, "own_lower": 1, "word": "level"}
    assert d["mean"] == pytest.approx(20.0 / 3) and d["ci_low"] < 0 < d["ci_high"] <= 20.0
    (row,) = report.dataset_rows(records, n_resamples=200)
    assert row["other_modes"]["window"]["values"] == [40.0, 65.0, 55.0]
    table = report.format_agent_table([own, window])
    assert "+6.7 [" in table and "level (2 / 1 of 3)" in table
    assert "window 53.3 ± 12.6" in report.format_table([row])


def test_runs_whose_resolved_datasets_differ_are_never_averaged(tmp_path):
    root = tmp_path / "g"  # one task config, resolved to two datasets on two machines
    for seed, dataset_id in enumerate(["mujoco/hopper/medium-v0", "mujoco/hopper/medium-v0",
                                       "rlmin/hopper/medium-v0"]):
        write_run(root / f"s{seed}", fake_results("mingru", seed, {3600: 10.0 * (seed + 1)},
                                                  dataset_id=dataset_id), losses=())
    result = report.report(root, n_resamples=200, echo=lambda s: None)
    got = {r["dataset"]: r["normalized"]["values"] for r in result["rows"]}
    assert got == {"mujoco/hopper/medium-v0": [10.0, 20.0], "rlmin/hopper/medium-v0": [30.0]}
    assert any("hopper-medium resolved to 2 datasets" in w for w in result["warnings"])
    assert "never averaged" in (root / "report.md").read_text()


def test_old_results_files_load(tmp_path):
    root = tmp_path / "g"
    write_run(root / "hopper-medium" / "mingru" / "seed0", old_results(0, {3600: 40.0}), losses=())
    write_run(root / "hopper-medium" / "bc" / "seed0",
              old_results(0, {3600: 20.0}, backbone=None, agent="bc"), losses=())
    write_run(root / "elsewhere", old_results(1, {3600: 30.0}, config_name="hopper-medium"),
              losses=())
    (root / grid.GRID_FILE).write_text(json.dumps({"runs": [
        {"name": "hopper-medium/mingru/seed0", "task": "hopper-medium"},
        {"name": "hopper-medium/bc/seed0", "task": "hopper-medium"}]}))
    records = {r["run_dir"]: r for r in report.collect(root)}
    mingru = records[str(root / "hopper-medium" / "mingru" / "seed0")]
    # no label: the old backbone key, then the agent; no eval_spec: the dataset block + grid.json
    assert (mingru["label"], mingru["task"], mingru["level"]) == ("mingru", "hopper", "medium")
    assert (mingru["dataset_id"], mingru["env_id"], mingru["ref_source"]) == (
        "mujoco/hopper/medium-v0", "Hopper-v5", "old")
    assert records[str(root / "hopper-medium" / "bc" / "seed0")]["label"] == "bc"
    assert records[str(root / "elsewhere")]["level"] == "medium"  # from the config's name
    rows = report.dataset_rows(list(records.values()), n_resamples=200)
    assert {r["label"]: r["n"] for r in rows} == {"bc": 1, "mingru": 2}
    assert all(r["published"][0]["score"] == 67.6 for r in rows)


def test_report_through_the_cli(grid_dir, capsys):
    from rlmin.cli import main

    assert main(["repro", "report", str(grid_dir), "--resamples", "500"]) == 0
    assert "mingru" in capsys.readouterr().out
    assert main(["repro", "report", str(grid_dir / "nothing-here")]) == 2


def test_learning_curves_from_tensorboard(grid_dir):
    scalars = report.read_scalars(grid_dir / "hopper-medium" / "mingru" / "seed1" / "tb")
    assert scalars["train/loss"] == ([100, 200, 300], [2.0, 0.5, 0.25])
    assert scalars["eval/normalized_mean/target_3600"] == ([500, 1500], [61.0, 60.0])
    curves = report.collect_curves(report.collect(grid_dir))
    series = curves["mujoco/hopper/medium-v0"]["mingru"]["train/loss"]
    assert len(series) == 3
    from rlmin.plots import mean_curve

    steps, mean, lo, hi = mean_curve(series)
    np.testing.assert_allclose(steps, [100, 200, 300])
    np.testing.assert_allclose(mean, [2.0, 0.5, 0.25])
    np.testing.assert_allclose(lo, [1.0, 0.5, 0.25])
    np.testing.assert_allclose(hi, [3.0, 0.5, 0.25])


def test_evaluation_curves_come_from_results_json_where_no_tb_folder_was_kept(grid_dir):
    # committed results keep only results.json: the eval curves must not vanish with the tb folder
    for run in (grid_dir / "hopper-medium" / "mingru").iterdir():
        shutil.rmtree(run / "tb")
    curves = report.collect_curves(report.collect(grid_dir))["mujoco/hopper/medium-v0"]
    assert "train/loss" not in curves["mingru"]  # a loss is only in the tb events
    assert sorted(curves["mingru"]["eval/normalized_mean/target_3600"]) == sorted(
        ([500, 1500], [early, hi]) for hi, _, early in MINGRU.values())
    assert len(curves["bc"]["train/loss"]) == 3  # runs that kept tb read it, not results.json
    assert report.report(grid_dir, n_resamples=200, echo=lambda s: None)["curves_png"].is_file()


def test_rows_keep_config_variants_and_training_lengths_apart(tmp_path):
    root = tmp_path / "g"
    for seed in range(3):
        write_run(root / "a" / f"s{seed}", fake_results("mingru", seed, {3600: 10.0}, steps=100),
                  losses=())
        write_run(root / "b" / f"s{seed}", fake_results("mingru", seed, {3600: 20.0}, steps=200),
                  losses=())
        ep = fake_results("mingru", seed, {3600: 30.0}, steps=200)
        ep["config"]["data"].update(mode="episode", seq_len=1000)
        write_run(root / "c" / f"s{seed}", ep, losses=())
    rows = report.dataset_rows(report.collect(root), n_resamples=200)
    got = {(r["label"], r["steps"]): r["normalized"]["mean"] for r in rows}
    assert got == {("mingru", 100): 10.0,  # train.seed differs too: seeds are what rows average
                   ("mingru [data.mode=segment, data.seq_len=20]", 200): 20.0,
                   ("mingru [data.mode=episode, data.seq_len=1000]", 200): 30.0}


# ----------------------------------------------------------------------------- provenance
def with_provenance(res: dict, commit=None, dirty=None, fingerprint=None, **fields) -> dict:
    """``res`` with the fields newer trainers write: provenance, n_params, timesteps_seen, ..."""
    res["provenance"] = {"command": "rlmin train x.yaml", "commit": commit, "dirty": dirty,
                         "data_fingerprint": fingerprint}
    res.update(fields)
    return res


def test_runs_of_one_dataset_with_different_data_fingerprints_are_refused(tmp_path, capsys):
    root = tmp_path / "g"
    write_run(root / "new" / "s0", with_provenance(fake_results("mingru", 0, {3600: 50.0}),
                                                   fingerprint="aaaa1111"), losses=())
    write_run(root / "new" / "s1", with_provenance(fake_results("mingru", 1, {3600: 60.0}),
                                                   fingerprint="aaaa1111"), losses=())
    old = fake_results("mingru", 2, {3600: 70.0})  # an older file: the dataset block's fingerprint
    old["dataset"]["fingerprint"] = "bbbb2222"
    write_run(root / "old" / "s2", old, losses=())
    write_run(root / "none" / "s3", fake_results("mingru", 3, {3600: 65.0}), losses=())
    with pytest.raises(grid.ReproError) as err:
        report.report(root, n_resamples=100, echo=lambda s: None)
    msg = str(err.value)
    assert "\n" not in msg and "mujoco/hopper/medium-v0" in msg
    assert "fingerprint aaaa1111 (2 runs, e.g. " + str(root / "new" / "s0") + ")" in msg
    assert "fingerprint bbbb2222 (1 run, e.g. " + str(root / "old" / "s2") + ")" in msg
    assert "none" not in msg.split("e.g.")[-1]  # the run without a fingerprint is no party to it
    assert "rebuild the dataset and rerun" in msg.lower() and "move them to another folder" in msg
    assert not (root / "report.md").exists()
    from rlmin.cli import main  # the command line says it and fails, with no traceback

    assert main(["repro", "report", str(root)]) == 2
    assert "aaaa1111" in capsys.readouterr().err
    # a run without a fingerprint conflicts with none; other datasets may have their own
    shutil.rmtree(root / "old")
    write_run(root / "other" / "s0", with_provenance(fake_results(
        "mingru", 0, {3600: 10.0}, dataset_id="rlmin/hopper/medium-replay-v0",
        level="medium-replay"), fingerprint="cccc3333"), losses=())
    result = report.report(root, n_resamples=100, echo=lambda s: None)
    assert {r["dataset"]: r["n"] for r in result["rows"]} == {
        "mujoco/hopper/medium-v0": 3, "rlmin/hopper/medium-replay-v0": 1}


def _git(repo: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c",
                           "commit.gpgsign=false", *args], cwd=repo, check=True, text=True,
                          capture_output=True).stdout.strip()


def test_the_report_lists_the_runs_commits_in_history_order(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    shas = []
    for i in range(3):
        (repo / "f").write_text(str(i))
        _git(repo, "add", "f")
        _git(repo, "commit", "-q", "-m", f"c{i}")
        shas.append(_git(repo, "rev-parse", "HEAD"))
    head = _git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    _git(repo, "checkout", "-q", "-b", "side", shas[0])  # a commit HEAD does not reach
    (repo / "f").write_text("side")
    _git(repo, "commit", "-q", "-am", "side")
    side = _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "-q", head)
    c0, c1, c2 = shas
    stranger = "0123456789abcdef0123456789abcdef01234567"  # from a clone this one never saw
    root = tmp_path / "g"
    runs = [("a", c1, True), ("b", c1, False), ("c", stranger, False), ("d", side, None)]
    for seed, (name, commit, dirty) in enumerate(runs):
        write_run(root / name, with_provenance(fake_results("mingru", seed, {3600: 50.0 + seed}),
                                               commit=commit, dirty=dirty), losses=())
    old = fake_results("mingru", 7, {3600: 40.0})  # older files: "code": "<short sha>[+dirty]"
    old["code"] = c0[:7] + "+dirty"
    write_run(root / "e", old, losses=())
    old = fake_results("mingru", 8, {3600: 45.0})
    old["code"] = c2[:7]
    write_run(root / "f", old, losses=())
    write_run(root / "g", fake_results("mingru", 9, {3600: 30.0}), losses=())  # records none
    monkeypatch.chdir(repo)
    result = report.report(root, n_resamples=100, echo=lambda s: None)
    got = [(e["commit"], e["runs"], e["dirty"], e["in_history"]) for e in result["commits"]["commits"]]
    assert got == [(c0, 1, 1, True), (c1, 2, 1, True), (c2, 1, 0, True),  # oldest first, full shas
                   (stranger, 1, 0, False), (side, 1, 0, False)]
    assert result["commits"]["no_commit"] == 1
    md = (root / "report.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("**Code.**"))
    assert "from 5 commits" in line  # the short and the full sha of one commit are one
    assert f"`{c0[:7]}` to `{c2[:7]}`" in line
    assert f"`{c0[:7]}` (1 run, 1 dirty), `{c1[:7]}` (2 runs, 1 dirty), `{c2[:7]}` (1 run)" in line
    assert f"`{stranger[:7]}` (1 run; not in this repository's history)" in line
    assert f"`{side[:7]}` (1 run, 1 unknown if dirty; not in this repository's history)" in line
    assert "1 run records no commit" in line
    saved = json.loads((root / "report.json").read_text())
    assert [e["commit"] for e in saved["commits"]["commits"]] == [c0, c1, c2, stranger, side]
    # outside a git repository: the same counts, no order and no history claimed
    elsewhere = tmp_path / "not-a-repo"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    summary = report.commit_summary(report.collect(root))
    assert summary["git"] is False and {e["in_history"] for e in summary["commits"]} == {None}
    assert sum(e["runs"] for e in summary["commits"]) == 6
    assert "in no order" in report.format_commits(summary)
    assert "not in this repository's history" not in report.format_commits(summary)


def test_tables_give_parameters_timesteps_and_how_targets_were_given(tmp_path):
    root = tmp_path / "g"
    for seed, steps_seen in enumerate([1_500_000, 1_600_000, 1_700_000]):
        res = with_provenance(fake_results("mingru", seed, {3600: 50.0 + 10 * seed}),
                              n_params=12345, timesteps_seen=steps_seen, weights="ema",
                              eval_targets={"kind": "scores", "target_scores": [100.0, 90.0]})
        # the raw weights' evaluation beside the weight average's: not read into the tables
        res["last_iterate_raw"] = json.loads(json.dumps(res["last_iterate"]))
        res["last_iterate_raw"]["targets"]["3600"]["normalized_mean"] = -999.0
        write_run(root / "m" / f"s{seed}", res, losses=())
        write_run(root / "r" / f"s{seed}", with_provenance(
            fake_results("mingru", seed, {3600: 20.0}, dataset_id="rlmin/hopper/medium-replay-v0",
                         level="medium-replay"),
            n_params=20000, timesteps_seen=500_000 if seed else None,
            eval_targets={"kind": "scores", "target_scores": [100.0, 90.0]}), losses=())
    write_run(root / "bc" / "s0", fake_results("bc", 0, {3600: 30.0}), losses=())  # older: none
    records = report.collect(root)
    rows = {(r["dataset"], r["label"]): r for r in report.dataset_rows(records, n_resamples=100)}
    medium = rows[("mujoco/hopper/medium-v0", "mingru")]
    assert medium["n_params"] == [12345] and medium["timesteps_seen"] == pytest.approx(1.6e6)
    assert medium["normalized"]["values"] == [50.0, 60.0, 70.0]  # last_iterate, not the raw
    table = report.format_table(list(rows.values()), kinds=False)

    def cells(text, start):
        line = next(ln for ln in text.splitlines() if ln.startswith(start))
        return [c.strip() for c in line.strip("|").split("|")]

    assert "| parameters | timesteps seen (M, real, mean) |" in table.splitlines()[0]
    assert cells(table, "| mujoco/hopper/medium-v0 | mingru")[-2:] == ["12,345", "1.60"]
    assert cells(table, "| rlmin/hopper/medium-replay-v0 | mingru")[-2:] == [
        "20,000", "0.50 (2 of 3 runs)"]
    assert cells(table, "| mujoco/hopper/medium-v0 | bc")[-2:] == ["–", "–"]
    agents = {a["label"]: a for a in report.agent_rows(records, n_resamples=100)}
    assert agents["mingru"]["n_params"] == [12345, 20000]
    agent_table = report.format_agent_table(list(agents.values()), kinds=False)
    assert cells(agent_table, "| mingru |")[-2:] == ["12,345–20,000", "1.16 (5 of 6 runs)"]
    assert cells(agent_table, "| bc |")[-2:] == ["–", "–"]
    # targets: said once when every run was given them the same way ...
    shutil.rmtree(root / "bc")
    report.report(root, n_resamples=100, echo=lambda s: None)
    md = (root / "report.md").read_text()
    assert "targets were given as normalised scores (`eval.target_scores` 100, 90)" in md
    assert "targets given as" not in md
    # ... and per row where they differ
    write_run(root / "bc" / "s0", with_provenance(
        fake_results("bc", 0, {3600: 30.0}), eval_targets={"kind": "returns", "target_scores": None}),
        losses=())
    result = report.report(root, n_resamples=100, echo=lambda s: None)
    md = (root / "report.md").read_text()
    assert "the tables say which per row ('targets given as')" in md
    assert md.count("rlmin train x.yaml") == 7  # provenance's command: no command.txt was kept
    assert cells(md, "| bc | 1500")[-1] == "raw returns"
    assert cells(md, "| mingru | 1500")[-1] == "normalised scores"
    assert cells(md, "| mujoco/hopper/medium-v0 | bc")[-1] == "raw returns"
    assert cells(md, "| mujoco/hopper/medium-v0 | mingru")[-3:] == ["12,345", "1.60",
                                                                       "normalised scores"]
    saved = json.loads((root / "report.json").read_text())
    assert {r["label"]: r["target_kinds"] for r in saved["rows"]} == {
        "bc": ["raw returns"], "mingru": ["normalised scores"]}
    assert result["rows"][0]["n_params"] is not None


def test_paired_runs_refuses_a_folder_that_mixes_data_fingerprints(tmp_path, capsys, load_script):
    paired = load_script("paired_runs")
    a, b = tmp_path / "a", tmp_path / "b"
    for seed, fp in enumerate(["aaaa1111", "bbbb2222"]):
        write_run(a / f"s{seed}", with_provenance(fake_results("mingru", seed, {3600: 1.0}),
                                                  fingerprint=fp), losses=())
        write_run(b / f"s{seed}", fake_results("mingru", seed, {3600: 2.0}), losses=())
    assert paired.main([str(a), str(b), "--label", "mingru"]) == 2
    err = capsys.readouterr().err
    assert "aaaa1111" in err and "bbbb2222" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- the core rule
FORBIDDEN = re.compile(r"\b(decision|bc|transformer|mlp|hopper|halfcheetah|walker2d)\b", re.I)


@pytest.mark.parametrize("module", ["grid", "gridrun", "report", "stats", "plots", "task"])
def test_the_core_names_no_agent_backbone_or_task(module):
    """Strings and names in code (docstrings and comments aside) name no agent, backbone or task."""
    tree = ast.parse((Path(grid.__file__).parent / f"{module}.py").read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found = [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant)
             and isinstance(n.value, str) and id(n) not in docstrings and FORBIDDEN.search(n.value)]
    found += [(n.lineno, n.id) for n in ast.walk(tree)
              if isinstance(n, ast.Name) and FORBIDDEN.search(n.id)]
    assert not found, f"rlmin/{module}.py names agents or tasks in code: {found}"


def test_paired_runs_pairs_by_dataset_and_seed_and_leaves_the_rest_out(tmp_path, capsys, load_script):
    """scripts/paired_runs.py: only runs with a partner enter; A's window column only where every
    pair has one; a folder holding two configs of one label is refused, not mixed."""
    paired = load_script("paired_runs")
    a, b = tmp_path / "a", tmp_path / "b"
    for seed, score in enumerate([10.0, 40.0, 70.0]):
        res = fake_results("mingru", seed, {3600: score, 1800: 0.0})
        res["last_iterate"].update(seed=10000, episodes=10)
        write_run(a / f"s{seed}", res, losses=())
        (a / f"s{seed}" / "eval").mkdir()
        (a / f"s{seed}" / "eval" / "latest.window.eval.json").write_text(json.dumps({
            "seed": 10000, "episodes": 10, "agent": {"act_mode": "window"},
            "checkpoint": {"step": 1500}, "targets": {"3600": {"normalized_mean": score - 1}}}))
    write_run(a / "other", fake_results("mingru", 0, {3600: 99.0}, dataset_id="x/y/z-v0"), losses=())
    for seed, score in [(0, 20.0), (1, 30.0), (2, 100.0), (7, 5.0)]:  # seed 7: no partner
        write_run(b / f"s{seed}", fake_results("mingru", seed, {3600: score, 1800: 0.0}), losses=())
    r = paired.compare(a, b, "mingru", n_resamples=200)
    assert (r["pairs"], r["unpaired_a"], r["unpaired_b"]) == (3, 1, 1)
    assert r["columns"] == ["A", "A window", "B"]
    (row,) = r["rows"]
    assert (row["A"], row["A window"], row["B"]) == (pytest.approx(40.0), pytest.approx(39.0), 50.0)
    # rliable's IQM (trim_mean(x, 0.25)) of 3 runs drops none: their mean (the fractional IQM
    # rlmin used before gave B 20/6 + 30 * 2/3 + 100/6 = 40)
    assert r["overall"]["A"]["iqm"] == pytest.approx(40.0)
    assert r["overall"]["B"]["iqm"] == pytest.approx(50.0)
    assert r["b_minus_a"]["mean"] == pytest.approx(10.0)  # +10, -10, +30
    assert (r["b_minus_a"]["b_higher"], r["b_minus_a"]["b_lower"]) == (2, 1)
    assert r["b_minus_a"]["ci_low"] < 10.0 < r["b_minus_a"]["ci_high"]

    out = tmp_path / "cmp.json"  # --out writes a new file, and never replaces one unasked
    assert paired.main([str(a), str(b), "--label", "mingru", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["pairs"] == 3
    out.write_text("mine")
    assert paired.main([str(a), str(b), "--label", "mingru", "--out", str(out)]) == 2
    assert "exists: give another --out, or --overwrite" in capsys.readouterr().err
    assert out.read_text() == "mine"
    assert paired.main([str(a), str(b), "--label", "mingru", "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["pairs"] == 3
    capsys.readouterr()

    shutil.copytree(a / "s0", a / "s0-copy")  # the same run twice: refused, not averaged in
    assert paired.main([str(a), str(b), "--label", "mingru"]) == 2
    assert "has two runs of 'mingru', seed 0" in capsys.readouterr().err
    assert paired.main([str(a), str(b), "--label", "nope"]) == 2
    assert "no run of 'nope'" in capsys.readouterr().err


def test_agents_are_paired_with_a_reference_run_by_run(tmp_path):
    """`rlmin repro report DIR --against transformer`: per pair (dataset, seed) differences, their
    mean with a stratified CI, and 'level' when the CI spans zero."""
    root = tmp_path / "g"
    dt = {("m", 0): 50.0, ("m", 1): 60.0, ("m", 2): 70.0, ("r", 0): 20.0, ("r", 1): 30.0}
    ahead = {k: v + 10.0 + k[1] for k, v in dt.items()}       # +10, +11, +12 per pair: above
    mixed = {k: v + (5.0 if k[1] % 2 else -5.0) for k, v in dt.items()}  # +-5: level
    for label, table in (("transformer", dt), ("mingru", ahead), ("minlstm", mixed)):
        for (ds, seed), v in table.items():
            kw = {} if ds == "m" else {"dataset_id": "rlmin/hopper/medium-replay-v0",
                                       "level": "medium-replay"}
            write_run(root / ds / label / f"s{seed}", fake_results(label, seed, {3600: v}, **kw),
                      losses=())
    write_run(root / "m" / "mingru" / "s9", fake_results("mingru", 9, {3600: 1.0}), losses=())
    records = report.collect(root)
    rows = {r["label"]: r for r in report.paired_rows(records, "transformer", n_resamples=2000)}
    up = rows["mingru"]
    assert (up["n"], up["datasets"], up["unpaired"]) == (5, 2, 1)  # seed 9 has no DT partner
    assert up["mean"] == pytest.approx((10 + 11 + 12 + 10 + 11) / 5)
    assert 10.0 - 1e-9 <= up["ci_low"] and up["ci_high"] <= 12.0 + 1e-9 and up["word"] == "above"
    assert (up["higher"], up["lower"]) == (5, 0)
    assert rows["minlstm"]["word"] == "level" and rows["minlstm"]["ci_low"] < 0 < rows["minlstm"]["ci_high"]
    out = report.report(root, n_resamples=500, against=["transformer"], echo=lambda s: None)
    md = out["report"].read_text()
    assert "## Paired, run by run" in md and "| mingru | transformer | 5 (2) | +10.8 |" in md
    with pytest.raises(grid.ReproError, match="no such agent label"):
        report.paired_rows(records, "dt")
    # one seed per dataset: no CI and no word, not a zero-width "above"
    single = [r for r in records if r["seed"] == 0]
    one = {r["label"]: r for r in report.paired_rows(single, "transformer")}["mingru"]
    assert one["ci_low"] is None and one["word"] == "no CI" and one["mean"] == pytest.approx(10.0)


@pytest.mark.parametrize("name", ["suite", "protocol", "screen", "table"])
def test_a_grid_with_committed_results_still_makes_their_configs(name, tmp_path):
    """The committed runs' configs come back from their grid file: a shipped config that changes
    later (step 2 gave the backbone files their recipes) must not change a finished grid's runs."""
    from rlmin.config import flat_keys, load_config, to_dict

    ignore = {"run_dir", "train.num_threads", "train.progress", "train.seed", "train.fast_dropout"}  # the driver's
    folder = Path(__file__).resolve().parents[1] / "docs" / "results" / name
    g = grid.load_grid(name)
    checked = 0
    for run in grid.plan(g.tasks, g.backbones, g.seeds, tmp_path, g.overrides,
                         backbone_overrides=g.backbone_overrides, variants=g.variants):
        done = folder / run.run_dir.relative_to(tmp_path) / "results.json"
        if not done.exists():
            continue
        old = flat_keys(json.loads(done.read_text())["config"])
        new = flat_keys(to_dict(load_config(list(run.config_files), list(run.overrides))))
        assert {k: (v, new.get(k)) for k, v in old.items() if k not in ignore and v != new.get(k)} == {}, done
        assert old["train.seed"] == run.seed, done
        checked += 1
    assert checked == len(g.tasks) * len(g.backbones) * len(g.seeds) * max(len(g.variants), 1)
