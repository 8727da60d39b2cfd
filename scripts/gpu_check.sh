#!/usr/bin/env bash
# The GPU checks of issue 14, in one go (under 10 minutes on an H100/H200): prints a summary and
# writes JSON into OUT_DIR. See docs/GPU.md.
#
#   bash scripts/gpu_check.sh OUT_DIR
#   GPU_CHECK_REHEARSE=1 bash scripts/gpu_check.sh /tmp/gpucheck   # no GPU: every part on the CPU, tiny
#
# Parts, in this order (most important first, since the time budget may cut the last ones):
#   tests       pytest tests/test_triton.py and every test named *cuda* (float32 and bfloat16, forward
#               and gradient, small to > 2**31-element shapes, strided inputs, ragged tails)
#   smoke       bf16-autocast training of every backbone (rlmin.nn.build_backbone) on CUDA, its values
#               against float32, and a model cast to bf16
#   backbones   scripts/bench_backbones.py --device cuda: minGRU/minLSTM layers (Triton) vs cuDNN
#               nn.GRU/nn.LSTM vs step loops, T in 64,512,4096, peak memory
#   scan        scripts/bench_scan.py: Triton scan GB/s vs a copy of the same bytes, CT=16 vs CT=32,
#               B=64 T=4096 D=1024, float32 and bfloat16
#   train       scripts/bench_train.py --device cuda: K=20 and whole episodes (L=1000)
#   act         scripts/bench_act.py --device cuda --quick (exported torch policies on the GPU; ONNX stays on CPU)
#   quickstart  rlmin quickstart on CUDA, 200 steps, on a small pre-built hopper-medium dataset
# Without CUDA every CUDA part is skipped (the tests still run: their CPU half), and it exits 0.
#
# Files in OUT_DIR (at most 8, flat, so that a device runner can return them all): summary.json,
# gpu_check.log, backbones.json, scan_float32.json, scan_bfloat16.json, train.json, smoke.json.
# The exit status is 1 if a part FAILED, else 0. GPU_CHECK_BUDGET_S (default 540) is the time budget:
# a part gets what is left of it at most, and parts that no longer fit are NOT RUN.
set -uo pipefail

