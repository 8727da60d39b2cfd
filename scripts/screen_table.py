"""The recipe screen of protocol v2, step 2 (docs/RESULTS.md): the rule's table from one grid folder.

    python scripts/screen_table.py docs/results/screen [--out FILE.json]

Each run of ``configs/grids/screen.yaml`` is one backbone (minGRU, minLSTM) with one recipe:
token layout (interleaved, stacked) x sampling (K=20 segments, whole episodes). Per backbone and
recipe, over its runs, at each run's first target (the EMA weights, step 1's protocol): the IQM of
the last evaluation (L) with its stratified-bootstrap CI (strata: datasets), C (runs whose last
evaluation is below half of their best), the IQM of the best and G = best - L, each dataset's
seed mean. The rule, as written before the runs: per backbone, the highest L; a recipe within 2
points of it is tied with it, and ties go to the cheaper recipe (stacked before interleaved,
segments before whole episodes).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from protocol_table import TIE, folder_error, results_in, summarize

from rlmin.stats import ci_text

# cheapest first: stacked has a third of the tokens; segments before whole episodes
RECIPES = ("stacked-segment", "stacked-episode", "interleaved-segment", "interleaved-episode")


def runs_of(folder: Path) -> list[dict]:
    """Per run: dataset, backbone, recipe, seed, its curve's last and best at the first target."""
    out = []
    for path, res, key in results_in(folder):
        cfg = res["config"]
        curve = [h["targets"][key]["normalized_mean"] for h in res["history"] if "targets" in h]
        out.append({"dataset": res["dataset"]["id"], "backbone": cfg["agent"]["backbone"],
                    "recipe": f"{cfg['agent'].get('token_layout', 'interleaved')}-{cfg['data']['mode']}",
                    "seed": res["seed"], "agent": res["label"],
                    "fingerprint": res.get("provenance", {}).get("data_fingerprint"),
                    "last": curve[-1], "best": max(curve), "steps": len(curve),
                    "timesteps_seen": res.get("timesteps_seen"), "path": str(path)})
    return out


def choose(recipes: dict[str, dict]) -> str:
    """The rule: the cheapest recipe whose L is within TIE points of the highest L."""
    top = max(s["L"] for s in recipes.values())
    return next(r for r in RECIPES if r in recipes and recipes[r]["L"] > top - TIE)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--out", help="also write the table as JSON to this new file")
    args = parser.parse_args(argv)
    runs = runs_of(Path(args.folder))
    if not runs:
        print(f"screen_table: no results.json under {args.folder}", file=sys.stderr)
        return 2
    if error := folder_error(runs, args.out):
        print(f"screen_table: {error}", file=sys.stderr)
        return 2
    datasets = sorted({r["dataset"] for r in runs})
    short = {d: d.split("/", 1)[-1].rsplit("-v", 1)[0] for d in datasets}
    print(f"{len(runs)} runs, {len(datasets)} datasets; normalised score at the first target "
          "(EMA weights), IQM with a stratified bootstrap 95% CI over the datasets\n")
    print("| backbone | recipe | runs | IQM last (L) | 95% CI | C | IQM best | G |"
          + "".join(f" {short[d]} (mean) |" for d in datasets) + " timesteps seen (M) |")
    print("|---|---|---:|---:|---|---:|---:|---:|" + "---:|" * len(datasets) + "---|")
    table, chosen = {}, {}
    for backbone in sorted({r["backbone"] for r in runs}):
        recipes = {}
        for recipe in RECIPES:
            mine = [r for r in runs if (r["backbone"], r["recipe"]) == (backbone, recipe)]
            if not mine:
                continue
            s = summarize(mine)
            s["per_dataset"] = {d: [r["last"] for r in mine if r["dataset"] == d] for d in datasets}
            # equal data: a whole-episode batch is sized in timesteps, so say what each run saw
            s["timesteps_seen"] = {d: sorted({r["timesteps_seen"] for r in mine if r["dataset"] == d})
                                   for d in datasets}
            recipes[recipe] = s
            cells = "".join(
                f" {sum(v) / len(v):.1f} ({len(v)}) |" if (v := s["per_dataset"][d]) else " – |"
                for d in datasets)
            seen = " / ".join(f"{sum(v) / len(v) / 1e6:.2f}" if (v := s["timesteps_seen"][d]) else "–"
                              for d in datasets)
            print(f"| {backbone} | {recipe} | {s['n']} | {s['L']:.1f} | {ci_text(*s['L_ci'])} | "
                  f"{s['C']} | {s['B']:.1f} | {s['G']:.1f} |{cells} {seen} |")
        chosen[backbone] = choose(recipes)
        table[backbone] = recipes
    print()
    for backbone, recipe in chosen.items():
        runs_in = {r: s["n"] for r, s in table[backbone].items()}
        print(f"the rule picks for {backbone}: {recipe}  (runs per recipe: {runs_in})")
        for s in table[backbone].values():
            for line in s["collapsed"]:
                print(f"  collapsed: {line}")
    if args.out:
        Path(args.out).write_text(json.dumps({"chosen": chosen, "recipes": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
