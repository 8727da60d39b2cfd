"""The stabiliser table of protocol v2 (docs/RESULTS.md): four conditions from one grid folder.

    python scripts/protocol_table.py docs/results/protocol [--out FILE.json]

Each run of ``configs/grids/protocol.yaml`` trained with a constant or a cosine learning rate and
kept an EMA of its weights; it was evaluated with the EMA weights (``history[].targets``,
``last_iterate``) and the raw weights (``history[].raw_targets``, ``last_iterate_raw``) at the same
steps on the same episodes. Per condition (schedule x weights), over its runs, at each run's first
target: C = runs whose last evaluation is below half of their best, the IQM of the last
evaluation (L) with its stratified-bootstrap CI (strata: datasets), the IQM of the best (B) and
G = B - L; then the same per agent. Ranked by the pre-registered rule of docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlmin import stats
from rlmin.errors import ReproError
from rlmin.report import check_fingerprints

TIE = 2.0  # points: differences under this count as ties (the rule's)
SIMPLER = {("constant", "raw"): 0, ("constant", "ema"): 1, ("cosine", "raw"): 2, ("cosine", "ema"): 3}


def results_in(folder: Path):
    """Every results.json under ``folder``: (path, its contents, the key of its first target)."""
    for path in sorted(folder.rglob("results.json")):
        res = json.loads(path.read_text())
        yield path, res, next(iter(res["last_iterate"]["targets"]))


def folder_error(runs: list[dict], out: str | None) -> str | None:
    """Why a table of ``runs`` cannot be made (None: it can): as `rlmin repro report`, runs of one
    dataset on different data are never pooled; an existing ``out`` file is never overwritten."""
    try:
        check_fingerprints(list({r["path"]: {"dataset_id": r["dataset"], "fingerprint": r["fingerprint"],
                                             "run_dir": str(Path(r["path"]).parent)} for r in runs}.values()))
    except ReproError as e:
        return str(e)
    if out and Path(out).exists():
        return f"{out} exists; choose another file"
    return None


def runs_of(folder: Path) -> list[dict]:
    """Per run and weights: dataset, agent label, schedule, seed, its curve at the first target."""
    out = []
    for path, res, key in results_in(folder):
        cfg = res["config"]
        for weights, field in (("ema", "targets"), ("raw", "raw_targets")):
            curve = [(h["step"], h[field][key]["normalized_mean"]) for h in res["history"]
                     if field in h]
            if not curve:
                continue
            out.append({"dataset": res["dataset"]["id"], "agent": res["label"], "seed": res["seed"],
                        "fingerprint": res.get("provenance", {}).get("data_fingerprint"),
                        "schedule": cfg["train"]["lr_schedule"], "weights": weights,
                        "last": curve[-1][1], "best": max(v for _, v in curve),
                        "steps": [s for s, _ in curve], "path": str(path)})
    return out


def summarize(runs: list[dict]) -> dict:
    per_last, per_best = {}, {}
    for r in runs:
        per_last.setdefault(r["dataset"], []).append(r["last"])
        per_best.setdefault(r["dataset"], []).append(r["best"])
    last, best = stats.iqm_over_tasks(per_last), stats.iqm_over_tasks(per_best)
    collapsed = [r for r in runs if r["last"] < 0.5 * r["best"]]
    return {"n": len(runs), "C": len(collapsed), "L": last["iqm"], "L_ci": [last["ci_low"], last["ci_high"]],
            "B": best["iqm"], "G": best["iqm"] - last["iqm"],
            "collapsed": [f"{r['dataset']} {r['agent']} seed {r['seed']}: {r['last']:.1f} "
                          f"(best {r['best']:.1f})" for r in collapsed]}


def rank(conditions: dict) -> list[tuple]:
    """The rule: fewest C; then smallest G; then highest L (ties under 2 points); then simpler."""
    order = sorted(conditions, key=lambda c: SIMPLER[c])
    def better(a, b):  # is a strictly better than b under the rule?
        x, y = conditions[a], conditions[b]
        if x["C"] != y["C"]:
            return x["C"] < y["C"]
        if abs(x["G"] - y["G"]) >= TIE:
            return x["G"] < y["G"]
        if abs(x["L"] - y["L"]) >= TIE:
            return x["L"] > y["L"]
        return SIMPLER[a] < SIMPLER[b]
    ranked = []
    for c in order:  # insertion by the pairwise rule (ties are broken by simplicity, so total)
        i = 0
        while i < len(ranked) and better(ranked[i], c):
            i += 1
        ranked.insert(i, c)
    return ranked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--out", help="also write the table as JSON to this new file")
    args = parser.parse_args(argv)
    runs = runs_of(Path(args.folder))
    if not runs:
        print(f"protocol_table: no results.json with EMA and raw evaluations under {args.folder}",
              file=sys.stderr)
        return 2
    if error := folder_error(runs, args.out):
        print(f"protocol_table: {error}", file=sys.stderr)
        return 2
    conditions = {}
    for sched in ("constant", "cosine"):
        for weights in ("raw", "ema"):
            mine = [r for r in runs if (r["schedule"], r["weights"]) == (sched, weights)]
            if mine:
                conditions[(sched, weights)] = summarize(mine)
    agents = sorted({r["agent"] for r in runs})
    print(f"{len({r['path'] for r in runs})} runs, {len({r['dataset'] for r in runs})} datasets, "
          f"agents {', '.join(agents)}; normalised score at the first target, IQM with a "
          "stratified bootstrap 95% CI\n")
    print("| condition | runs | C (last < best/2) | IQM last (L) | 95% CI | IQM best | G = best - last |"
          + "".join(f" L {a} | G {a} |" for a in agents))
    print("|---|---:|---:|---:|---|---:|---:|" + "---:|---:|" * len(agents))
    table = {}
    for cond in rank(conditions):
        s = conditions[cond]
        cells = []
        per_agent = {}
        for a in agents:
            mine = [r for r in runs if r["agent"] == a and (r["schedule"], r["weights"]) == cond]
            per_agent[a] = summarize(mine) if mine else None
            cells.append(f" {per_agent[a]['L']:.1f} | {per_agent[a]['G']:.1f} |" if mine else " – | – |")
        print(f"| {cond[0]} lr, {cond[1]} weights | {s['n']} | {s['C']} | {s['L']:.1f} | "
              f"{stats.ci_text(*s['L_ci'])} | {s['B']:.1f} | {s['G']:.1f} |" + "".join(cells))
        table[f"{cond[0]}/{cond[1]}"] = {**s, "per_agent": per_agent}
    best = rank(conditions)[0]
    print(f"\nthe rule picks: {best[0]} lr with {best[1]} weights")
    for cond in rank(conditions):
        for line in conditions[cond]["collapsed"]:
            print(f"  collapsed under {cond[0]}/{cond[1]}: {line}")
    if args.out:
        Path(args.out).write_text(json.dumps({"ranked": [f"{a}/{b}" for a, b in rank(conditions)],
                                              "conditions": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