OUT=${1:?usage: bash scripts/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # run dirs, datasets, scratch: not returned
BUDGET=${GPU_CHECK_BUDGET_S:-540}
PY=${PYTHON:-python3}
# rlmin, agents and envs from this checkout, installed or not; unbuffered so the log keeps order.
export PYTHONPATH="$REPO:$WORK/meta${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MPLBACKEND=Agg
STATUS=$WORK/status.tsv  # one line per part: name, status, seconds, note
: >"$STATUS"

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STATUS"; }

skip() {  # skip NAME REASON
  echo "=== $1: NOT RUN ($2)"
  record "$1" "NOT RUN" 0 "$2"
}

part() {  # part NAME CAP_S CMD...: CMD under a timeout of min(CAP_S, budget left); records the outcome
  local name=$1 cap=$2 left start rc dur limit
  shift 2
  left=$((BUDGET - SECONDS))
  limit=$((cap < left ? cap : left))
  if ((limit < 20)); then
    skip "$name" "out of time: ${left}s of the ${BUDGET}s budget left"
    return
  fi
  echo
  echo "=== $name (limit ${limit}s): $*"
  start=$SECONDS
  timeout -k 10 "$limit" "$@"
  rc=$?
  dur=$((SECONDS - start))
  if ((rc == 0)); then
    record "$name" OK "$dur" ""
  elif ((rc == 124 || rc == 137)); then
    record "$name" FAILED "$dur" "timed out after ${limit}s"
  else
    record "$name" FAILED "$dur" "exit status $rc"
  fi
  echo "=== $name: exit $rc after ${dur}s"
}

missing_for() {  # missing_for SCRIPT_MODULE: prints the module a scripts/*.py file imports but cannot find
  "$PY" - "$1" <<'PY' 2>/dev/null
import sys
sys.path.insert(0, "scripts")
try:
    __import__(sys.argv[1])  # top-level imports only: the scripts' work is under __main__
except ModuleNotFoundError as e:
    print(e.name)
except Exception:  # noqa: BLE001 (any other failure shows when the part runs)
    pass
PY
}

bench() {  # bench NAME CAP_S SCRIPT_MODULE ARGS...: part NAME running scripts/SCRIPT_MODULE.py, if it imports
  local name=$1 cap=$2 mod=$3 gone
  shift 3
  gone=$(missing_for "$mod")
  if [[ -n $gone ]]; then
    skip "$name" "scripts/$mod.py needs the missing Python module '$gone' (carry it as a wheel: docs/GPU.md)"
  else
    part "$name" "$cap" "$PY" "scripts/$mod.py" "$@"
  fi
}

main() {
  echo "gpu_check: $(date -u +%FT%TZ), repo $REPO, out $OUT, budget ${BUDGET}s"
  "$PY" - "$WORK/env.json" <<'PY' || echo "environment probe failed"
import json, platform, shutil, subprocess, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "gpu": None, "driver": None, "triton": None,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
try:
    import triton
    info["triton"] = triton.__version__
except Exception as e:  # noqa: BLE001 (reported, not fatal)
    info["triton_error"] = f"{type(e).__name__}: {e}"
if info["cuda_available"]:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                capability=f"{p.major}.{p.minor}")
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
        info["driver"] = q.stdout.strip() or None
missing = []
for mod in ("pytest", "numpy", "omegaconf", "gymnasium", "mujoco", "minari"):
    try:
        __import__(mod)
    except Exception:  # noqa: BLE001
        missing.append(mod)
info["missing_modules"] = missing
import importlib.metadata as md
info["entry_points"] = sorted(e.name for e in md.entry_points(group="rlmin.agents"))
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(" | ".join(f"{k}: {v}" for k, v in info.items()))
PY
  local cuda missing
  cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
  missing=$("$PY" -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))['missing_modules']))" \
    "$WORK/env.json" 2>/dev/null || echo "?")
  DEV=cuda
  if [[ $cuda != 1 ]]; then
    if [[ ${GPU_CHECK_REHEARSE:-0} == 1 ]]; then
      DEV=cpu
      echo "no CUDA device: GPU_CHECK_REHEARSE=1, so every part runs on the CPU at tiny sizes (a rehearsal)"
    else
      DEV=
      echo "no CUDA device: every CUDA part is skipped (GPU_CHECK_REHEARSE=1 rehearses them on the CPU)"
    fi
  fi

  # --- tests: tests/test_triton.py and every test named *cuda* elsewhere; conftest.py needs gymnasium
  local noconf=() others
  if [[ " $missing " == *" gymnasium "* ]]; then noconf=(--noconftest); fi
  others=$(grep -l -E 'def test_[A-Za-z0-9_]*cuda' tests/test_*.py 2>/dev/null | grep -v '^tests/test_triton.py$' |
    tr '\n' ' ')
  # shellcheck disable=SC2086  # $others: a list of paths without spaces
  part tests 200 "$PY" -m pytest -q -rs -p no:cacheprovider "${noconf[@]}" --junitxml="$WORK/pytest.xml" \
    -k "cuda or test_triton" tests/test_triton.py $others

  if [[ -z $DEV ]]; then
    for p in smoke backbones scan_float32 scan_bfloat16 train act quickstart; do skip "$p" "no CUDA device"; done
  else
    local sizes="64,512,4096" scan_shape=(--B 64 --D 1024 --T 4096) train_args=(--seconds 3 --warmup 2)
    if [[ $DEV == cpu ]]; then  # the rehearsal: the same command lines at sizes a shared CPU runs in seconds
      sizes="16,32"
      scan_shape=(--B 2 --D 8 --T 40)
      train_args=(--quick --k 4 --episode-len 16 --k-batch 2 --episode-batch 2)
    fi

    # --- smoke: bf16 autocast training of every backbone, values against float32, a bf16-cast model
    part smoke 120 "$PY" - "$DEV" "$OUT/smoke.json" <<'PY'
import copy, json, sys, time
import torch
from rlmin.nn import build_backbone

dev, out = torch.device(sys.argv[1]), sys.argv[2]
if dev.type == "cpu":
    torch.set_num_threads(1)  # the rehearsal, on a shared CPU
B, T, D = (8, 48, 64) if dev.type == "cuda" else (2, 8, 16)
TOL = 0.05  # relative L2 error allowed against float32: a few bf16 roundings (2**-8) through 2 layers

