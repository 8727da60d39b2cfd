"""scripts/protocol_table.py: the stabiliser rule of docs/RESULTS.md applied to result folders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def table(load_script):
    return load_script("protocol_table")


def _write(root: Path, dataset: str, agent: str, schedule: str, seed: int, ema: list, raw: list,
           fingerprint: str = "f0"):
    history = [{"step": 1000 * (i + 1), "targets": {"100": {"normalized_mean": e}},
                "raw_targets": {"100": {"normalized_mean": r}}} for i, (e, r) in enumerate(zip(ema, raw))]
    res = {"dataset": {"id": dataset}, "label": agent, "seed": seed,
           "provenance": {"data_fingerprint": fingerprint},
           "config": {"train": {"lr_schedule": schedule}},
           "last_iterate": {"targets": {"100": {"normalized_mean": ema[-1]}}}, "history": history}
    path = root / dataset / agent / schedule / f"seed{seed}" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(res))


def _grid(root: Path, curves: dict):
    for (schedule, ds, seed), (ema, raw) in curves.items():
        _write(root, ds, "mingru", schedule, seed, ema, raw)


def test_a_collapse_loses_whatever_the_scores(tmp_path, table, capsys):
    steady, late_drop = [50, 60, 70, 70], [50, 60, 90, 40]  # 40 < 90 / 2: a collapse
    _grid(tmp_path, {("constant", ds, s): (steady, late_drop) for ds in "ab" for s in (0, 1)}
          | {("cosine", ds, s): ([50, 60, 70, 69], [50, 60, 70, 68]) for ds in "ab" for s in (0, 1)})
    assert table.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    runs = table.runs_of(tmp_path)
    conds = {c: table.summarize([r for r in runs if (r["schedule"], r["weights"]) == c])
             for c in table.SIMPLER}
    assert conds[("constant", "raw")]["C"] == 4 and conds[("constant", "ema")]["C"] == 0
    # constant/ema: G = 0, L = 70; cosine/ema: G = 1 (a tie under 2), L = 69 (a tie): simpler wins.
    assert table.rank(conds)[0] == ("constant", "ema")
    assert "the rule picks: constant lr with ema weights" in out
    assert table.rank(conds)[-1] == ("constant", "raw")


def test_gap_then_score_decide_before_simplicity(tmp_path, table):
    _grid(tmp_path, {("constant", ds, s): ([50, 80, 90, 70], [50, 80, 90, 70]) for ds in "ab" for s in (0, 1)}
          | {("cosine", ds, s): ([50, 60, 74, 75], [50, 60, 74, 72]) for ds in "ab" for s in (0, 1)})
    runs = table.runs_of(tmp_path)
    conds = {c: table.summarize([r for r in runs if (r["schedule"], r["weights"]) == c])
             for c in table.SIMPLER}
    # constant: G = 20 for both weights; cosine/ema G = 0, L = 75; cosine/raw G = 2, L = 72.
    assert conds[("constant", "raw")]["G"] == pytest.approx(20)
    assert table.rank(conds)[:2] == [("cosine", "ema"), ("cosine", "raw")]


def test_no_runs_is_one_line(tmp_path, table, capsys):
    assert table.main([str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_runs_on_different_data_of_one_dataset_are_not_pooled(tmp_path, table, capsys):
    _grid(tmp_path, {("constant", "a", s): ([50, 60], [50, 60]) for s in (0, 1)})
    _write(tmp_path, "a", "mingru", "cosine", 0, [50, 60], [50, 60], fingerprint="f1")  # a rebuild
    assert table.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not pooled" in err and "fingerprint f0 (2 runs" in err and "fingerprint f1 (1 run," in err
