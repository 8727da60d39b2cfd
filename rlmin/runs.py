"""``rlmin runs``: what each run dir under a folder holds, read from its own files only."""
from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from rlmin.checkpoint import list_checkpoints
from rlmin.rundir import read_results


def _status(run_dir: Path, results: dict | None) -> str:
    if results is not None:
        return "finished"
    lock = run_dir / "lock"
    if lock.exists():
        try:  # a live run holds the OS lock; a dead one released it
            with FileLock(str(lock), timeout=0):
                pass
        except Timeout:
            return "running"
        except OSError:  # a read-only copy: nobody runs in it
            pass
    return "stopped" if list_checkpoints(run_dir) else "failed"


def _headline(results: dict) -> str | None:
    targets = (results.get("last_iterate") or {}).get("targets") or {}
    scores = [f"{r['normalized_mean']:.1f}" for r in targets.values()
              if isinstance(r, dict) and isinstance(r.get("normalized_mean"), (int, float))]
    return " / ".join(scores) or None


def describe_run(run_dir: Path) -> dict:
    """One row of ``rlmin runs``. A file it cannot read (a damaged results.json or config.yaml)
    marks the row ``unreadable`` and ``problem`` says which file and what to do; the other rows
    are listed as usual."""
    row = {"run": str(run_dir)}
    results, problem = read_results(run_dir)
    if problem:
        row["problem"] = (f"{problem}: `rlmin train --resume {run_dir}` writes it again (it runs "
                          f"the final evaluation of the last checkpoint)")
    try:
        cfg = OmegaConf.load(run_dir / "config.yaml")
        row["dataset"], row["agent"] = cfg.data.dataset, cfg.agent.get("name")
    except Exception as e:  # noqa: BLE001 (YAML syntax, binary, missing keys: marked, not fatal)
        problem = problem or "config.yaml"
        row["problem"] = row.get("problem") or (
            f"{run_dir / 'config.yaml'} cannot be read ({' '.join(str(e).split())[:120]}): fix it, "
            f"or delete it (the checkpoints hold the run's config; a resume writes it again)")
    ckpts = list_checkpoints(run_dir)
    row["step"] = int(ckpts[-1].stem.split("_")[-1]) if ckpts else 0
    row["status"] = "unreadable" if problem else _status(run_dir, results)
    if results is not None:
        dataset = results.get("dataset")
        row["dataset"] = dataset.get("id", row.get("dataset")) if isinstance(dataset, dict) \
            else row.get("dataset")
        row["agent"] = f"{results.get('agent')} ({results.get('label')})"
        row["step"], row["score"] = results.get("step"), _headline(results)
    return row


def list_runs(root: Path) -> list[dict]:
    """One row per run dir (a folder with a config.yaml) under ``root``, sorted by path."""
    return [describe_run(c.parent) for c in sorted(Path(root).rglob("config.yaml"))]
