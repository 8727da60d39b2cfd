"""Acting latency of exported policies, timed as users run them: `rlmin export`, `Policy.load(...).act`.

    python scripts/bench_act.py                   # the full run: on an idle machine (~10 min)
    python scripts/bench_act.py --quick           # a few hundred steps: checks that it works
    python scripts/bench_act.py --no-compile --out runs/bench/act.json

Two model sizes: ``dt`` (d_model 128, 3 layers: the Decision Transformer's widths) and
``quickstart`` (64, 2: configs/quickstart.yaml). Hopper's shapes (obs 11, act 3), K = 20,
interleaved tokens unless said. For each size, every contestant is a policy exported from a
checkpoint of a freshly built agent (no training: latency does not depend on the weights):

* ``mingru`` / ``minlstm``, carry mode, as ``Policy.load("policy.pt")`` runs them:
  ``step`` (one ``backbone.step`` per token: three per env step, the path before the chunked one,
  here inside the slimmer ``act`` of today),
  ``chunk`` (eager: one ``backbone.forward`` of the step's three tokens, the last block computing
  only what is read), ``traced`` (what ``Policy.load`` acts with: the same step as a TorchScript
  trace, per number of envs),
  ``compiled`` (``agent.compile_acting()``: torch.compile of the step path; compile time reported);
  ``onnx`` (``rlmin export CKPT policy.onnx``, run by ONNX Runtime through ``Policy.load``) and
  ``onnx int8`` (``--quantize int8``: int8 weights, not exact; docs/ACTING.md has its score).
* ``mingru stacked``: one token per step (``chunk`` = its only torch path, and ``onnx``).
* ``gru``: torch's ``nn.GRU`` in carry mode at the width with minGRU's parameter count (``chunk``
  eager, and ``traced`` as ``Policy.load`` runs it).
* ``transformer window``: the Decision Transformer's acting, re-running the K = 20 window
  (60 tokens) every step: the reference of the ``x DT`` column.

At 1 and 16 envs (``--envs``). Each policy is advanced to t = ``--t`` (300) with random
observations and rewards, then the contestants take turns: ``--rounds`` rounds of ``--calls``
timed ``act`` calls each, so a load change hits all alike. One call = one step of every env;
the table gives the median ms per call (and the minimum), the FLOPs of one call (torch's
``FlopCounterMode``; an ONNX row takes its model's eager chunk count), the GFLOP/s achieved, and the
FLOP ratio to the DT window: the speed-up the arithmetic allows at equal efficiency. Torch and ONNX Runtime run with
``--threads`` threads (1). The JSON (``--out``) holds every row, the machine, the load average
before and after, the compile times, and the issue's goals marked met or not.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rlmin.cpu import tune_cpu_allocator  # noqa: E402
from rlmin.machine import machine_info, machine_line  # noqa: E402

OBS_DIM, ACT_DIM, K = 11, 3, 20
MODELS = {"dt": (128, 3), "quickstart": (64, 2)}
GOAL_SPEEDUP, GOAL_ONNX_SPEEDUP, GOAL_ONE_ENV_MS = 25.0, 50.0, 0.3


def build_agent(backbone: str, d_model: int, n_layers: int, layout: str = "interleaved"):
    import numpy as np
    import torch

    from agents.decision import DecisionAgent
    from rlmin.spec import DataSpec

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spec = DataSpec(OBS_DIM, ACT_DIM, rng.normal(size=OBS_DIM), rng.uniform(0.5, 2.0, size=OBS_DIM),
                    seq_len=K, max_episode_steps=1000)
    return DecisionAgent(spec, DecisionAgent.Options(backbone=backbone, d_model=d_model,
                                                     n_layers=n_layers, token_layout=layout))


def params(agent) -> int:
    return sum(p.numel() for p in agent.parameters())


def matched_width(backbone: str, n_layers: int, target: int, step: int = 4) -> int:
    """The d_model (a multiple of ``step``) whose agent's parameter count is nearest ``target``."""
    count = lambda k: params(build_agent(backbone, k * step, n_layers))  # noqa: E731 (grows with d)
    lo, hi = 1, 1024 // step
    while lo < hi:  # the smallest k with count(k) >= target
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if count(mid) >= target else (mid + 1, hi)
    return step * min((k for k in (lo - 1, lo) if k >= 1), key=lambda k: abs(count(k) - target))


