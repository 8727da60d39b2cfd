"""PNG figures for reproduction reports: scores with confidence intervals, and learning curves.

Matplotlib's object API (``matplotlib.figure.Figure`` + ``savefig``) is used, not pyplot, so no
GUI backend and no global figure state are involved (safe on a headless machine and in tests).
Inputs are the plain structures of ``rlmin.report``: ``dataset_rows`` and ``collect_curves``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np


def _figure(rows: int, cols: int, width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def plot_scores(rows: Sequence[dict], path) -> bool:
    """Bar chart per dataset: agents on x, one bar per target; whiskers = the 95% bootstrap CI,
    dots = the seeds. Returns False (and writes nothing) when no row has normalised scores."""
    rows = [r for r in rows if r.get("normalized")]
    if not rows:
        return False
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = _figure(len(datasets), 1, 1.0, 3.6)
    fig.set_figwidth(max(7.5, 1.6 * max(len({r["label"] for r in rows if r["dataset"] == d})
                                        for d in datasets) + 2))
    for ax, ds in zip(axes[:, 0], datasets):
        sel = [r for r in rows if r["dataset"] == ds]
        labels = list(dict.fromkeys(f"{r['label']}\n{r['steps']} steps" if _many_steps(sel, r)
                                    else r["label"] for r in sel))
        targets = list(dict.fromkeys(r["target_key"] for r in sel))
        width = 0.8 / len(targets)
        for j, tk in enumerate(targets):
            xs, means, lo, hi = [], [], [], []
            for r in sel:
                if r["target_key"] != tk:
                    continue
                name = f"{r['label']}\n{r['steps']} steps" if _many_steps(sel, r) else r["label"]
                x = labels.index(name) + (j - (len(targets) - 1) / 2) * width
                n = r["normalized"]
                xs.append(x)
                means.append(n["mean"])
                lo.append(n["mean"] - n["ci_low"] if n["ci_low"] is not None else 0.0)
                hi.append(n["ci_high"] - n["mean"] if n["ci_high"] is not None else 0.0)
                ax.scatter(np.full(len(n["values"]), x), n["values"], s=10, color="black",
                           zorder=3)
            ax.bar(xs, means, width=width * 0.95, yerr=[lo, hi], capsize=3,
                   label=f"target {tk}", alpha=0.8)
        ax.set_xticks(range(len(labels)), labels)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylabel("normalised score\n(last iterate)")
        ax.set_title(f"{ds} (Minari, Gymnasium v5)\nlast iterate: mean over seeds, whiskers the "
                     "95% bootstrap CI, dots the seeds", fontsize="medium")
        ax.legend(fontsize="small")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def plot_first_targets(rows: Sequence[dict], path, columns: int = 3) -> bool:
    """The headline in one figure: a panel per dataset, a bar per agent at the dataset's first
    target (mean over seeds, whiskers the 95% bootstrap CI, dots the seeds), a white diamond for
    the same checkpoints acting in another mode, and the behaviour policy's score as a dashed line.
    False (nothing written) when no row has normalised scores."""
    first: dict[str, str] = {}
    sel = [r for r in rows if r.get("normalized")
           and first.setdefault(r["dataset"], r["target_key"]) == r["target_key"]]
    if not sel:
        return False
    datasets = list(dict.fromkeys(r["dataset"] for r in sel))
    labels = sorted({r["label"] for r in sel})
    ncols = min(columns, len(datasets))
    fig, axes = _figure(math.ceil(len(datasets) / ncols), ncols, 0.55 * len(labels) + 1.6, 2.6)
    for k, ax in enumerate(axes.flat):
        if k >= len(datasets):
            ax.set_visible(False)
            continue
        ds = datasets[k]
        here = {r["label"]: r for r in sel if r["dataset"] == ds}
        for i, label in enumerate(labels):
            r = here.get(label)
            if r is None:
                continue
            n = r["normalized"]
            ax.bar(i, n["mean"], width=0.7, color=f"C{i}", alpha=0.8,
                   yerr=None if n["ci_low"] is None else [[n["mean"] - n["ci_low"]],
                                                          [n["ci_high"] - n["mean"]]], capsize=3)
            ax.scatter(np.full(len(n["values"]), i), n["values"], s=8, color="black", zorder=3)
            for other in (r.get("other_modes") or {}).values():
                ax.scatter([i + 0.22], [other["mean"]], marker="D", s=22, color="white",
                           edgecolors="black", zorder=4)
        behaviour = next((r.get("behaviour_normalized") for r in here.values()), None)
        if behaviour is not None:
            ax.axhline(behaviour, color="black", ls="--", lw=0.8)
        ax.set_xticks(range(len(labels)), labels, fontsize="small")
        ax.axhline(0, color="grey", lw=0.5)
        # two lines: ids are long
        ax.set_title(f"{ds}\ntarget {here[next(iter(here))]['target_key']}", fontsize="small")
    fig.suptitle("Normalised last-iterate score (Minari, Gymnasium v5): mean over seeds, 95% "
                 "bootstrap CI, seeds as dots;\n"
                 "white diamonds: the same checkpoints in another acting "
                 "mode; dashed: the behaviour policy", fontsize="medium")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def _many_steps(sel: Sequence[dict], row: dict) -> bool:
    return len({r["steps"] for r in sel if r["label"] == row["label"]}) > 1


def mean_curve(series: Sequence[tuple[Sequence[int], Sequence[float]]]):
    """(steps, mean, min, max) over runs on the union of their steps (NaN where a run has none)."""
    steps = sorted({s for st, _ in series for s in st})
    index = {s: i for i, s in enumerate(steps)}
    grid = np.full((len(series), len(steps)), np.nan)
    for k, (st, vals) in enumerate(series):
        for s, v in zip(st, vals):
            grid[k, index[s]] = v
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns cannot happen
            return (np.asarray(steps), np.nanmean(grid, axis=0), np.nanmin(grid, axis=0),
                    np.nanmax(grid, axis=0))


def plot_curves(curves: dict, path, loss_tag: str = "train/loss",
                eval_prefix: str = "eval/normalized_mean/target_") -> bool:
    """One row per dataset: train/loss, then eval/normalized_mean of each target, over steps;
    one line per agent (mean over seeds) with a min-max band. False when there is nothing."""
    plan = []
    for ds, per_label in curves.items():
        tags = sorted({t for per in per_label.values() for t in per if t.startswith(eval_prefix)},
                      key=lambda t: -_target_value(t, eval_prefix))
        has_loss = any(loss_tag in per for per in per_label.values())
        cols = ([loss_tag] if has_loss else []) + tags
        if cols:
            plan.append((ds, per_label, cols))
    if not plan:
        return False
    ncols = max(len(c) for _, _, c in plan)
    fig, axes = _figure(len(plan), ncols, 4.2, 3.0)
    for i, (ds, per_label, cols) in enumerate(plan):
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(cols):
                ax.set_visible(False)
                continue
            tag = cols[j]
            for label in sorted(per_label):
                series = per_label[label].get(tag)
                if not series:
                    continue
                steps, mean, lo, hi = mean_curve(series)
                line, = ax.plot(steps, mean, marker="o" if len(steps) < 20 else None, ms=3,
                                label=f"{label} (n={len(series)})")
                if len(series) > 1:
                    ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
            if tag == loss_tag:
                ax.set_title(f"{ds}\ntrain/loss", fontsize="medium")
                if all(v > 0 for per in per_label.values() for _, vals in per.get(tag, [])
                       for v in vals):
                    ax.set_yscale("log")
            else:
                ax.set_title(f"{ds}\neval normalised, target {tag[len(eval_prefix):]}",
                             fontsize="medium")
            ax.set_xlabel("training step")
            ax.legend(fontsize="x-small")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return True


def _target_value(tag: str, prefix: str) -> float:
    try:
        return float(tag[len(prefix):])
    except ValueError:
        return -math.inf
