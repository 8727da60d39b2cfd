"""Two result folders, run against run: the same agent, dataset and seed trained two ways.

    python scripts/paired_runs.py docs/results/suite docs/results/episode-suite --label mingru

Pairs the runs of ``--label`` in folder A (the baseline) with those in folder B by (dataset,
seed); runs without a partner are left out and counted. Per dataset and over all pairs: the
last-iterate normalised score at the first target of A, of A's other acting mode on the same
checkpoints where every paired A run has one (``rlmin eval RUN --mode window``), and of B; the
IQM over the pairs with a stratified bootstrap 95% CI (strata: datasets, as `rlmin repro
report`; the IQM is rliable's, ``rlmin.stats``); and the paired difference B − A (mean, a
stratified bootstrap CI of the mean, and how many pairs B wins). Only paired runs enter, so both
IQMs are over the same datasets and seeds. A folder whose runs of one dataset were trained on
different data (fingerprints) is refused, as by `rlmin repro report`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlmin import report, stats
from rlmin.checkpoint import atomic_write_bytes
from rlmin.grid import ReproError


class PairingError(Exception):
    pass


def first_scores(records, label: str, folder: str) -> dict[tuple, dict]:
    """{(dataset, seed): {"score", "target", other mode: score}} of ``label``'s runs."""
    out = {}
    for rec in records:
        if rec["label"] != label or not rec["targets"]:
            continue
        key, first = next(iter(rec["targets"].items()))
        if first["normalized"] is None:
            continue
        pair = (rec["dataset_id"], rec["seed"])
        if pair in out:
            raise PairingError(f"{folder} has two runs of {label!r}, seed {rec['seed']}, on "
                               f"{rec['dataset_id']}: keep one configuration per folder")
        out[pair] = {"score": first["normalized"], "target": key,
                     **{m: s.get(key) for m, s in rec["other_modes"].items()}}
    return out


def compare(a_dir, b_dir, label: str, label_b: str | None = None, n_resamples: int | None = None,
            seed: int | None = None) -> dict:
    kw = {k: v for k, v in (("n_resamples", n_resamples), ("seed", seed)) if v is not None}
    a = first_scores(report.collect(a_dir), label, str(a_dir))
    b = first_scores(report.collect(b_dir), label_b or label, str(b_dir))
    pairs = sorted(set(a) & set(b), key=lambda p: (p[0], p[1] is None, p[1] or 0))
    if not pairs:
        raise PairingError(f"no run of {label!r} in {a_dir} has a partner (same dataset and seed) "
                           f"in {b_dir}")
    for p in pairs:
        if a[p]["target"] != b[p]["target"]:
            raise PairingError(f"{p[0]} seed {p[1]}: first targets differ ({a[p]['target']} in "
                               f"{a_dir}, {b[p]['target']} in {b_dir})")
    modes = sorted({m for p in pairs for m in a[p] if m not in ("score", "target")})
    modes = [m for m in modes if all(a[p].get(m) is not None for p in pairs)]  # every pair has it
    columns = {"A": lambda p: a[p]["score"], **{f"A {m}": (lambda p, m=m: a[p][m]) for m in modes},
               "B": lambda p: b[p]["score"]}
    datasets = list(dict.fromkeys(p[0] for p in pairs))
    rows = []
    for d in datasets:
        ps = [p for p in pairs if p[0] == d]
        rows.append({"dataset": d, "target": a[ps[0]]["target"], "seeds": [p[1] for p in ps],
                     **{c: sum(f(p) for p in ps) / len(ps) for c, f in columns.items()}})
    per = {c: {d: [f(p) for p in pairs if p[0] == d] for d in datasets} for c, f in columns.items()}
    diffs = {d: [b[p]["score"] - a[p]["score"] for p in pairs if p[0] == d] for d in datasets}
    flat = [v for vs in diffs.values() for v in vs]
    low, high = stats.seed_spread_ci(list(diffs.values()), "mean", **kw)
    return {"a": str(a_dir), "b": str(b_dir), "label": label, "label_b": label_b or label,
            "pairs": len(pairs), "unpaired_a": len(set(a) - set(b)), "unpaired_b": len(set(b) - set(a)),
            "columns": list(columns), "rows": rows,
            "overall": {c: stats.iqm_over_tasks(per[c], **kw) for c in columns},
            "b_minus_a": {"mean": sum(flat) / len(flat), "ci_low": low, "ci_high": high,
                          "b_higher": sum(v > 0 for v in flat), "b_lower": sum(v < 0 for v in flat)}}


def format_result(r: dict) -> str:
    cols = r["columns"]
    lines = [f"A = {r['a']} ({r['label']}), B = {r['b']} ({r['label_b']}): {r['pairs']} pairs "
             f"(unpaired: {r['unpaired_a']} in A, {r['unpaired_b']} in B). Normalised, last "
             "iterate, first target; mean over the paired seeds.", "",
             "| dataset | target | seeds | " + " | ".join(cols) + " | B − A |",
             "|---|---:|---|" + "---:|" * (len(cols) + 1)]
    for row in r["rows"]:
        lines.append(f"| {row['dataset']} | {row['target']} | {','.join(map(str, row['seeds']))} | "
                     + " | ".join(f"{row[c]:.1f}" for c in cols) + f" | {row['B'] - row['A']:+.1f} |")
    o, d = r["overall"], r["b_minus_a"]
    lines += ["", "| over all pairs | IQM | 95% CI (stratified bootstrap) |", "|---|---:|---:|",
              *[f"| {c} | {o[c]['iqm']:.1f} | {stats.ci_text(o[c]['ci_low'], o[c]['ci_high'])} |"
                for c in cols],
              "", f"B − A per pair: mean {d['mean']:+.1f}, 95% CI "
                  f"{stats.ci_text(d['ci_low'], d['ci_high'], signed=True)}; B higher in "
                  f"{d['b_higher']}, lower in {d['b_lower']} of {r['pairs']}."]
    single = [row["dataset"] for row in r["rows"] if len(row["seeds"]) == 1]
    if single:  # a stratum of one run is drawn the same every time
        lines.append(f"{len(single)} of {len(r['rows'])} datasets have one pair: they add no spread "
                     "to the CIs, which are then narrower than the seeds' noise.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="the baseline's result folder (results.json at any depth)")
    ap.add_argument("b", type=Path, help="the other folder")
    ap.add_argument("--label", required=True, help="the agent label in A (mingru, minlstm, ...)")
    ap.add_argument("--label-b", help="its label in B, where it differs")
    ap.add_argument("--out", type=Path, help="also write the comparison here as JSON (a new file)")
    ap.add_argument("--overwrite", action="store_true", help="let --out replace an existing file")
    args = ap.parse_args(argv)
    if args.out and args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists: give another --out, or --overwrite to replace it",
              file=sys.stderr)
        return 2
    if args.out and not args.out.parent.is_dir():
        print(f"error: the folder of --out, {args.out.parent}, does not exist: create it first",
              file=sys.stderr)
        return 2
    for folder in (args.a, args.b):
        if not folder.is_dir():
            print(f"error: {folder} is not a folder: give two result folders", file=sys.stderr)
            return 2
    try:
        result = compare(args.a, args.b, args.label, args.label_b)
    except (PairingError, ReproError) as e:  # ReproError: a folder mixes data fingerprints
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_result(result))
    if args.out:
        atomic_write_bytes(args.out, lambda f: f.write(json.dumps(result, indent=1).encode()))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
