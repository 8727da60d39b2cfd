"""Issue 21's goals for the protocol v2 table, judged by rules written before the table was complete.

    rlmin repro report docs/results/table --against transformer
    python scripts/table_goals.py docs/results/table [--out FILE.json]

Everything is at each run's first target (110% of the dataset's expert), last iterate, EMA
weights. The words, fixed on 2026-12-07 with 15 of the 108 runs finished (docs/RESULTS.md).
A CI needs two runs or more in every dataset (rlmin.stats.seed_spread_ci); without one,
nothing is "met":

* **stability**, per agent: G = IQM of the best evaluation - IQM of the last <= 5 points, and
  C = runs whose last evaluation is below half of their best = 0. Met or not met.
* **minRNN >= DT**: met when the agent's IQM >= DT's and the paired per-run difference
  (agent - DT, same dataset and seed; stratified bootstrap CI from the report) is above zero;
  not shown when the IQM is >= DT's but the paired CI holds zero ("level"); not met when the
  IQM is below DT's ("level" or "below" by the CI).
* **minRNN >= BC, CIs apart**: met when the agent's IQM CI lies wholly above BC's; not shown
  when its IQM is >= BC's but the CIs overlap; not met when its IQM is below BC's.
* **medium datasets >= behaviour**, per minRNN and medium dataset: met when the seed mean's CI
  (the report's bootstrap over seeds) lies wholly at or above the behaviour policy's score; not
  shown when the mean is >= it but the CI holds it; not met when the mean is below it.

While the folder lacks runs (fewer than nine datasets or three seeds a cell), every verdict is
labelled provisional with what it covers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from protocol_table import folder_error, runs_of, summarize

from rlmin.stats import ci_text

MAX_GAP = 5.0  # points, best-during-training IQM - last-iterate IQM
DATASETS, SEEDS = 9, 3


def stability(runs: list[dict], agents: list[str]) -> list[dict]:
    out = []
    for a in agents:
        s = summarize([r for r in runs if r["agent"] == a])
        out.append({"goal": f"{a}: G <= {MAX_GAP:g} and no collapse", "agent": a,
                    "value": f"G {s['G']:.1f} (best {s['B']:.1f}, last {s['L']:.1f}), "
                             f"C {s['C']} of {s['n']}",
                    "verdict": "met" if s["G"] <= MAX_GAP and s["C"] == 0 else "not met",
                    "collapsed": s["collapsed"]})
    return out


def against_dt(agent: dict, dt: dict, paired: dict | None) -> dict:
    goal = {"goal": f"{agent['label']} IQM >= DT's", "agent": agent["label"],
            "value": f"IQM {agent['iqm']:.1f} vs DT {dt['iqm']:.1f}"}
    if paired is None:
        return {**goal, "verdict": "no paired runs (run the report with --against transformer)"}
    goal["value"] += (f"; paired {paired['mean']:+.1f} "
                      f"{ci_text(paired['ci_low'], paired['ci_high'], signed=True)} over "
                      f"{paired['n']} pairs ({paired['word']})")
    if agent["iqm"] < dt["iqm"]:
        return {**goal, "verdict": "not met"}
    shown = paired["ci_low"] is not None and paired["ci_low"] > 0
    return {**goal, "verdict": "met" if shown else "not shown"}


def against_bc(agent: dict, bc: dict) -> dict:
    goal = {"goal": f"{agent['label']} IQM >= BC's, CIs apart", "agent": agent["label"],
            "value": f"{agent['iqm']:.1f} {ci_text(agent['ci_low'], agent['ci_high'])} vs BC "
                     f"{bc['iqm']:.1f} {ci_text(bc['ci_low'], bc['ci_high'])}"}
    if agent["iqm"] < bc["iqm"]:
        return {**goal, "verdict": "not met"}
    apart = None not in (agent["ci_low"], bc["ci_high"]) and agent["ci_low"] > bc["ci_high"]
    return {**goal, "verdict": "met" if apart else "not shown"}


def medium_rows(report: dict, labels: list[str]) -> list[dict]:
    out, first = [], {}
    for row in report["rows"]:
        if first.setdefault(row["dataset"], row["target_key"]) != row["target_key"]:
            continue  # the first target only
        behaviour = row.get("behaviour_normalized")
        if row.get("level") != "medium" or row["label"] not in labels or behaviour is None:
            continue
        s = row["normalized"]
        verdict = ("not met" if s["mean"] < behaviour else
                   "met" if s["ci_low"] is not None and s["ci_low"] >= behaviour else "not shown")
        out.append({"goal": f"{row['label']} on {row['dataset']}: seed mean >= behaviour",
                    "agent": row["label"], "verdict": verdict,
                    "value": f"{s['mean']:.1f} {ci_text(s['ci_low'], s['ci_high'])} over "
                             f"{s['n']} seeds vs behaviour {behaviour:.1f}"})
    return out


def goals(runs: list[dict], report: dict, dt: str, bc: str) -> tuple[list[dict], str]:
    """The verdicts and what they cover, from the folder's runs (``runs_of``) and its report."""
    agents = {a["label"]: a for a in report["agents"] if not a.get("mode")}
    for need in (dt, bc):
        if need not in agents:
            raise KeyError(f"no agent labelled {need!r} in the report (labels: {', '.join(agents)})")
    minrnns = [label for label in agents if label not in (dt, bc)]
    paired = {(p["label"], p["reference"]): p for p in report.get("paired") or []}
    out = stability([r for r in runs if r["weights"] == "ema"], list(agents))
    out += [against_dt(agents[m], agents[dt], paired.get((m, dt))) for m in minrnns]
    out += [against_bc(agents[m], agents[bc]) for m in minrnns]
    out += medium_rows(report, minrnns)
    n_datasets = min(len(a["datasets"]) for a in agents.values())
    seeds = min((row["normalized"]["n"] for row in report["rows"] if row.get("normalized")),
                default=0)
    cover = (f"{len({r['path'] for r in runs})} runs; each agent on {n_datasets}"
             + (f" of {DATASETS} datasets" if n_datasets < DATASETS else " datasets")
             + f", at least {seeds} of {SEEDS} seeds a dataset")
    if (n_datasets < DATASETS or seeds < SEEDS
            or len({len(a["datasets"]) for a in agents.values()}) > 1):
        cover = "PROVISIONAL (the table is not complete): " + cover
    return out, cover


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the table's folder, with the report.json of "
                                       "`rlmin repro report FOLDER --against transformer`")
    parser.add_argument("--dt", default="transformer", help="DT's label (default transformer)")
    parser.add_argument("--bc", default="bc", help="BC's label (default bc)")
    parser.add_argument("--out", help="also write the verdicts as JSON to this new file")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError) as e:
        print(f"table_goals: no readable {folder / 'report.json'} ({e}): run "
              f"`rlmin repro report {folder} --against {args.dt}` first", file=sys.stderr)
        return 2
    runs = runs_of(folder)  # read once: the fingerprint check and the stability goal
    if error := folder_error(runs, args.out):
        print(f"table_goals: {error}", file=sys.stderr)
        return 2
    try:
        verdicts, cover = goals(runs, report, args.dt, args.bc)
    except KeyError as e:
        print(f"table_goals: {e.args[0]}", file=sys.stderr)
        return 2
    print(f"{cover}; first target, last iterate, EMA weights\n")
    print("| goal | value | verdict |\n|---|---|---|")
    for v in verdicts:
        print(f"| {v['goal']} | {v['value']} | {v['verdict']} |")
    for v in verdicts:
        for line in v.get("collapsed") or ():
            print(f"  collapsed: {line}")
    if args.out:
        Path(args.out).write_text(json.dumps({"cover": cover, "goals": verdicts}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