def rel(y, ref):
    return ((y.float() - ref).norm() / ref.norm().clamp_min(1e-12)).item()

def first_line(e):
    return f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0][:200]

results, ok = {}, True
for name in ("mingru", "minlstm", "transformer", "gru", "lstm"):
    r = {}
    try:
        torch.manual_seed(0)
        model = build_backbone(name, D, 2, dropout=0.0).to(dev)
        head = torch.nn.Linear(D, 1).to(dev)
        x = torch.randn(B, T, D, device=dev)
        target = x[..., :1].cumsum(1) / T  # something sequential to regress
        with torch.no_grad():
            ref = model(x)[0].float()
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                r["autocast_rel_err"] = rel(model(x)[0], ref)
        # A model cast to bf16 (weights too, not autocast): its values, not only that it runs.
        try:
            with torch.no_grad():
                r["cast_rel_err"] = rel(copy.deepcopy(model).to(torch.bfloat16)(x.bfloat16())[0], ref)
        except Exception as e:  # noqa: BLE001 (recorded as this check's failure)
            r["cast_error"] = first_line(e)
        opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-3)
        losses, t0 = [], time.perf_counter()
        for _ in range(20):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = (head(model(x)[0]).float() - target).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
            r.setdefault("grads_finite", True)
            r["grads_finite"] &= finite
            opt.step()
            losses.append(loss.item())
        if dev.type == "cuda":
            torch.cuda.synchronize()
        r.update(first_loss=losses[0], last_loss=losses[-1], ms_per_step=1e3 * (time.perf_counter() - t0) / 20)
        r["checks"] = {"autocast_train": r["grads_finite"] and losses[-1] < losses[0],
                       "autocast_values": r["autocast_rel_err"] < TOL,
                       "cast_bf16_values": r.get("cast_rel_err", float("inf")) < TOL}
    except Exception as e:  # noqa: BLE001
        r["error"] = first_line(e)
        r["checks"] = {"autocast_train": False}
    results[name] = r
    ok &= all(r["checks"].values())
    print(f"  {name:12s} " + " ".join(f"{k}={'ok' if v else 'FAILED'}" for k, v in r["checks"].items())
          + "".join(f" {k}={r[k]:.3g}" for k in ("autocast_rel_err", "cast_rel_err", "first_loss", "last_loss",
                                                   "ms_per_step") if k in r)
          + "".join(f" | {k}: {r[k]}" for k in ("cast_error", "error") if k in r), flush=True)
json.dump({"device": str(dev), "B": B, "T": T, "d_model": D, "n_layers": 2, "tolerance": TOL,
           "results": results, "ok": ok}, open(out, "w"), indent=1)
