"""The README's main job, shrunk: builds rlmin/hopper/medium-v0 from the shipped behaviour policy
(offline, with Minari's writer), trains the quickstart config, evaluates, prints the scores."""
import json

from rlmin import cli
from rlmin.data import resolve as dataset
from rlmin.data.minari_io import is_local, read_metadata


def test_quickstart_builds_its_dataset_offline_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))  # a fresh machine
    monkeypatch.setattr(dataset, "AUTO_BUILD_STEPS", 400)  # the real job collects 100k steps
    assert not is_local("rlmin/hopper/medium-v0")
    code = cli.main(["quickstart", f"run_dir={tmp_path / 'run'}", "train.steps=4",
                     "train.num_threads=1", "train.progress=false", "eval.episodes=1",
                     "eval.max_episode_steps=20"])  # conftest restores the thread count
    assert code == 0
    assert is_local("rlmin/hopper/medium-v0")
    meta = read_metadata("rlmin/hopper/medium-v0")
    assert meta["ref_max_score"] > meta["ref_min_score"]  # both stored by the builder
    out = capsys.readouterr().out
    assert "normalised score per target return" in out and "behaviour policy" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["dataset"]["id"] == "rlmin/hopper/medium-v0"
    assert results["agent"] == "decision" and results["label"] == "mingru stacked"
    assert results["act_mode"] == "carry"
    assert results["eval_spec"]["dataset_id"] == "rlmin/hopper/medium-v0"
    assert results["eval_spec"]["ref_max"] == meta["ref_max_score"]  # the builder's, stored once
    assert results["step"] == 4