def save_checkpoint(agent, path: Path) -> Path:
    """The payload `rlmin train` checkpoints hold (what `rlmin export` reads)."""
    import torch

    from rlmin.policy import agent_payload

    eval_spec = {"env_id": "Hopper-v5", "max_episode_steps": 1000, "target_returns": [3600.0],
                 "ref_min": None, "ref_max": None, "ref_source": "none", "obs_dim": OBS_DIM,
                 "act_dim": ACT_DIM, "dataset_id": "bench", "task": None, "level": None}
    torch.save({"agent": agent_payload("decision", agent), "model": agent.state_dict(),
                "eval_spec": eval_spec, "dataset": None, "step": 0}, path)
    return path


def contestants(model: str, folder: Path, threads: int, compile_: bool,
                device: str = "cpu") -> list[dict]:
    """[{name, make}] for one model size; ``make()`` returns a policy with reset/act."""
    from rlmin.onnx_export import export_onnx
    from rlmin.onnx_policy import OnnxPolicy
    from rlmin.policy import Policy, export_policy

    d, layers = MODELS[model]
    out = []

    def exported(backbone, width, layout="interleaved"):
        ckpt = save_checkpoint(build_agent(backbone, width, layers, layout),
                               folder / f"{model}-{backbone}-{layout}.ckpt")
        pt = export_policy(ckpt, folder / f"{model}-{backbone}-{layout}.pt")
        onnx = int8 = None
        if backbone not in ("transformer", "gru") and device == "cpu":  # the only ONNX contestants
            onnx = export_onnx(ckpt, folder / f"{model}-{backbone}-{layout}.onnx")
            int8 = export_onnx(ckpt, folder / f"{model}-{backbone}-{layout}.int8.onnx", quantize="int8")
        return pt, onnx, int8

    def onnx_policy(path):
        return lambda: OnnxPolicy.load(path, threads=threads)

    def torch_policy(pt, impl=None):  # impl None: as Policy.load acts (carry: "traced")
        def make():
            policy = Policy.load(pt, device=device)
            if impl == "compiled":
                policy.agent.compile_acting()
            elif impl is not None:
                policy.agent.carry_impl = impl
            return policy
        return make

    for backbone in ("mingru", "minlstm"):
        pt, onnx, int8 = exported(backbone, d)
        out += [{"name": f"{backbone} step", "make": torch_policy(pt, "step")},
                {"name": f"{backbone} chunk", "make": torch_policy(pt, "chunk")},
                {"name": f"{backbone} traced", "make": torch_policy(pt)}]
        if compile_:
            out.append({"name": f"{backbone} compiled", "make": torch_policy(pt, "compiled")})
        if device == "cpu":  # the ONNX policy runs on ONNX Runtime's CPU provider
            out += [{"name": f"{backbone} onnx", "make": onnx_policy(onnx), "flops_as": f"{backbone} chunk"},
                    {"name": f"{backbone} onnx int8", "make": onnx_policy(int8), "flops_as": f"{backbone} chunk"}]
    pt, onnx, int8 = exported("mingru", d, "stacked")
    out += [{"name": "mingru stacked chunk", "make": torch_policy(pt, "chunk")},
            {"name": "mingru stacked traced", "make": torch_policy(pt)}]
    if device == "cpu":
        out += [{"name": "mingru stacked onnx", "make": onnx_policy(onnx), "flops_as": "mingru stacked chunk"},
                {"name": "mingru stacked onnx int8", "make": onnx_policy(int8), "flops_as": "mingru stacked chunk"}]
    gru_width = matched_width("gru", layers, params(build_agent("mingru", d, layers)))
    pt, _, _ = exported("gru", gru_width)
    out += [{"name": "gru chunk", "make": torch_policy(pt, "chunk"), "d_model": gru_width},
            {"name": "gru traced", "make": torch_policy(pt), "d_model": gru_width}]
    pt, _, _ = exported("transformer", d)
    out.append({"name": "transformer window", "make": torch_policy(pt)})
    return out


