"""scripts/screen_table.py: step 2's recipe rule of docs/RESULTS.md applied to result folders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def table(load_script):
    return load_script("screen_table")


def _write(root: Path, dataset: str, backbone: str, recipe: str, seed: int, curve: list,
           fingerprint: str = "f0"):
    layout, mode = recipe.split("-")
    history = [{"step": 1000 * (i + 1), "targets": {"100": {"normalized_mean": v}}}
               for i, v in enumerate(curve)]
    res = {"dataset": {"id": dataset}, "label": backbone, "seed": seed,
           "provenance": {"data_fingerprint": fingerprint},
           "config": {"agent": {"backbone": backbone, "token_layout": layout}, "data": {"mode": mode}},
           "last_iterate": {"targets": {"100": {"normalized_mean": curve[-1]}}}, "history": history,
           "timesteps_seen": 5_120_000}
    path = root / dataset / backbone / recipe / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(res))


def _screen(root: Path, last: dict[str, float], datasets=("a/x-v0", "b/y-v0", "c/z-v0")):
    for recipe, score in last.items():
        for ds in datasets:
            for seed in range(3):
                _write(root, ds, "mingru", recipe, seed, [score - 5, score + 3, score])


@pytest.mark.parametrize("last, chosen", [
    # within 2 points of the best: the cheaper recipe wins (stacked first)
    ({"interleaved-segment": 50.5, "stacked-segment": 49.0}, "stacked-segment"),
    # 3 points clear of the cheaper one: the better one wins
    ({"interleaved-segment": 52.0, "stacked-segment": 49.0}, "interleaved-segment"),
    # layout before sampling: a stacked whole-episode recipe is cheaper than interleaved segments
    ({"interleaved-segment": 50.0, "stacked-episode": 49.5, "interleaved-episode": 50.2}, "stacked-episode"),
    # segments before whole episodes within one layout
    ({"stacked-episode": 60.0, "stacked-segment": 58.5}, "stacked-segment"),
])
def test_the_rule_takes_the_cheapest_recipe_within_two_points_of_the_best(tmp_path, table, capsys,
                                                                        last, chosen):
    _screen(tmp_path, last)
    assert table.main([str(tmp_path), "--out", str(tmp_path / "t.json")]) == 0
    assert f"the rule picks for mingru: {chosen}" in capsys.readouterr().out
    out = json.loads((tmp_path / "t.json").read_text())
    assert out["chosen"] == {"mingru": chosen}
    assert out["recipes"]["mingru"][chosen]["L"] == pytest.approx(last[chosen])


def test_runs_on_different_data_are_not_pooled(tmp_path, table, capsys):
    _write(tmp_path, "a/x-v0", "mingru", "stacked-segment", 0, [40, 50])
    _write(tmp_path, "a/x-v0", "mingru", "stacked-segment", 1, [40, 50], fingerprint="f1")
    assert table.main([str(tmp_path)]) == 2
    assert "fingerprint" in capsys.readouterr().err
