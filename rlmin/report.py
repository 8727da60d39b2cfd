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
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

from rlmin.grid import COMMAND_FILE, DRIVER_LOG, GRID_FILE, RESULTS, ReproError

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
    commands = []  # every launch of the run, in order (a resumed run has several)
    if (run_dir / COMMAND_FILE).is_file():
        commands = [ln for ln in (run_dir / COMMAND_FILE).read_text().splitlines()
                    if ln.strip() and not ln.startswith("#")]
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
        "settings": {k: v for k, v in _flat(cfg).items() if k not in BOOKKEEPING},
        "other_modes": _other_modes(run_dir, res),
        "eval_curves": _eval_curves(res),
    }


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


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


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
    mark_variants(records)
    return records


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
    paired: dict[tuple, list[float]] = {}  # own mode minus the other, per run with both
    for rec in sorted(records, key=_dataset_order):
        key, first = next(iter(rec["targets"].items()), (None, {}))
        first = first.get("normalized")
        if first is None:
            continue
        own = groups.setdefault((rec["label"], rec["steps"], None), {})
        own.setdefault(rec["dataset_id"], []).append(first)
        for mode, scores in rec["other_modes"].items():  # the same checkpoint acting another way
            if scores.get(key) is not None:
                group = (rec["label"], rec["steps"], mode)
                groups.setdefault(group, {}).setdefault(rec["dataset_id"], []).append(scores[key])
                paired.setdefault(group, []).append(first - scores[key])
    rows = []
    order = lambda g: (g[0][0], g[0][1] or 0, g[0][2] or "")  # noqa: E731 (label, steps, own mode first)
    for (label, steps, mode), per in sorted(groups.items(), key=order):
        row = {"label": label if mode is None else f"{label}, {mode} acting (same checkpoints)",
               "steps": steps, "datasets": list(per), "mode": mode,
               **stats.iqm_over_tasks(per, **_stats_kw(n_resamples, seed))}
        if mode is not None:
            diffs = paired[(label, steps, mode)]
            row["own_minus_this"] = {"n": len(diffs), "mean": sum(diffs) / len(diffs),
                                     "own_higher": sum(d > 0 for d in diffs),
                                     "own_lower": sum(d < 0 for d in diffs)}
        rows.append(row)
    return rows


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
    return f"[{low:.1f}, {high:.1f}]"


def _cell(v, digits=1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _published_columns(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """The (method, benchmark) pairs that have a published score on any row, in order."""
    return list(dict.fromkeys((p["method"], p["benchmark"]) for r in rows for p in r["published"]))


def format_agent_table(agents: Sequence[dict]) -> str:
    lines = ["| agent | steps | runs | datasets | **IQM, normalised, last iterate** (first target) "
             "| 95% CI (stratified bootstrap) | mean | the run's own mode minus this one, per run "
             "(mean; own higher / lower) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for a in agents:
        d = a.get("own_minus_this")
        paired = f"{d['mean']:+.1f} ({d['own_higher']} / {d['own_lower']} of {d['n']})" if d else "—"
        lines.append(f"| {a['label']} | {a['steps']} | {a['n']} | {len(a['datasets'])} | "
                     f"{a['iqm']:.1f} | {_ci(a['ci_low'], a['ci_high'])} | {a['mean']:.1f} | {paired} |")
    return "\n".join(lines)


def format_table(rows: Sequence[dict]) -> str:
    lines = ["| dataset (Minari) | agent | target | steps | seeds | **normalised, last iterate** "
             "(mean ± std) | 95% CI of mean (bootstrap) | raw return, last iterate (mean ± std) "
             "| best during training (normalised; optimistic, not the headline) "
             "| another acting mode, same checkpoints and episodes (normalised, mean ± std) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n = r["normalized"]
        lines.append(
            f"| {r['dataset']} | {r['label']} | {r['target_key']} | {r['steps']} | {r['n']} | "
            f"{_pm(n, 1)} | {_ci(n['ci_low'], n['ci_high']) if n else '—'} | {_pm(r['raw'], 0)} | "
            f"{_pm(r['best_normalized'], 1)} | "
            f"{'; '.join(f'{m} {_pm(v, 1)}' for m, v in r['other_modes'].items()) or '—'} |")
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
                 seed: int) -> Path:
    out_dir = Path(out_dir)
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
        "**Headline rule.** The last-iterate policy (after the final training step). Per agent: "
        "the interquartile mean (IQM) over all its runs, every dataset and seed, of the "
        "normalised score at each run's first target return (the task's higher one); its 95% CI "
        "is a stratified bootstrap (rliable's method: runs resampled within each dataset, the "
        f"IQM of the pooled draw; {n_resamples:,} resamples, seed {seed}). Per dataset: one row "
        "per target return, mean ± sample std (ddof=1) over seeds and a 95% percentile bootstrap "
        "CI of the mean; with 3-5 seeds it cannot show more spread than the seeds have. The IQM "
        "weights the runs across the 25%/75% quantiles by the fraction inside (rliable's "
        "`trim_mean(x, 0.25)` drops whole runs; the two agree when the number of runs is a "
        "multiple of 4). Best during training: for each run the highest evaluation of that target "
        "during training (the final one included), then mean ± std over seeds; it picks the best "
        "of several noisy evaluations, so it is optimistic, and is never the headline. Another "
        "acting mode: `rlmin eval RUN --mode window` (or carry) of a run's final checkpoint with "
        "the last iterate's episode seed and count, so both modes play the same episodes; its "
        "agent rows pool those evaluations, and the last column is the per-run difference "
        "(the run's own mode minus the other) at the first target.", "",
        "## Per agent", "", format_agent_table(agents), "",
        "## Per dataset", "", format_table(rows), "",
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
           echo: Callable[[str], None] = print) -> dict:
    """Collect the results under ``out_dir``; write report.md, report.json, headline.png,
    scores.png, curves.png."""
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
    scores_ok = plots.plot_scores(rows, out_dir / "scores.png")
    plots.plot_first_targets(rows, out_dir / "headline.png")  # written whenever scores.png is
    curves_ok = plots.plot_curves(collect_curves(records), out_dir / "curves.png")
    md = write_report(out_dir, rows, agents, records, warnings, curves_ok, scores_ok,
                      n_resamples, seed)
    (out_dir / "report.json").write_text(json.dumps(
        {"agents": agents, "rows": rows, "warnings": warnings}, indent=1, default=float))
    echo(format_agent_table(agents) + "\n\n" + format_table(rows))
    for w in warnings:
        echo(f"warning: {w}")
    echo(f"\nwrote {md}, {out_dir / 'report.json'}"
         + (f", {out_dir / 'headline.png'}, {out_dir / 'scores.png'}" if scores_ok else "")
         + (f", {out_dir / 'curves.png'}" if curves_ok else ""))
    return {"rows": rows, "agents": agents, "warnings": warnings, "records": records,
            "report": md, "scores_png": out_dir / "scores.png" if scores_ok else None,
            "curves_png": out_dir / "curves.png" if curves_ok else None}