def bench(model: str, n_envs: int, entries: list[dict], t_start: int, rounds: int, calls: int) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(0)
    steps = t_start + rounds * calls + 1
    obs = rng.standard_normal((steps, n_envs, OBS_DIM)).astype(np.float32)
    rewards = rng.random((steps, n_envs)).astype(np.float32)
    live = []
    for entry in entries:
        policy = entry["make"]()
        policy.reset(n_envs, 3600.0)
        start = time.perf_counter()
        policy.act(obs[0])  # the first call compiles, for a compiled policy
        first_call = time.perf_counter() - start
        for t in range(1, t_start):  # advance the episode to t_start
            policy.act(obs[t], rewards[t - 1])
        live.append({"entry": entry, "policy": policy, "t": t_start, "times": [], "first_call_s": first_call,
                     "gflop": gflop_per_call(policy, obs[t_start], rewards[t_start - 1])})
    by_name = {c["entry"]["name"]: c for c in live}
    for c in live:  # an ONNX graph runs the matmuls of its model's eager chunk step
        same = c["entry"].get("flops_as")
        if c["gflop"] is None and same in by_name:
            c["gflop"] = by_name[same]["gflop"]
    for _ in range(rounds):  # take turns: a change of machine load hits every contestant alike
        for c in live:
            for _ in range(calls):
                t = c["t"]
                start = time.perf_counter()
                c["policy"].act(obs[t], rewards[t - 1])
                c["times"].append(time.perf_counter() - start)
                c["t"] = t + 1
    rows = []
    for c in live:
        times = c["times"]
        rows.append({"model": model, "d_model": c["entry"].get("d_model", MODELS[model][0]),
                     "n_layers": MODELS[model][1], "n_envs": n_envs, "contestant": c["entry"]["name"],
                     "t_start": t_start, "calls": len(times),
                     "ms_per_step": 1e3 * statistics.median(times), "ms_per_step_min": 1e3 * min(times),
                     "ms_per_step_mean": 1e3 * statistics.mean(times), "first_call_s": c["first_call_s"],
                     "gflop_per_step": c["gflop"],
                     "gflops": None if c["gflop"] is None else c["gflop"] / statistics.median(times)})
    ref = next(r for r in rows if r["contestant"] == "transformer window")
    for r in rows:
        r["x_dt_window"] = ref["ms_per_step"] / r["ms_per_step"]
        # the speedup if both ran their matmuls at the same FLOP rate: what arithmetic allows
        r["flop_ratio_dt"] = None if r["gflop_per_step"] is None else ref["gflop_per_step"] / r["gflop_per_step"]
    return rows


def gflop_per_call(policy, obs, reward) -> float | None:
    """GFLOP of one act call (matmuls, convs, attention: torch's FlopCounterMode), counted on the
    eager chunk step for a traced or compiled policy (a trace hides its ops; the arithmetic is the
    same). None for an ONNX policy (its row takes its model's chunk count: ``flops_as``)."""
    from torch.utils.flop_counter import FlopCounterMode

    agent = getattr(policy, "agent", None)
    if agent is None:
        return None
    impl = getattr(agent, "carry_impl", None)
    if impl in ("traced", "compiled"):
        agent.carry_impl = "chunk"
    try:
        with FlopCounterMode(display=False) as counter:
            agent.act(obs, reward, policy.state)  # the input state is left alone
    finally:
        if impl is not None:
            agent.carry_impl = impl
    return counter.get_total_flops() / 1e9


