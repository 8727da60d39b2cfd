"""``rlmin runs``: what each run dir under a folder holds, read from its own files only."""
from __future__ import annotations

import json
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from rlmin.checkpoint import list_checkpoints


def _status(run_dir: Path) -> str:
    if (run_dir / "results.json").exists():
        return "finished"
    lock = run_dir / "lock"
    if lock.exists():
        try:  # a live run holds the OS lock; a dead one released it
            with FileLock(str(lock), timeout=0):
                pass
        except Timeout:
            return "running"
    return "stopped" if list_checkpoints(run_dir) else "failed"


def _headline(results: dict) -> str | None:
    targets = results.get("last_iterate", {}).get("targets", {})
    scores = [f"{r['normalized_mean']:.1f}" for r in targets.values()
              if r.get("normalized_mean") is not None]
    return " / ".join(scores) or None


def describe_run(run_dir: Path) -> dict:
    row = {"run": str(run_dir), "status": _status(run_dir)}
    cfg = OmegaConf.load(run_dir / "config.yaml")
    row["dataset"], row["agent"] = cfg.data.dataset, cfg.agent.get("name")
    ckpts = list_checkpoints(run_dir)
    row["step"] = int(ckpts[-1].stem.split("_")[-1]) if ckpts else 0
    if (run_dir / "results.json").exists():
        results = json.loads((run_dir / "results.json").read_text())
        row["dataset"] = results.get("dataset", {}).get("id", row["dataset"])
        row["agent"] = f"{results.get('agent')} ({results.get('label')})"
        row["step"], row["score"] = results.get("step"), _headline(results)
    return row


def list_runs(root: Path) -> list[dict]:
    """One row per run dir (a folder with a config.yaml) under ``root``, sorted by path."""
    return [describe_run(c.parent) for c in sorted(Path(root).rglob("config.yaml"))]
