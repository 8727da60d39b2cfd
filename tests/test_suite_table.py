"""scripts/suite_table.py lays out the committed v2 table's report: each cell must be the first
target's seed mean ± std of that dataset's runs, with the window mean after the slash (computed
here from the runs' own files, not from the report)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

TABLE = Path(__file__).resolve().parents[1] / "docs" / "results" / "table"


def _first_target(doc: dict) -> float:
    targets = doc["targets"] if "targets" in doc else doc["last_iterate"]["targets"]
    return next(iter(targets.values()))["normalized_mean"]


def test_a_cell_is_the_first_targets_seed_mean_with_window_after_the_slash(load_script):
    suite = load_script("suite_table")
    out = suite.table(json.loads((TABLE / "report.json").read_text()))
    runs = sorted((TABLE / "hopper-medium" / "mingru").glob("seed*"))
    carry = [_first_target(json.loads((r / "results.json").read_text())) for r in runs]
    window = [_first_target(json.loads(
        (r / "eval" / "latest.window.seed10000.ep10.eval.json").read_text())) for r in runs]
    expected = (f"{statistics.mean(carry):.1f} ± {statistics.stdev(carry):.1f} / "
                f"{statistics.mean(window):.1f}")
    (row,) = [ln for ln in out.splitlines() if ln.startswith("| rlmin/hopper/medium-v0 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [ln for ln in out.splitlines() if ln.startswith("| dataset |")][0]
    names = [c.strip() for c in header.strip("|").split("|")]
    assert cells[names.index("mingru stacked")] == expected, (row, expected)
    behaviour = float(cells[names.index("behaviour")])
    above = cells[-1].split(", ")
    assert ("mingru stacked" in above) == (statistics.mean(carry) > behaviour), row
    assert "window acting (same checkpoints) | 27 | 9 |" in out and "(higher in" in out
