"""Grid variants (recipes: one backbone trained several ways in one grid) and a grid.json that
keeps every run any invocation planned into the folder."""
from __future__ import annotations

import json

import pytest
from test_repro import FakeRunner

from rlmin import grid


def _grid_file(tmp_path, body: str):
    path = tmp_path / "screen.yaml"
    path.write_text(body)
    return path


SCREEN = """
tasks: [hopper-medium]
backbones: [mingru, minlstm]
seeds: [0, 1]
overrides: [train.steps=5, train.batch_size=64]
backbone_overrides:
  mingru: [agent.d_model=64]
variants:
  seg: []
  episode: [data.mode=episode, data.seq_len=1000, train.batch_timesteps=1280]
"""


def test_variants_give_each_backbone_one_folder_per_recipe(tmp_path):
    g = grid.load_grid(str(_grid_file(tmp_path, SCREEN)))
    runs = grid.plan(g.tasks, g.backbones, g.seeds, tmp_path / "out", g.overrides,
                     backbone_overrides=g.backbone_overrides, variants=g.variants,
                     last_overrides=["train.steps=7"])
    assert [r.name for r in runs] == [f"hopper-medium/{b}/{v}/seed{s}" for b in ("mingru", "minlstm")
                                      for v in ("seg", "episode") for s in (0, 1)]
    ep = next(r for r in runs if r.name == "hopper-medium/mingru/episode/seed1")
    assert ep.run_dir == tmp_path / "out" / "hopper-medium" / "mingru" / "episode" / "seed1"
    # backbone's, then shared, then the variant's, then the command line's: the last one wins.
    assert ep.overrides == ("agent.d_model=64", "train.steps=5", "train.batch_size=64",
                            "data.mode=episode", "data.seq_len=1000", "train.batch_timesteps=1280",
                            "train.steps=7")
    argv = ep.argv()
    assert argv.index("data.mode=episode") > argv.index("train.batch_size=64")


@pytest.mark.parametrize("body, needle", [
    (SCREEN.replace("  seg: []", "  'a b': []"), "must be a folder name"),
    (SCREEN.replace("variants:", "variant:"), "unknown key"),
])
def test_bad_variants_are_refused(tmp_path, body, needle):
    with pytest.raises(grid.ReproError, match=needle):
        grid.load_grid(str(_grid_file(tmp_path, body)))


def test_grid_json_keeps_every_run_of_every_invocation(tmp_path):
    out = tmp_path / "g"
    base = ["run", "--tasks", "hopper-medium", "--seeds", "2", "--out", str(out), "--no-report"]
    assert grid.main(base + ["--backbones", "mingru"], runner=FakeRunner()) == 0
    assert grid.main(base + ["--backbones", "bc"], runner=FakeRunner()) == 0
    doc = json.loads((out / grid.GRID_FILE).read_text())
    assert sorted(r["name"] for r in doc["runs"]) == [
        f"hopper-medium/{b}/seed{s}" for b in ("bc", "mingru") for s in (0, 1)]
    assert [i["backbones"] for i in doc["invocations"]] == [["mingru"], ["bc"]]


def test_a_grid_json_of_the_old_format_is_extended_not_lost(tmp_path):
    out = tmp_path / "g"
    out.mkdir()
    (out / grid.GRID_FILE).write_text(json.dumps({
        "command": "rlmin repro run --grid suite", "runs": [{"name": "walker2d-medium/bc/seed0",
                                                             "task": "walker2d-medium"}]}))
    assert grid.main(["run", "--tasks", "hopper-medium", "--backbones", "mingru", "--seeds", "0,",
                      "--out", str(out), "--no-report"], runner=FakeRunner()) == 0
    doc = json.loads((out / grid.GRID_FILE).read_text())
    assert {r["name"] for r in doc["runs"]} == {"walker2d-medium/bc/seed0",
                                                 "hopper-medium/mingru/seed0"}
    assert doc["invocations"][0]["command"] == "rlmin repro run --grid suite"


def test_variant_runs_run_and_resume_like_any_other(tmp_path):
    g = _grid_file(tmp_path, SCREEN)
    out = tmp_path / "out"
    runner = FakeRunner()
    assert grid.main(["run", "--grid", str(g), "--out", str(out), "--no-report"], runner=runner) == 0
    assert len(runner.calls) == 8 and len(list(out.rglob("results.json"))) == 8
    again = FakeRunner()
    assert grid.main(["run", "--grid", str(g), "--out", str(out), "--no-report"], runner=again) == 0
    assert again.calls == []
