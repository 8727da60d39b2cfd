"""Does int8 cost a policy its score? Export runs as float32 and int8 ONNX files and score each file.

    python scripts/compare_int8.py RUN_DIR [RUN_DIR ...] --root GRID_DIR --out docs/results/int8

For every run: ``rlmin export RUN fp32.onnx``, ``rlmin export RUN int8.onnx --quantize int8``,
then ``rlmin eval`` of each file (the run's first target, ``--episodes`` episodes, seed 10000, as
the trainer's last-iterate evaluation), written to ``OUT/<run relative to --root>/{fp32,int8}.eval.json``.
The table puts the run's own last-iterate score (results.json) beside both, and says whether the
float32 file replayed the checkpoint's episodes (rtol 1e-6).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rlmin.evaluate import evaluate_checkpoint  # noqa: E402
from rlmin.onnx_export import export_onnx  # noqa: E402


def compare(run: Path, out: Path, episodes: int) -> dict:
    results = json.loads((run / "results.json").read_text())
    target = next(iter(results["last_iterate"]["targets"].values()))
    row = {"torch": target["normalized_mean"], "target": target["target_return"]}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, quantize in (("fp32", None), ("int8", "int8")):
            path = export_onnx(run, Path(tmp) / f"{kind}.onnx", quantize=quantize)
            res = evaluate_checkpoint(path, episodes=episodes, target_returns=[target["target_return"]])
            (out / f"{kind}.eval.json").write_text(json.dumps(res, indent=1, default=float))
            row[kind] = next(iter(res["targets"].values()))
    row["replays"] = bool(np.allclose(row["fp32"]["returns"], target["returns"], rtol=1e-6))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--root", type=Path, required=True, help="the grid folder the runs are in")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=10)
    args = p.parse_args()
    lines = ["| run | target | torch (results.json) | ONNX float32 | ONNX int8 | replays |",
             "|---|---:|---:|---:|---:|---|"]
    diffs = []
    for run in args.runs:
        name = run.resolve().relative_to(args.root.resolve())
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        r = compare(run, out, args.episodes)
        f, q = r["fp32"]["normalized_mean"], r["int8"]["normalized_mean"]
        diffs.append(q - f)
        lines.append(f"| {name} | {r['target']:g} | {r['torch']:.1f} | {f:.1f} | {q:.1f} | "
                     f"{'yes' if r['replays'] else 'no'} |")
        print(lines[-1], flush=True)
    d = np.array(diffs)
    lines.append(f"\nint8 - float32: mean {d.mean():+.2f}, min {d.min():+.2f}, max {d.max():+.2f} "
                 f"normalised points over {len(d)} runs")
    print("\n".join(lines))
    (args.out / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