sys.exit(0 if ok else 1)
PY

    # --- backbones: layers vs cuDNN vs step loops, peak memory
    local rows=mingru_layer,gru,minlstm_layer,lstm,mingru,minlstm,transformer,mingru_steploop,mingru_layer_steploop
    bench backbones 150 bench_backbones --device "$DEV" --sizes "$sizes" --rows "$rows" --reps 5 \
      --warmup 2 --out "$OUT/backbones.json"

    # --- scan: bandwidth against a copy, tile sizes 16 and 32 (rehearsal: interpreted Triton on CPU tensors)
    [[ $DEV == cpu ]] && export TRITON_INTERPRET=1
    bench scan_float32 75 bench_scan --device "$DEV" "${scan_shape[@]}" --impls triton,sequential \
      --ct 16,32 --reps 10 --out "$OUT/scan_float32.json"
    bench scan_bfloat16 60 bench_scan --device "$DEV" "${scan_shape[@]}" --dtype bfloat16 \
      --impls triton,sequential --ct 16,32 --reps 10 --out "$OUT/scan_bfloat16.json"
    unset TRITON_INTERPRET

    # --- train: K=20 and whole episodes, every backbone
    bench train 200 bench_train --device "$DEV" "${train_args[@]}" --case-timeout 120 \
      --out "$OUT/train.json"

    # --- act: exported torch policies acting on the GPU (older bench_act.py without --device: skipped)
    if "$PY" scripts/bench_act.py --help 2>/dev/null | grep -q -- "--device"; then
      bench act 90 bench_act --device "$DEV" --quick --out "$WORK/act.json"
    else
      skip act "scripts/bench_act.py takes no --device (it acts on the CPU)"
    fi

    # --- quickstart end to end: needs gymnasium, mujoco, minari, omegaconf and rlmin's entry points
    local qs_missing=""
    for m in omegaconf gymnasium mujoco minari; do
      [[ " $missing " == *" $m "* ]] && qs_missing+="$m "
    done
    if [[ -n $qs_missing ]]; then
      skip quickstart "missing Python modules: ${qs_missing% } (carry them as wheels: docs/GPU.md)"
    else
      if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(not m.entry_points(group='rlmin.agents'))"; then
        # rlmin not installed: write its metadata (entry points) to $WORK/meta, which is on PYTHONPATH
        "$PY" -c "from setuptools import setup; setup()" -q egg_info --egg-base "$WORK/meta" >/dev/null 2>&1 ||
          mkdir -p "$WORK/meta"
      fi
      export MINARI_DATASETS_PATH=$WORK/minari  # a fresh folder: the check writes no shared dataset
      local qs=(train.steps=200 train.checkpoint_every=200 train.progress=false eval.episodes=4
        eval.max_episode_steps=200 "run_dir=$WORK/quickstart")
      local build_steps=5000  # enough segments for 200 steps of batch 64; a few seconds to collect
      if [[ $DEV == cpu ]]; then qs=(train.steps=4 train.checkpoint_every=4 train.progress=false train.num_threads=1
        eval.episodes=1 eval.max_episode_steps=20 "run_dir=$WORK/quickstart"); build_steps=400; fi
      # Build a small hopper-medium first (quickstart would collect 100k steps); then quickstart uses it.
      part quickstart 150 bash -c '"$0" -m rlmin.cli data build hopper medium --steps "$1" &&
        "$0" -m rlmin.cli quickstart train.device="$2" "${@:3}"' "$PY" "$build_steps" "$DEV" "${qs[@]}"
    fi
  fi

  # --- summary: parts, tests, the issue's targets
  "$PY" - "$WORK" "$OUT" "${DEV:-none}" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None

env = load(work / "env.json") or {}
parts = {}
for line in (work / "status.tsv").read_text().splitlines():
    name, status, secs, note = line.split("\t")
    parts[name] = {"status": status, "seconds": int(secs), "note": note}
