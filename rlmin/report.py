"""The report of a grid folder: every ``results.json`` under it as tables, plots and report.json.

    rlmin repro report runs/repro-small     # report.md, report.json, scores.png, curves.png

Headline, per dataset: the last-iterate normalised score (the policy after the final training
step) of each agent and target return, mean over seeds with a 95% percentile-bootstrap CI of the
mean; the raw return beside it. Headline, per agent: the IQM over all its runs (every dataset,
every seed) of the last-iterate normalised score at each run's first target return (the task's
higher one), with a 95% stratified-bootstrap CI (rliable's method: runs are resampled within each
dataset, the IQM is taken over the pooled draw; ``rlmin.stats``). Best-during-training appears
only in its own labelled column. Runs are averaged only when they share the resolved dataset id
(``hopper-medium`` may resolve to ``mujoco/hopper/medium-v0`` on one machine and to
``rlmin/hopper/medium-v0`` on another), the label, the training length and every config value
that sets runs of one dataset apart. Scores published on other benchmarks (the DT paper's
D4RL-v2 numbers, from the task registry) get their own table, never a column beside ours.
A run's final checkpoint evaluated in another acting mode (``rlmin eval RUN --mode window``, same
episodes) gets a column per dataset and agent rows of its own, with the paired per-run difference.

Provenance: runs of one dataset id whose data fingerprints differ are refused, never pooled
(:func:`check_fingerprints`); the report lists the commits the runs were trained at, ordered by
this repository's history where the report is written inside it (:func:`commit_summary`); the
tables give each row's parameter count and real (unpadded) timesteps seen; whether the targets
were asked as normalised scores or raw returns is said once, or per row where runs differ.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

from rlmin.config import flat_keys
from rlmin.errors import ReproError
from rlmin.gridrun import COMMAND_FILE, DRIVER_LOG, GRID_FILE, RESULTS

# Config keys that never set two runs' results apart: the seed is what a row averages over; the
# rest is bookkeeping. train.steps has its own column.
BOOKKEEPING = ("name", "run_dir", "train.seed", "train.steps", "train.num_threads",
               "train.progress", "train.device", "train.log_every", "train.checkpoint_every",
               "train.keep_checkpoints", "eval.n_envs")


# ============================================================================ reading results
def read_results(path, planned: dict | None = None) -> dict:
    """One results.json as the report's record, whichever trainer version wrote it.

    New files carry the agent's ``label`` and an ``eval_spec``. For older ones the label falls
    back to ``backbone``, then ``agent``; the spec to the ``dataset`` block; the level to the task
    config's name (``planned``: this run's record in grid.json, else the run's own config name)
    without the task's name (``hopper-medium`` -> ``medium``).
    """
    path = Path(path)
    res = json.loads(path.read_text())
    ds, cfg = res.get("dataset") or {}, res.get("config") or {}
    spec = res.get("eval_spec") or {**ds, "dataset_id": ds.get("id"),
                                    "env_id": res.get("env_id") or ds.get("env_id")}
    config_name = (planned or {}).get("task") or cfg.get("name")
    task = spec.get("task")
    level = spec.get("level")
    if level is None and task and config_name and config_name.startswith(f"{task}-"):
        level = config_name[len(task) + 1:]
    targets = {}
    for key, t in ((res.get("last_iterate") or {}).get("targets") or {}).items():
        targets[key] = {"target": t.get("target_return", float(key)), "raw": t.get("return_mean"),
                        "normalized": t.get("normalized_mean"), "episodes": t.get("episodes"),
                        "best_normalized": _best(res, key)}
    run_dir = path.parent
    commit, dirty = _code_of(res)
    prov, eval_targets = res.get("provenance") or {}, res.get("eval_targets") or {}
    commands = []  # every launch of the run, in order (a resumed run has several)
    if (run_dir / COMMAND_FILE).is_file():
        commands = [ln for ln in (run_dir / COMMAND_FILE).read_text().splitlines()
                    if ln.strip() and not ln.startswith("#")]
    if not commands:  # committed results keep only results.json: newer ones carry the command
        commands = [c for c in (prov.get("commands") or [prov.get("command")])
                    if isinstance(c, str) and c.strip()]
    return {
        "path": str(path), "run_dir": str(run_dir), "task": task, "level": level,
        "dataset_id": spec.get("dataset_id") or ds.get("id"), "task_config": config_name,
        "env_id": spec.get("env_id") or res.get("env_id"),
        "label": str(res.get("label") or res.get("backbone") or res.get("agent")),
        "agent": res.get("agent"), "seed": res.get("seed"), "steps": res.get("step"),
        "targets": targets, "ref_min": spec.get("ref_min"), "ref_max": spec.get("ref_max"),
        "ref_source": spec.get("ref_source"), "behaviour_return": ds.get("behaviour_return"),
        "behaviour_normalized": ds.get("behaviour_normalized"),
        "eval_episodes": (res.get("last_iterate") or {}).get("episodes"), "commands": commands,
        "settings": {k: v for k, v in flat_keys(cfg).items() if k not in BOOKKEEPING},
        "other_modes": _other_modes(run_dir, res),
        "eval_curves": _eval_curves(res),
        # provenance; older files lack some of it (None then)
        "fingerprint": prov.get("data_fingerprint") or ds.get("fingerprint"),
        "commit": commit, "dirty": dirty, "command": prov.get("command"),
        "n_params": _int_or_none(res.get("n_params")),
        "timesteps_seen": _int_or_none(res.get("timesteps_seen")),
        "target_kind": eval_targets.get("kind"), "target_scores": eval_targets.get("target_scores"),
        "weights": res.get("weights"),  # "ema": last_iterate is the weight average's (read as is)
    }


_SHA = re.compile(r"[0-9a-f]{4,40}")


def _code_of(res: dict) -> tuple[str | None, bool | None]:
    """(commit, dirty) of a results.json: ``provenance`` (full sha) in new files, else the older
    ``code`` string, ``<short sha>[+dirty]``. (None, None) when neither records one."""
    prov = res.get("provenance") or {}
    commit, dirty = prov.get("commit"), prov.get("dirty")
    if not (isinstance(commit, str) and _SHA.fullmatch(commit.strip().lower())):
        commit, dirty = None, None
        code = res.get("code")
        if isinstance(code, str):
            sha, _, flag = code.strip().partition("+")
            if _SHA.fullmatch(sha.lower()):
                commit, dirty = sha, flag == "dirty"
    return (commit.strip().lower() if commit else None,
            dirty if isinstance(dirty, bool) else None)


def _int_or_none(v) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _eval_curves(res: dict) -> dict[str, tuple[list, list]]:
    """The evaluations in results.json's history, keyed as the TensorBoard tags: the curves of a
    run whose ``tb`` folder was not kept (committed results keep only results.json)."""
    curves: dict[str, tuple[list, list]] = {}
    for h in sorted(res.get("history") or [], key=lambda h: h.get("step") or 0):
        for key, t in (h.get("targets") or {}).items():
            if t.get("normalized_mean") is not None:
                steps, values = curves.setdefault(f"{CURVE_TAGS[1]}{key}", ([], []))
                steps.append(h["step"])
                values.append(t["normalized_mean"])
    return curves


def _other_modes(run_dir: Path, res: dict) -> dict[str, dict[str, float]]:
    """{act_mode: {target key: normalised}} from ``rlmin eval RUN --mode M`` files (eval/*.eval.json)
    of the run's final checkpoint in another acting mode than the run's own, with the last
    iterate's episode seed and count: the same checkpoint playing the same episodes."""
    last, out = res.get("last_iterate") or {}, {}
    for path in sorted((run_dir / "eval").glob("*.eval.json")):
        try:
            ev = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        mode = (ev.get("agent") or {}).get("act_mode")
        same = ((ev.get("checkpoint") or {}).get("step") == res.get("step")
                and ev.get("seed") == last.get("seed") and ev.get("episodes") == last.get("episodes"))
        if mode and mode != res.get("act_mode") and same:
            out[mode] = {k: t.get("normalized_mean") for k, t in (ev.get("targets") or {}).items()}
    return out


def _best(res: dict, key: str) -> float | None:
    """The best normalised score of target ``key`` over the run's evaluations (the last included)."""
    seen = [(h.get("targets") or {}).get(key, {}).get("normalized_mean")
            for h in res.get("history") or []]
    seen = [v for v in seen if v is not None]
    if seen:
        return max(seen)
    best = ((res.get("best_during_training") or {}).get("targets") or {}).get(key) or {}
    return best.get("normalized_mean")  # files whose history holds no scores



def _planned_runs(out_dir: Path) -> dict[Path, dict]:
    """{run_dir: its grid.json record} from every grid.json under ``out_dir``. Keyed by the folder
    below the grid.json, so a grid copied or moved from another machine still matches."""
    planned = {}
    for grid_file in Path(out_dir).rglob(GRID_FILE):
        try:
            runs = json.loads(grid_file.read_text()).get("runs") or []
        except (json.JSONDecodeError, OSError) as e:
            print(f"warning: skipping {grid_file}: {e}", file=sys.stderr)
            continue
        for run in runs:
            planned[(grid_file.parent / run["name"]).resolve()] = run
    return planned


def collect(out_dir) -> list[dict]:
    """Every results.json under ``out_dir`` (any depth), as :func:`read_results` records, with
    labels that tell apart runs of different configs (:func:`mark_variants`)."""
    planned = _planned_runs(out_dir)
    records = []
    for path in sorted(Path(out_dir).rglob(RESULTS)):
        try:
            records.append(read_results(path, planned.get(path.parent.resolve())))
        except (json.JSONDecodeError, OSError, AttributeError, TypeError, ValueError) as e:
            print(f"warning: skipping {path}: {e}", file=sys.stderr)
    check_fingerprints(records)
    mark_variants(records)
    return records


def check_fingerprints(records: Sequence[dict]) -> None:
    """Raise :class:`ReproError` where runs of one dataset id were trained on data with different
    fingerprints (the dataset was rebuilt between them): such runs are never pooled. A record
    without a fingerprint (older files) conflicts with none."""
    clashes = []
    for dataset in sorted({r["dataset_id"] for r in records}, key=str):
        seen: dict[str, list[str]] = {}  # fingerprint -> its runs' folders
        for rec in records:
            if rec["dataset_id"] == dataset and rec.get("fingerprint"):
                seen.setdefault(str(rec["fingerprint"]), []).append(rec["run_dir"])
        if len(seen) > 1:
            clashes.append(f"{dataset} has " + " and ".join(
                f"fingerprint {fp} ({len(dirs)} run{'s' * (len(dirs) > 1)}, e.g. {sorted(dirs)[0]})"
                for fp, dirs in sorted(seen.items())))
    if clashes:
        raise ReproError("runs of one dataset trained on different data, not pooled: "
                         + "; ".join(clashes) + ". Rebuild the dataset and rerun the runs of the "
                         "stale fingerprint, or move them to another folder, then report again")


def mark_variants(records: Sequence[dict]) -> None:
    """Append to each label the config values that set runs of one label apart, so that runs of
    different configs never share a row. A key counts when it takes more than one value among the
    runs of one dataset (keys that differ only between datasets are the tasks' own settings)."""
    by_label: dict[tuple, list[dict]] = {}
    for rec in records:
        by_label.setdefault((rec["label"], rec["steps"]), []).append(rec)
    for recs in by_label.values():
        per_dataset: dict[str, list[dict]] = {}
        for rec in recs:
            per_dataset.setdefault(rec["dataset_id"], []).append(rec["settings"])
        keys = sorted({k for settings in per_dataset.values() for s in settings for k in s
                       if len({repr(o.get(k)) for o in settings}) > 1})
        if not keys:
            continue
        for rec in recs:
            rec["label"] += " [" + ", ".join(f"{k}={rec['settings'].get(k)}" for k in keys) + "]"


# ============================================================================ aggregating
def _published(records: Sequence[dict]) -> dict[tuple, list]:
    """{(task, level): [PublishedScore, ...]} from the task registry (empty for unknown tasks)."""
    from rlmin.task import all_tasks

    tasks = all_tasks()
    return {(r["task"], r["level"]): tasks[r["task"]].published_scores(r["level"])
            for r in records if r["task"] in tasks}


def _dataset_order(rec: dict) -> tuple:
    return (rec["task"] or "", rec["level"] or "", str(rec["dataset_id"]))


def dataset_rows(records: Sequence[dict], n_resamples: int | None = None,
                 seed: int | None = None) -> list[dict]:
    """One row per (dataset, label, training steps, target), in a stable order."""
    from rlmin import stats

    kw = _stats_kw(n_resamples, seed)
    published = _published(records)
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    target_order: dict[str, list[str]] = {}
    for rec in sorted(records, key=_dataset_order):
        for key, t in rec["targets"].items():
            groups.setdefault((rec["dataset_id"], rec["label"], rec["steps"], key), []).append((rec, t))
            order = target_order.setdefault(rec["dataset_id"], [])
            if key not in order:
                order.append(key)
    datasets = list(target_order)
    rows = []
    for gkey in sorted(groups, key=lambda g: (datasets.index(g[0]), g[1], g[2] or 0,
                                              target_order[g[0]].index(g[3]))):
        members = sorted(groups[gkey], key=lambda m: (m[0]["seed"] is None, m[0]["seed"] or 0))
        recs = [m[0] for m in members]
        norm = [m[1]["normalized"] for m in members]
        raw = [m[1]["raw"] for m in members]
        best = [m[1]["best_normalized"] for m in members]
        first = recs[0]
        row = {
            "dataset": gkey[0], "task": first["task"], "level": first["level"],
            "label": gkey[1], "steps": gkey[2], "target_key": gkey[3],
            "target": members[0][1]["target"], "seeds": [r["seed"] for r in recs], "n": len(recs),
            "run_dirs": [r["run_dir"] for r in recs], "env_id": first["env_id"],
            "eval_episodes": sorted({r["eval_episodes"] for r in recs if r["eval_episodes"]}),
            "normalized": stats.summarize(norm, **kw) if None not in norm else None,
            "raw": stats.summarize(raw, **kw) if None not in raw else None,
            "best_normalized": stats.summarize(best, **kw) if None not in best else None,
            "published": [asdict(p) for p in published.get((first["task"], first["level"]), [])],
            "ref": {"min": first["ref_min"], "max": first["ref_max"], "source": first["ref_source"]},
            "behaviour_normalized": first["behaviour_normalized"], "warnings": [],
            "other_modes": {},  # {mode: summary} where every run was also evaluated in that mode
            **_run_facts(recs),
        }
        for mode in sorted({m for r in recs for m in r["other_modes"]}):
            values = [r["other_modes"].get(mode, {}).get(gkey[3]) for r in recs]
            if None not in values:
                row["other_modes"][mode] = stats.summarize(values, **kw)
        if len(set(row["seeds"])) != len(row["seeds"]):
            row["warnings"].append(f"repeated seeds {row['seeds']}: runs from different grids mixed?")
        if len({(r["ref_min"], r["ref_max"]) for r in recs}) > 1:
            row["warnings"].append("its runs were normalised with different reference returns")
        rows.append(row)
    return rows


def agent_rows(records: Sequence[dict], n_resamples: int | None = None,
               seed: int | None = None) -> list[dict]:
    """Per (label, training steps): the IQM over all runs of the last-iterate normalised score at
    each run's first target, with a stratified-bootstrap CI (strata: the datasets); then, per other
    acting mode some runs were evaluated in, the same over those evaluations, with the per-run
    difference (own mode minus that one) in ``own_minus_this``."""
    from rlmin import stats

    groups: dict[tuple, dict[str, list[float]]] = {}
    members: dict[tuple, list[dict]] = {}  # the runs of each group
    paired: dict[tuple, dict[str, list[float]]] = {}  # own mode minus the other, per dataset
    for rec in sorted(records, key=_dataset_order):
        key, first = next(iter(rec["targets"].items()), (None, {}))
        first = first.get("normalized")
        if first is None:
            continue
        own = groups.setdefault((rec["label"], rec["steps"], None), {})
        own.setdefault(rec["dataset_id"], []).append(first)
        members.setdefault((rec["label"], rec["steps"], None), []).append(rec)
        for mode, scores in rec["other_modes"].items():  # the same checkpoint acting another way
            if scores.get(key) is not None:
                group = (rec["label"], rec["steps"], mode)
                groups.setdefault(group, {}).setdefault(rec["dataset_id"], []).append(scores[key])
                paired.setdefault(group, {}).setdefault(rec["dataset_id"], []).append(
                    first - scores[key])
                members.setdefault(group, []).append(rec)
    rows = []
    order = lambda g: (g[0][0], g[0][1] or 0, g[0][2] or "")  # noqa: E731 (label, steps, own mode first)
    for (label, steps, mode), per in sorted(groups.items(), key=order):
        row = {"label": label if mode is None else f"{label}, {mode} acting (same checkpoints)",
               "steps": steps, "datasets": list(per), "mode": mode,
               **stats.iqm_over_tasks(per, **_stats_kw(n_resamples, seed)),
               **_run_facts(members[(label, steps, mode)])}
        if mode is not None:  # the same checkpoints, so paired run by run as paired_rows does
            per_dataset = list(paired[(label, steps, mode)].values())
            diffs = [d for ds in per_dataset for d in ds]
            low, high = stats.seed_spread_ci(per_dataset, "mean", **_stats_kw(n_resamples, seed))
            row["own_minus_this"] = {"n": len(diffs), "mean": sum(diffs) / len(diffs),
                                     "ci_low": low, "ci_high": high, "word": _ci_word(low, high),
                                     "own_higher": sum(d > 0 for d in diffs),
                                     "own_lower": sum(d < 0 for d in diffs)}
        rows.append(row)
    return rows


TARGET_KINDS = {"scores": "normalised scores", "returns": "raw returns",
                "task": "raw returns (the task's defaults)", None: "not recorded"}


def _run_facts(recs: Sequence[dict]) -> dict:
    """What a row's runs were: their parameter counts (distinct), the mean real (unpadded) dataset
    timesteps they trained on over the runs that record it, and how their targets were given."""
    seen = [r["timesteps_seen"] for r in recs if r.get("timesteps_seen") is not None]
    return {"n_params": sorted({r["n_params"] for r in recs if r.get("n_params") is not None}),
            "timesteps_seen": sum(seen) / len(seen) if seen else None,
            "timesteps_seen_runs": len(seen),
            "target_kinds": sorted({TARGET_KINDS.get(r.get("target_kind"), str(r.get("target_kind")))
                                    for r in recs})}


def paired_rows(records: Sequence[dict], reference: str, n_resamples: int | None = None,
                seed: int | None = None) -> list[dict]:
    """Every other label against ``reference`` (a label of the report), run by run: runs paired
    by dataset, seed and training length, at the first target; the mean of the per-pair
    differences (label - reference) with a stratified-bootstrap CI of the mean (strata: datasets),
    the win count, and ``level`` when the CI spans zero."""
    from rlmin import stats

    labels = {r["label"] for r in records}
    if reference not in labels:
        raise ReproError(f"--against {reference!r}: no such agent label in this folder; its labels: "
                         f"{', '.join(sorted(labels))}")

    def first(rec):
        return next(iter(rec["targets"].values()), {}).get("normalized")

    ref = {(r["dataset_id"], r["seed"], r["steps"]): first(r) for r in records
           if r["label"] == reference}
    rows = []
    for label in sorted(labels - {reference}):
        per: dict[str, list[float]] = {}
        unpaired = 0
        for rec in records:
            if rec["label"] != label or first(rec) is None:
                continue
            other = ref.get((rec["dataset_id"], rec["seed"], rec["steps"]))
            if other is None:
                unpaired += 1
                continue
            per.setdefault(rec["dataset_id"], []).append(first(rec) - other)
        if not per:
            continue
        diffs = [d for ds in per.values() for d in ds]
        low, high = stats.seed_spread_ci(list(per.values()), "mean", **_stats_kw(n_resamples, seed))
        rows.append({"label": label, "reference": reference, "n": len(diffs),
                     "datasets": len(per), "mean": sum(diffs) / len(diffs), "ci_low": low,
                     "ci_high": high, "higher": sum(d > 0 for d in diffs),
                     "lower": sum(d < 0 for d in diffs), "unpaired": unpaired,
                     "word": _ci_word(low, high)})
    return rows


def _ci_word(low: float | None, high: float | None) -> str:
    """How a paired difference's CI reads: "level" where it holds zero."""
    return "no CI" if low is None else "level" if low <= 0 <= high else "above" if low > 0 else "below"


def format_paired(rows: Sequence[dict]) -> str:
    lines = ["| agent | against | pairs (datasets) | mean difference, normalised | 95% CI "
             "(stratified bootstrap) | higher / lower | reads as |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['reference']} | {r['n']} ({r['datasets']}) | "
                     f"{r['mean']:+.1f} | {_ci(r['ci_low'], r['ci_high'])} | "
                     f"{r['higher']} / {r['lower']} | {r['word']} |")
    return "\n".join(lines)


def _stats_kw(n_resamples: int | None, seed: int | None) -> dict:
    return {k: v for k, v in (("n_resamples", n_resamples), ("seed", seed)) if v is not None}


def warnings_of(records: Sequence[dict], rows: Sequence[dict], agents: Sequence[dict]) -> list[str]:
    """What a reader must know before comparing the numbers."""
    out = [f"{r['dataset']} / {r['label']} / target {r['target_key']}: {w}"
           for r in rows for w in r["warnings"]]
    resolved: dict[str, set] = {}
    for rec in records:
        resolved.setdefault(rec["task_config"] or rec["dataset_id"], set()).add(rec["dataset_id"])
    for name, ids in sorted(resolved.items(), key=lambda kv: str(kv[0])):
        if len(ids) > 1:
            out.append(f"{name} resolved to {len(ids)} datasets ({', '.join(sorted(map(str, ids)))}):"
                       " their runs are reported apart, never averaged")
    if len({tuple(sorted(map(str, a["datasets"]))) for a in agents}) > 1:
        out.append("the agents' IQMs cover different datasets: compare them only over the same "
                   "ones (the datasets column)")
    return out


# ============================================================================ provenance
NOT_IN_HISTORY = "not in this repository's history"


def _git(cwd: Path, *args: str, stdin: str | None = None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, input=stdin, text=True,
                             capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def commit_summary(records: Sequence[dict], cwd=None) -> dict:
    """The commits the runs were trained at: ``{"commits": [{"commit", "short", "runs", "dirty",
    "dirty_unknown", "in_history"}], "no_commit": runs recording none, "git": whether ``cwd``
    (default: the working directory) is in a git repository}``. Inside one, the commits it knows
    (older files give 7-digit ones) are resolved to full ones and ordered oldest first by
    ``git rev-list HEAD``; ``in_history`` is False for a commit that HEAD does not reach, and
    those come last. Outside one, ``in_history`` is None and the order is the runs' folders'."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    recorded = list(dict.fromkeys(r["commit"] for r in records if r.get("commit")))
    is_git = bool(recorded) and _git(cwd, "rev-parse", "--git-dir") is not None
    full: dict[str, str] = {}  # recorded -> full sha, for the commits this repository has
    history: dict[str, int] = {}  # full sha -> position in `git rev-list HEAD` (0: HEAD)
    if is_git:
        out = _git(cwd, "cat-file", "--batch-check",
                   stdin="".join(f"{c}^{{commit}}\n" for c in recorded)) or ""
        for c, line in zip(recorded, out.splitlines()):
            parts = line.split()
            if len(parts) == 3 and parts[1] == "commit":
                full[c] = parts[0]
        revs = _git(cwd, "rev-list", "HEAD") or ""
        history = {sha: i for i, sha in enumerate(revs.split())}
    for c in recorded:  # a short sha of a full one recorded elsewhere: the same commit
        if c not in full:
            longer = {f for f in recorded if len(f) == 40 and f.startswith(c)} | \
                {f for f in full.values() if f.startswith(c)}
            if len(longer) == 1:
                full[c] = longer.pop()
    by_commit: dict[str, dict] = {}
    for rec in records:
        if not rec.get("commit"):
            continue
        sha = full.get(rec["commit"], rec["commit"])
        entry = by_commit.setdefault(sha, {"commit": sha, "short": sha[:7], "runs": 0, "dirty": 0,
                                           "dirty_unknown": 0,
                                           "in_history": (sha in history) if is_git else None})
        entry["runs"] += 1
        entry["dirty"] += rec.get("dirty") is True
        entry["dirty_unknown"] += rec.get("dirty") is None
    commits = list(by_commit.values())
    if is_git:  # oldest first, then the commits HEAD does not reach
        commits.sort(key=lambda e: (not e["in_history"], -history.get(e["commit"], 0)))
    return {"commits": commits, "no_commit": sum(not r.get("commit") for r in records),
            "git": is_git}


def format_commits(summary: dict, inline: int = 6) -> str:
    """One paragraph: the commit range and, per commit, its runs (dirty ones counted); past
    ``inline`` commits, the per-commit list goes in a folded block after the paragraph."""
    commits, none = summary["commits"], summary["no_commit"]
    if not commits:
        return (f"**Code.** None of the {none} runs records its commit (older results.json, or "
                "trained outside a git checkout).")
    ours = [e for e in commits if e["in_history"]]

    def one(e: dict) -> str:
        dirty = f", {e['dirty']} dirty" if e["dirty"] else ""
        dirty += f", {e['dirty_unknown']} unknown if dirty" if e["dirty_unknown"] else ""
        away = f"; {NOT_IN_HISTORY}" if e["in_history"] is False else ""
        return f"`{e['short']}` ({e['runs']} run{'s' * (e['runs'] > 1)}{dirty}{away})"

    if not summary["git"]:
        span = "in no order: the report was written outside a git repository"
    elif len(ours) > 1:
        span = f"oldest first by this repository's history, `{ours[0]['short']}` to " \
               f"`{ours[-1]['short']}`"
    else:
        span = "oldest first by this repository's history"
    n = len(commits)
    text = f"**Code.** The runs come from {n} commit{'s' * (n > 1)} ({span})"
    if n <= inline:
        text += ": " + ", ".join(map(one, commits)) + "."
    else:
        runs, dirty = sum(e["runs"] for e in commits), sum(e["dirty"] for e in commits)
        away = [f"`{e['short']}`" for e in commits if e["in_history"] is False]
        text += f"; {dirty} of their {runs} runs dirty" + (
            f"; {NOT_IN_HISTORY}: {', '.join(away)}" if away else "") + "."
    if none:
        text += f" {none} run{'s' * (none > 1)} record{'s' * (none == 1)} no commit."
    if n > inline:
        text += ("\n\n<details><summary>runs per commit</summary>\n\n"
                 + ", ".join(map(one, commits)) + "\n\n</details>")
    return text


# ============================================================================ learning curves
CURVE_TAGS = ("train/loss", "eval/normalized_mean/target_")


def read_scalars(tb_dir, prefixes: Sequence[str] = CURVE_TAGS) -> dict[str, tuple[list, list]]:
    """{tag: (steps, values)} for the scalar tags starting with any of ``prefixes``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb_dir = Path(tb_dir)
    if not tb_dir.is_dir():
        return {}
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        if any(tag.startswith(p) for p in prefixes):
            by_step = {e.step: e.value for e in acc.Scalars(tag)}  # last write of a step wins
            steps = sorted(by_step)
            out[tag] = (steps, [by_step[s] for s in steps])
    return out


def collect_curves(records: Sequence[dict]) -> dict:
    """{dataset: {label: {tag: [(steps, values) per run]}}} from each run's ``tb`` folder; the
    evaluation curves from results.json where the folder holds none."""
    curves: dict = {}
    for rec in records:
        per = curves.setdefault(rec["dataset_id"], {}).setdefault(rec["label"], {})
        scalars = read_scalars(Path(rec["run_dir"]) / "tb")
        if not any(tag.startswith(CURVE_TAGS[1]) for tag in scalars):
            scalars.update(rec.get("eval_curves") or {})
        for tag, series in scalars.items():
            per.setdefault(tag, []).append(series)
    return curves


# ============================================================================ the report
def _pm(s: dict | None, digits: int) -> str:
    if not s:
        return "—"
    std = "n/a" if s["std"] is None else f"{s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {std}"


def _ci(low, high) -> str:
    from rlmin import stats

    return stats.ci_text(low, high)


def _cell(v, digits=1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _params(values: Sequence[int]) -> str:
    if not values:
        return "–"
    return f"{min(values):,}" + (f"–{max(values):,}" if len(values) > 1 else "")


def _timesteps(row: dict) -> str:
    mean, k, n = row.get("timesteps_seen"), row.get("timesteps_seen_runs", 0), row["n"]
    if mean is None:
        return "–"
    return f"{mean / 1e6:.2f}" + (f" ({k} of {n} runs)" if k < n else "")


def mixed_target_kinds(rows: Sequence[dict]) -> bool:
    """Whether the rows' runs were given their targets in more than one way (scores, returns)."""
    return len({k for r in rows for k in r.get("target_kinds", [])}) > 1


def format_targets(records: Sequence[dict]) -> str:
    """The one sentence on how the targets were given; per row instead where runs differ."""
    kinds = {r.get("target_kind") for r in records}
    if len({TARGET_KINDS.get(k, str(k)) for k in kinds}) > 1:
        return ("**Targets.** The runs were given their targets in different ways (normalised "
                "scores, raw returns): the tables say which per row ('targets given as').")
    kind = next(iter(kinds), None)
    if kind == "scores":
        scores = {tuple(r.get("target_scores") or ()) for r in records}
        given = f" {', '.join(f'{v:g}' for v in next(iter(scores)))}" if len(scores) == 1 and \
            next(iter(scores)) else ""
        return (f"**Targets.** Every run's targets were given as normalised scores (`eval.target_"
                f"scores`{given}), turned into raw returns with each dataset's reference "
                "returns: the target column shows those returns.")
    if kind in ("returns", "task"):
        how = "`eval.target_returns`" if kind == "returns" else "the task's defaults"
        return f"**Targets.** Every run's targets were given as raw returns ({how})."
    return ("**Targets.** The target column is a raw return; how the runs' targets were given "
            "(normalised scores or raw returns) is not recorded (results.json from before the "
            "trainer recorded it).")


def _published_columns(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """The (method, benchmark) pairs that have a published score on any row, in order."""
    return list(dict.fromkeys((p["method"], p["benchmark"]) for r in rows for p in r["published"]))


def format_agent_table(agents: Sequence[dict], kinds: bool | None = None) -> str:
    """``kinds``: add a 'targets given as' column (default: where the rows' runs differ)."""
    kinds = mixed_target_kinds(agents) if kinds is None else kinds
    lines = ["| agent | steps | runs | datasets | **IQM, normalised, last iterate** (first target) "
             "| 95% CI (stratified bootstrap) | mean | the run's own mode minus this one, per run "
             "(mean, 95% CI; own higher / lower) | parameters | timesteps seen (M, real, mean) |"
             + (" targets given as |" if kinds else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if kinds else "")]
    for a in agents:
        d = a.get("own_minus_this")
        word = "" if d is None or d["ci_low"] is None else f" {d['word']}"  # _ci says why none
        paired = (f"{d['mean']:+.1f} {_ci(d['ci_low'], d['ci_high'])}{word} "
                  f"({d['own_higher']} / {d['own_lower']} of {d['n']})") if d else "—"
        lines.append(f"| {a['label']} | {a['steps']} | {a['n']} | {len(a['datasets'])} | "
                     f"{a['iqm']:.1f} | {_ci(a['ci_low'], a['ci_high'])} | {a['mean']:.1f} | {paired} | "
                     f"{_params(a.get('n_params', []))} | {_timesteps(a)} |"
                     + (f" {'; '.join(a.get('target_kinds', []))} |" if kinds else ""))
    return "\n".join(lines)


def format_table(rows: Sequence[dict], kinds: bool | None = None) -> str:
    """``kinds``: add a 'targets given as' column (default: where the rows' runs differ)."""
    kinds = mixed_target_kinds(rows) if kinds is None else kinds
    lines = ["| dataset (Minari) | agent | target | steps | seeds | **normalised, last iterate** "
             "(mean ± std) | 95% CI of mean (bootstrap) | raw return, last iterate (mean ± std) "
             "| best during training (normalised; optimistic, not the headline) "
             "| another acting mode, same checkpoints and episodes (normalised, mean ± std) "
             "| parameters | timesteps seen (M, real, mean) |"
             + (" targets given as |" if kinds else ""),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if kinds else "")]
    for r in rows:
        n = r["normalized"]
        lines.append(
            f"| {r['dataset']} | {r['label']} | {r['target_key']} | {r['steps']} | {r['n']} | "
            f"{_pm(n, 1)} | {_ci(n['ci_low'], n['ci_high']) if n else '—'} | {_pm(r['raw'], 0)} | "
            f"{_pm(r['best_normalized'], 1)} | "
            f"{'; '.join(f'{m} {_pm(v, 1)}' for m, v in r['other_modes'].items()) or '—'} | "
            f"{_params(r.get('n_params', []))} | {_timesteps(r)} |"
            + (f" {'; '.join(r.get('target_kinds', []))} |" if kinds else ""))
    return "\n".join(lines)


def format_published_table(rows: Sequence[dict]) -> str:
    """Papers' scores per (task, level), apart from ours: another benchmark is never one column."""
    columns = _published_columns(rows)
    if not columns:
        return ""
    lines = ["| task | level | " + " | ".join(f"{m} paper ({b})" for m, b in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    seen = set()
    for r in rows:
        if (r["task"], r["level"]) in seen or not r["published"]:
            continue
        seen.add((r["task"], r["level"]))
        scores = {(p["method"], p["benchmark"]): p["score"] for p in r["published"]}
        lines.append(f"| {r['task']} | {r['level']} | "
                     + " | ".join(_cell(scores.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _driver_commands(out_dir: Path) -> list[str]:
    path = out_dir / DRIVER_LOG
    if not path.is_file():
        return []
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def write_report(out_dir, rows: Sequence[dict], agents: Sequence[dict], records: Sequence[dict],
                 warnings: Sequence[str], curves_ok: bool, scores_ok: bool, n_resamples: int,
                 seed: int, commits: dict | None = None, paired: Sequence[dict] = ()) -> Path:
    """``commits``: :func:`commit_summary` of ``records`` (computed here when not given)."""
    out_dir = Path(out_dir)
    commits = commit_summary(records) if commits is None else commits
    kinds = mixed_target_kinds([{"target_kinds": [TARGET_KINDS.get(r.get("target_kind"))]}
                                for r in records])
    lines = [
        "# rlmin reproduction report", "",
        f"{len(records)} runs (results.json) under `{out_dir}`; written "
        f"{datetime.now().isoformat(timespec='seconds')} by `rlmin repro report {out_dir}`.", "",
        "**What the numbers are.** Minari datasets, evaluated in Gymnasium v5 MuJoCo envs. "
        "Normalised score = 100 · (R − ref_min) / (ref_max − ref_min) with each dataset's "
        "reference returns (listed below with their source). Runs are averaged only when they "
        "share the resolved dataset id. Scores that papers published on other benchmarks (D4RL-v2: "
        "v2 envs, D4RL's datasets and reference returns) are not comparable and never share a "
        "table with these: they have their own section at the end, for orientation only.", "",
        format_targets(records), "", format_commits(commits), "",
        "**Headline rule.** The last-iterate policy (after the final training step). Per agent: "
        "the interquartile mean (IQM) over all its runs, every dataset and seed, of the "
        "normalised score at each run's first target return (the task's higher one); its 95% CI "
        "is a stratified bootstrap (rliable's method: runs resampled within each dataset, the "
        f"IQM of the pooled draw; {n_resamples:,} resamples, seed {seed}). Per dataset: one row "
        "per target return, mean ± sample std (ddof=1) over seeds and a 95% percentile bootstrap "
        "CI of the mean; with 3-5 seeds it cannot show more spread than the seeds have. No CI "
        "is given where a dataset has a single run (one seed): resampled within it, that run "
        "adds no spread, and the interval would be too narrow. The IQM "
        "is rliable's (`scipy.stats.trim_mean(x, 0.25)`): int(n/4) whole runs are dropped from "
        "each end, so over 3 runs it is their mean. Parameters: the agent's parameter count; "
        "timesteps seen: the real (unpadded) dataset steps a run trained on, in millions, mean "
        "over the row's runs. Best during training: for each run the highest evaluation of that target "
        "during training (the final one included), then mean ± std over seeds; it picks the best "
        "of several noisy evaluations, so it is optimistic, and is never the headline. Another "
        "acting mode: `rlmin eval RUN --mode window` (or carry) of a run's final checkpoint with "
        "the last iterate's episode seed and count, so both modes play the same episodes; its "
        "agent rows pool those evaluations, and the last column is the per-run difference "
        "(the run's own mode minus the other) at the first target.", "",
        "## Per agent", "", format_agent_table(agents, kinds), "",
        *(["## Paired, run by run", "", "Each agent against the reference, over runs of the same "
           "dataset, seed and length (first target): the mean of the per-pair differences with "
           "a stratified bootstrap 95% CI of the mean; 'level' where the CI spans zero.", "",
           format_paired(paired), ""] if paired else []),
        "## Per dataset", "", format_table(rows, kinds), "",
    ]
    if warnings:
        lines += ["**Warnings**", "", *[f"- {w}" for w in warnings], ""]
    lines += ["## Datasets and reference returns", "",
              "| dataset | env | ref_min | ref_max | behaviour policy (normalised) | "
              "eval episodes per target | reference source |", "|---|---|---:|---:|---:|---:|---|"]
    seen = set()
    for r in rows:
        if r["dataset"] in seen:
            continue
        seen.add(r["dataset"])
        eps = sorted({e for x in rows if x["dataset"] == r["dataset"] for e in x["eval_episodes"]})
        lines.append(f"| {r['dataset']} | {r['env_id']} | {_cell(r['ref']['min'], 2)} | "
                     f"{_cell(r['ref']['max'], 2)} | {_cell(r['behaviour_normalized'])} | "
                     f"{', '.join(map(str, eps)) or '—'} | {r['ref']['source'] or '—'} |")
    published = format_published_table(rows)
    if published:
        sources = dict.fromkeys((p["method"], p["benchmark"], p["source"]) for r in rows
                                for p in r["published"])
        lines += ["", "## Published on another benchmark (not comparable with the tables above)",
                  "", "Other envs, datasets and reference returns: for orientation only.", "",
                  published, "", *[f"- {m} ({b}): {s}" for m, b, s in sources]]
    lines += ["", "## Plots", ""]
    if scores_ok:
        lines += ["![headline](headline.png)", "",
                  "Each dataset's first target: bars the mean over seeds, whiskers the 95% bootstrap "
                  "CI, dots the seeds; a white diamond the same checkpoints acting in another mode; "
                  "the dashed line the behaviour policy.", ""]
    lines.append("![scores](scores.png)" if scores_ok else "(no scores.png: no normalised scores)")
    lines.append("")
    lines.append("Bars: mean normalised last-iterate score over seeds; whiskers: the 95% bootstrap "
                 "CI; dots: the seeds.")
    lines += ["", "![learning curves](curves.png)" if curves_ok else
              "(no curves.png: no TensorBoard events or evaluation history found)", "",
              "Learning curves from each run's TensorBoard events (`<run_dir>/tb`): train/loss "
              "and eval/normalized_mean per target over training steps; where a run kept no tb "
              "folder, its evaluations from results.json (no loss then). Lines are the mean over "
              "seeds, bands the min-max over seeds.", "", "## Commands", ""]
    driver = _driver_commands(out_dir)
    if driver:
        lines += ["The driver invocations that made this folder (`repro_commands.txt`):", "",
                  "```", *driver, "```", ""]
    lines += ["Each run's exact commands (`<run_dir>/command.txt`; a resumed run lists each "
              "launch):", "", "<details><summary>" + f"{len(records)} runs" + "</summary>", "",
              "```"]
    for rec in sorted(records, key=lambda r: r["run_dir"]):
        lines += rec["commands"] or [f"# {rec['run_dir']}: no command.txt (not run by the driver)"]
    lines += ["```", "", "</details>", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def report(out_dir, n_resamples: int | None = None, seed: int | None = None,
           echo: Callable[[str], None] = print, against: Sequence[str] = ()) -> dict:
    """Collect the results under ``out_dir``; write report.md, report.json, headline.png,
    scores.png, curves.png. ``against``: agent labels every other agent is paired with, run by
    run (:func:`paired_rows`)."""
    from rlmin import plots, stats

    out_dir = Path(out_dir)
    n_resamples = stats.DEFAULT_RESAMPLES if n_resamples is None else n_resamples
    seed = stats.DEFAULT_SEED if seed is None else seed
    records = collect(out_dir)
    if not records:
        raise ReproError(f"no {RESULTS} under {out_dir}: run the grid first "
                         f"(rlmin repro run --out {out_dir} ...)")
    rows = dataset_rows(records, n_resamples=n_resamples, seed=seed)
    agents = agent_rows(records, n_resamples=n_resamples, seed=seed)
    warnings = warnings_of(records, rows, agents)
    commits = commit_summary(records)
    paired = [p for ref in against for p in paired_rows(records, ref, n_resamples, seed)]
    scores_ok = plots.plot_scores(rows, out_dir / "scores.png")
    plots.plot_first_targets(rows, out_dir / "headline.png")  # written whenever scores.png is
    curves_ok = plots.plot_curves(collect_curves(records), out_dir / "curves.png")
    md = write_report(out_dir, rows, agents, records, warnings, curves_ok, scores_ok,
                      n_resamples, seed, commits=commits, paired=paired)
    (out_dir / "report.json").write_text(json.dumps(
        {"agents": agents, "paired": paired, "rows": rows, "warnings": warnings, "commits": commits,
         "targets": format_targets(records).replace("**", "")}, indent=1, default=float))
    echo(format_agent_table(agents) + "\n\n" + (format_paired(paired) + "\n\n" if paired else "")
         + format_table(rows) + "\n\n"
         + format_commits(commits).split("\n")[0].replace("**", ""))
    for w in warnings:
        echo(f"warning: {w}")
    echo(f"\nwrote {md}, {out_dir / 'report.json'}"
         + (f", {out_dir / 'headline.png'}, {out_dir / 'scores.png'}" if scores_ok else "")
         + (f", {out_dir / 'curves.png'}" if curves_ok else ""))
    return {"rows": rows, "agents": agents, "warnings": warnings, "records": records,
            "commits": commits,
            "report": md, "scores_png": out_dir / "scores.png" if scores_ok else None,
            "curves_png": out_dir / "curves.png" if curves_ok else None}
