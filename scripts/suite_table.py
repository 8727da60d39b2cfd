"""The nine-dataset table in one screen: a dataset per row, an agent per column, from a report.json.

    rlmin repro report docs/results/suite          # writes report.json
    python scripts/suite_table.py docs/results/suite/report.json

Each cell: the last-iterate normalised score at the dataset's first target, mean ± std over the
seeds (``n`` seeds, said in the header when every cell has the same), and for agents also
evaluated in another acting mode on the same checkpoints, that mode's mean after a slash
(carry / window). Then the behaviour policy's score, and which agents' means are above it (point
estimates, not a shown lead). Nothing is
computed here that the report did not compute: this only lays its rows out side by side.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlmin import stats


def first_target_rows(report: dict) -> dict[tuple[str, str], dict]:
    """{(dataset, label): row} for each dataset's first target (the report's row order)."""
    first: dict[str, str] = {}
    out = {}
    for row in report["rows"]:
        key = first.setdefault(row["dataset"], row["target_key"])
        if row["target_key"] == key:
            out[(row["dataset"], row["label"])] = row
    return out


def cell(row: dict | None) -> str:
    if row is None or not row.get("normalized"):
        return "–"
    s = row["normalized"]
    text = f"{s['mean']:.1f}" + (f" ± {s['std']:.1f}" if s.get("std") is not None else "")
    for _, other in sorted((row.get("other_modes") or {}).items()):
        text += f" / {other['mean']:.1f}"
    return text


def table(report: dict) -> str:
    rows = first_target_rows(report)
    datasets = list(dict.fromkeys(d for d, _ in rows))
    labels = list(dict.fromkeys(label for _, label in rows))
    seeds = {r["n"] for r in rows.values()}
    modes = sorted({m for r in rows.values() for m in (r.get("other_modes") or {})})
    lines = [f"Normalised, last iterate, first target; mean ± std over "
             f"{seeds.pop() if len(seeds) == 1 else 'the'} seeds"
             + (f"; after a slash: {', '.join(modes)} acting on the same checkpoints" if modes else ""),
             "", "| dataset | target | behaviour | " + " | ".join(labels)
             + " | mean above behaviour (point estimates) |",
             "|---|---:|---:|" + "---:|" * len(labels) + "---|"]
    for d in datasets:
        some = next(r for (dd, _), r in rows.items() if dd == d)
        behaviour = some.get("behaviour_normalized")
        above = [label for label in labels if behaviour is not None
                 and ((rows.get((d, label)) or {}).get("normalized") or {}).get("mean", -1e9) > behaviour]
        lines.append(f"| {d} | {some['target_key']} | "
                     f"{'–' if behaviour is None else f'{behaviour:.1f}'} | "
                     + " | ".join(cell(rows.get((d, label))) for label in labels)
                     + f" | {', '.join(above) or '–'} |")
    lines += ["", "| agent | runs | datasets | IQM | 95% CI | own mode − this mode, per run |",
              "|---|---:|---:|---:|---:|---|"]
    for a in report["agents"]:
        d = a.get("own_minus_this")
        ci = "" if not d or "ci_low" not in d else (  # report.json files before 2026-12-08 have none
            stats.ci_text(d["ci_low"], d["ci_high"], signed=True) + " ")
        paired = "" if not d else (
            f"{d['mean']:+.1f} {ci}(higher in {d['own_higher']}, lower in {d['own_lower']} of {d['n']})")
        lines.append(f"| {a['label']} | {a['n']} | {len(a['datasets'])} | {a['iqm']:.1f} | "
                     f"{stats.ci_text(a['ci_low'], a['ci_high'])} | {paired} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="a report.json written by `rlmin repro report DIR`")
    args = ap.parse_args(argv)
    path = Path(args.report)
    try:
        report = json.loads(path.read_text())
        print(table(report))
    except (OSError, json.JSONDecodeError, KeyError) as e:
        print(f"error: {path} is not a report.json of `rlmin repro report` ({type(e).__name__}: {e})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
