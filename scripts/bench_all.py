"""Every rlmin benchmark in one command, with one summary table.

    python scripts/bench_all.py --quick                  # a smoke run of all four (minutes on 2 CPU cores)
    python scripts/bench_all.py --out-dir runs/bench     # full runs; JSON per benchmark + all.json
    python scripts/bench_all.py --only train,act --threads 2

Runs, each as its own process (so each sets its own thread count and a failure is a row, not a
crash), and reads the JSON each writes:

* ``scripts/bench_backbones.py``: forward+backward time and memory per backbone over sequence
  lengths (``--quick`` passed on);
* ``scripts/bench_sampler.py``: sampled timesteps/s of the segment sampler (target >= 200k/s;
  ``--quick`` runs it 1 s per case instead of 3);
* ``scripts/bench_train.py``: optimizer steps/s per backbone at equal parameter count, K=20 and
  whole episodes;
* ``scripts/bench_act.py``: acting latency per env step, carry vs window, at t=10 and t=900.

The summary names the machine (CPU model or GPU, torch version) and puts the headline number
of each benchmark, with its ratio, in one table; the full tables are in each benchmark's output
(shown as it runs) and JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rlmin.machine import machine_info, machine_line  # noqa: E402

BENCHES = ("backbones", "sampler", "train", "act")


def command(name: str, args, out: Path) -> list[str]:
    cmd = [sys.executable, str(HERE / f"bench_{name}.py"), "--out", str(out)]
    if name == "sampler":
        if args.quick:
            cmd += ["--seconds", "1"]
        return cmd
    if args.quick:
        cmd.append("--quick")
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if name == "backbones" and args.device:
        cmd += ["--device", args.device]
    if name == "train" and args.device:
        cmd += ["--device", args.device]
    return cmd


def _fmt(x, digits=2, unit="") -> str:
    return "-" if x is None else f"{x:,.{digits}f}{unit}"


def summarize_backbones(doc: dict) -> list[tuple[str, str, str]]:
    rows = []
    ok = [r for r in doc.get("results", []) if r.get("status") == "ok"]
    if not ok:
        return [("fwd+bwd", "no results", "")]
    t_max = max(r["T"] for r in ok)
    at = {r["backbone"]: r for r in ok if r["T"] == t_max}
    for name in ("mingru", "minlstm", "transformer", "gru", "lstm"):
        if name in at:
            mem = at[name].get("peak_mem_mb")
            rows.append((f"fwd+bwd {name}, T={t_max}", f"{at[name]['ms']:.1f} ms",
                         "" if mem is None else f"peak {mem:.0f} MB"))
    for pair, per_t in (doc.get("speedups") or {}).items():
        if per_t:
            t_last = max(per_t, key=lambda k: int(k))
            rows.append((f"speedup {pair}", f"{per_t[t_last]:.2f}x at T={t_last}",
                         "nn time / min time (>1: min faster)"))
    return rows


def summarize_sampler(doc: dict) -> list[tuple[str, str, str]]:
    target = doc.get("target_timesteps_per_s", 200_000)
    return [(f"sampler {c['mode']} L={c['seq_len']} B={c['batch_size']}",
             f"{c['real_timesteps_per_s']:,.0f} steps/s",
             f"target >= {target:,}: {'met' if c['real_timesteps_per_s'] >= target else 'NOT met'}")
            for c in doc.get("cases", [])]


def summarize_train(doc: dict) -> list[tuple[str, str, str]]:
    rows = []
    for r in doc.get("rows", []):
        case = f"train {r['mode']} L={r['length']} B={r['batch']} {r['backbone']} (d={r['d_model']})"
        if r.get("status") != "ok":
            rows.append((case, r.get("status", "?"), ""))
            continue
        ratio = r.get("speed_vs_transformer")
        rows.append((case, f"{r['steps_per_s']:.2f} steps/s ({r['timesteps_per_s']:,.0f} timesteps/s)",
                     f"{ratio:.2f}x transformer; {r['params']:,} params" if ratio else
                     f"{r['params']:,} params"))
    return rows


def summarize_act(doc: dict) -> list[tuple[str, str, str]]:
    rows = []
    for r in doc.get("rows", []):
        if r["backbone"] in ("mingru", "transformer") or r["mode"] == "carry":
            sp = r.get("speedup_vs_transformer_window")
            rows.append((f"act {r['backbone']} {r['mode']} t={r['t']} ({r['n_envs']} envs)",
                         f"{r['ms_per_call']:.2f} ms/step",
                         "" if sp is None else f"{sp:.1f}x transformer window"))
    for t, c in (doc.get("target_check") or {}).items():
        rows.append((f"target: carry minGRU >= {c['target']:g}x transformer window, t={t}",
                     f"{c['speedup']:.1f}x", "met" if c["met"] else "NOT met"))
    return rows


SUMMARIES = {"backbones": summarize_backbones, "sampler": summarize_sampler,
             "train": summarize_train, "act": summarize_act}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke runs of every benchmark")
    ap.add_argument("--only", default=",".join(BENCHES), help=f"subset of {','.join(BENCHES)}")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: each one's, 1)")
    ap.add_argument("--device", default=None, help="cpu or cuda for backbones/train")
    ap.add_argument("--out-dir", default="runs/bench")
    ap.add_argument("--out", default=None, help="combined JSON (default <out-dir>/all.json)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    bad = [n for n in names if n not in BENCHES]
    if bad:
        ap.error(f"unknown benchmarks {bad}; choose from {', '.join(BENCHES)}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    info = machine_info()
    combined = {"machine": info, "quick": args.quick, "benchmarks": {}}
    summary: list[tuple[str, str, str, str]] = []
    for name in names:
        out = out_dir / f"{name}.json"
        if out.exists():
            out.unlink()  # never report a stale file as this run's
        cmd = command(name, args, out)
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd)
        elapsed = time.perf_counter() - start
        entry = {"command": cmd, "exit": code, "seconds": elapsed}
        if code == 0 and out.exists():
            doc = json.loads(out.read_text())
            entry["result"] = doc
            try:
                summary += [(name, *row) for row in SUMMARIES[name](doc)]
            except (KeyError, TypeError, ValueError) as e:  # a benchmark changed its JSON
                summary.append((name, "summary", f"unreadable JSON ({e!r})", str(out)))
        else:
            summary.append((name, "run", f"FAILED (exit {code})", " ".join(cmd)))
        combined["benchmarks"][name] = entry

    print("\n" + "=" * 80)
    print(machine_line(info) + (" | --quick (smoke run: noisy)" if args.quick else ""))
    print("\n| benchmark | case | result | note |\n|---|---|---:|---|")
    for bench, case, result, note in summary:
        print(f"| {bench} | {case} | {result} | {note} |")
    out = Path(args.out) if args.out else out_dir / "all.json"
    out.write_text(json.dumps(combined, indent=1, default=str))
    print(f"\nwrote {out}")
    return 0 if all(e["exit"] == 0 for e in combined["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