def goals(rows: list[dict]) -> list[dict]:
    def row(model, n, name):
        return next((r for r in rows if (r["model"], r["n_envs"], r["contestant"]) == (model, n, name)), None)

    out = []
    for bb in ("mingru", "minlstm"):
        r = row("dt", 16, f"{bb} traced")  # Policy.load's path
        if r:
            out.append({"goal": f"exported {bb} (Policy.load: traced), DT widths, 16 envs: >= {GOAL_SPEEDUP:g}x "
                        "the DT window per step", "value": r["x_dt_window"], "target": GOAL_SPEEDUP,
                        "met": r["x_dt_window"] >= GOAL_SPEEDUP, "flop_ratio": r["flop_ratio_dt"]})
            for gru_name in ("gru traced", "gru chunk"):  # nn.GRU as Policy.load runs it, and eager
                gru = row("dt", 16, gru_name)
                if gru:
                    out.append({"goal": f"exported {bb} (traced), DT widths, 16 envs: no slower than the "
                                f"nn.GRU agent ({gru_name})", "value": r["ms_per_step"],
                                "target": gru["ms_per_step"], "met": r["ms_per_step"] <= gru["ms_per_step"]})
        for name in (f"{bb} onnx", f"{bb} onnx int8"):
            r = row("dt", 16, name)
            if r:
                out.append({"goal": f"{name} policy, DT widths, 16 envs: >= {GOAL_ONNX_SPEEDUP:g}x the DT window",
                            "value": r["x_dt_window"], "target": GOAL_ONNX_SPEEDUP,
                            "met": r["x_dt_window"] >= GOAL_ONNX_SPEEDUP, "flop_ratio": r["flop_ratio_dt"]})
    for name in ("mingru traced", "mingru compiled", "mingru onnx", "mingru onnx int8"):
        r = row("quickstart", 1, name)
        if r:
            out.append({"goal": f"quickstart model, 1 env, {name}: <= {GOAL_ONE_ENV_MS:g} ms per step",
                        "value": r["ms_per_step"], "target": GOAL_ONE_ENV_MS,
                        "met": r["ms_per_step"] <= GOAL_ONE_ENV_MS})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", default="1,16", help="comma-separated numbers of envs")
    ap.add_argument("--models", default="dt,quickstart")
    ap.add_argument("--t", type=int, default=300, help="episode step at which timing starts")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=20, help="timed calls per contestant per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="where the torch policies act (cpu or cuda); "
                                                    "ONNX contestants run on CPU only")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile contestants")
    ap.add_argument("--quick", action="store_true", help="t=30, 2 rounds of 10 calls: checks it works")
    ap.add_argument("--out", default="runs/bench/act.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.t, args.rounds, args.calls = 30, 2, 10
    models = args.models.split(",")
    bad = sorted(set(models) - set(MODELS))
    if bad:
        ap.error(f"unknown models {bad}; choose from {', '.join(MODELS)}")
    envs = [int(n) for n in args.envs.split(",")]

    import onnxruntime
    import torch

    tune_cpu_allocator()  # as `rlmin eval` does (rlmin/cpu.py)
    torch.set_num_threads(args.threads)
    info = machine_info()
    load_before = os.getloadavg()
    print(machine_line(info))
    print(f"threads {args.threads} | onnxruntime {onnxruntime.__version__} | load average "
          f"{load_before[0]:.2f} | t from {args.t}, {args.rounds} rounds x {args.calls} calls, median ms per step")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            entries = contestants(model, Path(tmp), args.threads, not args.no_compile, args.device)
            for n in envs:
                for r in bench(model, n, entries, args.t, args.rounds, args.calls):
                    rows.append(r)
                    print(f"  {model:10s} {n:2d} envs  {r['contestant']:22s} {r['ms_per_step']:8.3f} ms "
                          f"(min {r['ms_per_step_min']:.3f})  {r['x_dt_window']:6.1f}x DT", flush=True)
    load_after = os.getloadavg()

    print("\n| model | envs | policy | ms/step | min | x DT window | MFLOP/step | GFLOP/s | FLOP ratio to DT |"
          "\n|---|---:|---|---:|---:|---:|---:|---:|---:|")
    num = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        mflop = None if r["gflop_per_step"] is None else 1e3 * r["gflop_per_step"]
        print(f"| {r['model']} ({r['d_model']}x{r['n_layers']}) | {r['n_envs']} | {r['contestant']} | "
              f"{r['ms_per_step']:.3f} | {r['ms_per_step_min']:.3f} | {r['x_dt_window']:.1f}x | "
              f"{num(mflop, '.1f')} | {num(r['gflops'], '.1f')} | {num(r['flop_ratio_dt'], '.1f')} |")
    compile_s = {f"{r['model']} {r['n_envs']} envs {r['contestant']}": r["first_call_s"]
                 for r in rows if r["contestant"].endswith("compiled")}
    if compile_s:
        print("\ntorch.compile (first act call): " + ", ".join(f"{k} {v:.1f} s" for k, v in compile_s.items()))
    checks = goals(rows)
    print()
    for g in checks:
        bound = f"; FLOP ratio {g['flop_ratio']:.1f}x" if g.get("flop_ratio") else ""
        verdict = "MET    " if g["met"] else "NOT MET"
        print(f"{verdict}  {g['goal']}: {g['value']:.3g} (target {g['target']:.3g}{bound})")
    if max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} CPUs: "
              "other jobs share this machine, so the numbers are only indicative")

    result = {"benchmark": "act", "command": [sys.executable, *sys.argv], "machine": info,
              "onnxruntime": onnxruntime.__version__, "threads": args.threads, "quick": args.quick,
              "t_start": args.t, "rounds": args.rounds, "calls": args.calls,
              "load_average_before": load_before, "load_average_after": load_after,
              "models": {m: {"d_model": d, "n_layers": n} for m, (d, n) in MODELS.items() if m in models},
              "rows": rows, "compile_seconds": compile_s,
              "goals": [{**g, "status": "MET" if g["met"] else "NOT MET"} for g in checks]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