tests = None
if (work / "pytest.xml").exists():
    suite = ET.parse(work / "pytest.xml").getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    tests = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    tests["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                       if c.find("failure") is not None or c.find("error") is not None]
    tests["cuda_ran"] = sum(1 for c in suite.iter("testcase") if "cuda" in c.get("name", "")
                            and c.find("skipped") is None)

def part_state(name):  # why a target has no number: its part failed, or never ran
    p = parts.get(name, {"status": "NOT RUN"})
    return "NOT RUN" if p["status"] == "NOT RUN" else ("FAILED" if p["status"] == "FAILED" else None)

targets = []
def target(name, need, got, part, detail=""):
    if got is None:
        state, why = "NOT RUN", part_state(part) or "no number"
        detail = f"{part}: {why}" + (f"; {detail}" if detail else "")
    else:
        state = "MET" if got >= need else "NOT MET"
    targets.append({"target": name, "need": need, "got": got, "state": state, "detail": detail})

bb = load(out / "backbones.json") or {}
bb_t = {(t["slow"], t["T"]): t.get("speedup") for t in bb.get("targets", [])}
target("minGRU layer fwd+bwd vs cuDNN nn.GRU, T=512", 10.0, bb_t.get(("gru", 512)), "backbones")
target("minGRU layer fwd+bwd vs its step loop, T=512", 100.0, bb_t.get(("mingru_layer_steploop", 512)), "backbones")

for dtype in ("float32", "bfloat16"):
    sc = load(out / f"scan_{dtype}.json") or {}
    meta = sc.get("meta", {})
    rows = [r for r in sc.get("results", []) if r["impl"].startswith("triton") and "frac_of_copy" in r
            and r.get("B") == 64 and r.get("D") == 1024 and r["T"] == 4096]
    default = next((r for r in rows if r["impl"] == "triton"), None)
    best = max(rows, key=lambda r: r["frac_of_copy"], default=None)
    detail = ", ".join(f"{r['impl']} (CT {r['tile_sizes']}) {r['frac_of_copy']:.0%} of copy"
                       f" ({r['gbps']:.0f} vs {r['copy_gbps']:.0f} GB/s)" for r in rows)
    if best is not None:
        detail += f"; best: {best['impl']}"
    if dtype == "float32":
        target("Triton scan fwd+bwd >= 50% of copy bandwidth, B=64 T=4096 D=1024, float32 (default CT)", 0.5,
               None if default is None else default["frac_of_copy"], "scan_float32", detail)
    else:
        targets.append({"target": "(report) Triton scan, same shape, bfloat16", "need": None,
                        "got": None if default is None else default["frac_of_copy"],
                        "state": "INFO" if rows else "NOT RUN",
                        "detail": detail or f"scan_bfloat16: {part_state('scan_bfloat16') or 'no number'}"})

tr = load(out / "train.json") or {}
def ratio(mode):
    r = next((r for r in tr.get("rows", []) if r["mode"] == mode and r["backbone"] == "mingru"
              and r.get("status") == "ok"), None)
    return None if r is None else r.get("speed_vs_transformer"), r
got, row = ratio("episode")
if row is not None and row["length"] != 1000:  # the target is about L=1000 (a rehearsal runs shorter)
    target("whole-episode training (L=1000): minGRU steps/s vs transformer", 5.0, None, "train",
           f"measured at L={row['length']} only: {got:.2f}x")
else:
    target("whole-episode training (L=1000): minGRU steps/s vs transformer", 5.0, got, "train",
           "" if row is None else f"L={row['length']} B={row['batch']}")
got, row = ratio("segment")
targets.append({"target": "(report) K=20 training: minGRU steps/s vs transformer", "need": None, "got": got,
                "state": "INFO" if got is not None else "NOT RUN",
                "detail": "" if row is None else f"K={row['length']} B={row['batch']}"})

qs = load(work / "quickstart" / "results.json")
if qs is not None:  # what the quickstart reached: its steps and the normalised score per target return
    per_target = ((qs.get("last_iterate") or {}).get("targets") or {}).items()
    qs = {"step": qs.get("step"), "dataset": (qs.get("dataset") or {}).get("id"),
          "normalized_mean": {t: r.get("normalized_mean") for t, r in per_target}}
summary = {"env": env, "device": sys.argv[3], "parts": parts, "tests": tests, "targets": targets,
           "smoke": load(out / "smoke.json"), "quickstart": qs}
(out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))

print("\n================ gpu_check summary ================")
if sys.argv[3] == "cpu":
    print("REHEARSAL on the CPU at tiny sizes: no number below is a GPU measurement")
print(f"GPU: {env.get('gpu') or 'none (no CUDA device)'} | torch {env.get('torch')} (CUDA {env.get('cuda')}) | "
      f"triton {env.get('triton')} | driver {env.get('driver')} | Python {env.get('python')}")
print(f"\n| part | status | seconds | note |\n|---|---|---:|---|")
for name, p in parts.items():
    print(f"| {name} | {p['status']} | {p['seconds']} | {p['note']} |")
if tests:
    print(f"\ntests: {tests['tests']} collected, {tests['failures'] + tests['errors']} failed, "
          f"{tests['skipped']} skipped, {tests['cuda_ran']} CUDA tests ran"
          + (f"; failed: {', '.join(tests['failed'])}" if tests["failed"] else ""))
print("\n| target | need | got | state | detail |\n|---|---:|---:|---|---|")
for t in targets:
    need = "" if t["need"] is None else (f"{t['need']:.0%}" if t["need"] < 1 else f"{t['need']:g}x")
    got = "" if t["got"] is None else (f"{t['got']:.0%}" if "bandwidth" in t["target"] or "scan" in t["target"]
                                        else f"{t['got']:.2f}x")
    print(f"| {t['target']} | {need} | {got} | {t['state']} | {t['detail']} |")
if qs:
    print(f"\nquickstart: {qs['step']} steps on {qs['dataset']}; normalised score per target: "
          + ", ".join(f"{t}: {v:.1f}" for t, v in qs["normalized_mean"].items() if v is not None))
print(f"\nwrote {out / 'summary.json'}")
sys.exit(1 if any(p["status"] == "FAILED" for p in parts.values()) else 0)
PY
}

main 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$rc"
