"""The trainer: config -> dataset -> agent -> AdamW loop -> checkpoints -> evaluation -> results.

``train(cfg)`` runs as a single process or as one rank of a ``torchrun`` launch (DDP); only rank 0
logs, evaluates and writes. ``train(resume=run_dir)`` continues from the last good checkpoint:
step, optimiser, scheduler, sampler and RNG states all continue (on CPU a resumed run ends with
the same parameters as an uninterrupted one; tested). Ctrl-C or SIGTERM saves and stops.
"""
from __future__ import annotations

import json
import math
import random
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlmin import config as config_lib
from rlmin import distributed as dist_lib
from rlmin.checkpoint import (atomic_write_bytes, capture_rng_state, list_checkpoints,
                              load_latest, restore_rng_state, save_checkpoint)
from rlmin.data.resolve import LoadedDataset, load_dataset_for
from rlmin.evaluate import evaluate
from rlmin.interrupts import GracefulStop, StopRequested
from rlmin.policy import agent_payload
from rlmin.rundir import RunDirError, RunLock, check_new, holds_run
from rlmin.runlog import RunLog


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says what was kept."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    results: dict


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise config_lib.ConfigError(f"config key 'train.device' is {name!r}; use auto, cpu, "
                                     f"cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise config_lib.ConfigError("train.device=cuda, but this torch has no CUDA device; use "
                                     "train.device=cpu (or auto)")
    if device.type not in ("cpu", "cuda"):
        raise config_lib.ConfigError(f"train.device={name!r} is not supported; use auto, cpu or cuda")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW. ``weight_decay_scope``: "all" decays every parameter (DT's gym code); "matrices"
    spares norms, biases and embeddings (nanoGPT)."""
    if cfg.weight_decay_scope == "all":
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.LayerNorm, nn.RMSNorm)):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


def build_scheduler(optimizer, warmup_steps: int):
    """Linear warmup to the base lr, then constant (DT's schedule)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))


def optimizer_step(agent: nn.Module, loss: torch.Tensor, optimizer, scheduler,
                   grad_clip: float) -> float | None:
    """Backward, clip, AdamW and schedule steps; returns the gradient norm, or None (and no
    step) when it is not finite. The benchmarks time this same function."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(nn.utils.clip_grad_norm_(agent.parameters(), grad_clip or math.inf))
    if not math.isfinite(grad_norm):
        return None
    optimizer.step()
    scheduler.step()
    return grad_norm


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in batch.items()}


def new_run_dir(cfg) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    return Path("runs") / f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


# Keys `--resume RUN key=value` may change: how long and how often, never the model or the data.
RESUMABLE_KEYS = ("train.steps", "train.eval_every", "train.checkpoint_every", "train.log_every",
                  "train.keep_checkpoints", "train.progress", "train.num_threads", "eval.episodes",
                  "eval.n_envs")


def resumed_config(payload: dict, overrides: list[str]) -> config_lib.Config:
    bad = [o for o in overrides if o.split("=", 1)[0] not in RESUMABLE_KEYS]
    if bad:
        raise config_lib.ConfigError(f"--resume accepts only {', '.join(RESUMABLE_KEYS)}; "
                                     f"{bad[0]!r} would change the run's model or data")
    return config_lib.from_dict(payload["config"], overrides)


def check_same_data(data: LoadedDataset, payload: dict) -> None:
    """Resume trains on the data the run started with, or not at all."""
    was, now = payload["dataset"], data.summary()
    if (was["id"], was["fingerprint"]) != (now["id"], now["fingerprint"]):
        raise TrainingError(
            f"the run trained on {was['id']} (fingerprint {was['fingerprint']}), but its dataset "
            f"now resolves to {now['id']} (fingerprint {now['fingerprint']}): resuming would mix "
            f"two datasets. Restore the original dataset, or start a new run")


def train(cfg=None, resume: str | Path | None = None, overrides: list[str] = ()) -> TrainResult:
    """Train (or resume) one run; returns its directory, final step and results."""
    ddp = dist_lib.setup()
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise RunDirError(f"--resume {run_dir}: no such run dir")
    else:
        run_dir = new_run_dir(cfg)
        if ddp.is_main:
            check_new(run_dir)
    with RunLock(run_dir) if ddp.is_main else nullcontext(), GracefulStop() as stop:
        if resume is None and ddp.is_main and holds_run(run_dir):  # lost a race for the dir
            check_new(run_dir)
        payload = load_resume_point(run_dir, ddp) if resume is not None else None
        if payload is not None:
            cfg = resumed_config(payload, list(overrides))
        result = _train(cfg, run_dir, payload, ddp, stop)
    ddp.cleanup()
    return result


def load_resume_point(run_dir: Path, ddp) -> dict:
    with warnings.catch_warnings():  # said below, once, in one line
        warnings.simplefilter("ignore", RuntimeWarning)
        payload, ckpt_path = load_latest(run_dir)
    if ddp.is_main:
        skipped = [p.name for p in list_checkpoints(run_dir) if _ckpt_step(p) > payload["step"]]
        if skipped:
            print(f"warning: newer checkpoint(s) {', '.join(skipped)} could not be loaded "
                  f"(truncated or corrupt); falling back to {ckpt_path.name}", flush=True)
        print(f"resuming {run_dir} from {ckpt_path.name} (step {payload['step']})", flush=True)
    return payload


def _train(cfg, run_dir: Path, payload: dict | None, ddp, stop: GracefulStop) -> TrainResult:
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = ddp.device if ddp.enabled else pick_device(cfg.train.device)
    seed_everything(cfg.train.seed + ddp.rank)
    if cfg.train.batch_size % ddp.world_size:
        raise config_lib.ConfigError(
            f"train.batch_size={cfg.train.batch_size} must divide by the {ddp.world_size} "
            "processes (it is the global batch)")
    data = load_dataset_for(cfg.data)
    if payload is not None:
        check_same_data(data, payload)
    # Every rank draws the same global batch (one seed) and trains on its own shard of rows: a
    # DDP run sees exactly the batches of a single-process run with the same global batch size.
    sampler = data.sampler(cfg.data, cfg.train.batch_size, seed=cfg.train.seed)
    per_rank = cfg.train.batch_size // ddp.world_size
    shard = slice(ddp.rank * per_rank, (ddp.rank + 1) * per_rank)
    agent_cls = config_lib.agent_class(cfg)
    agent = agent_cls(data.agent_spec(cfg.data.seq_len), config_lib.agent_options(cfg)).to(device)
    optimizer = build_optimizer(agent, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train.warmup_steps)
    step, history = 0, []
    if payload is not None:
        agent.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        sampler.set_state(payload["sampler"])
        rngs = payload["rng_per_rank"]
        restore_rng_state(rngs[ddp.rank] if ddp.rank < len(rngs) else rngs[0])
        step, history = payload["step"], list(payload["eval_history"])
    loss_fn = ddp.wrap(LossForward(agent)) if ddp.enabled else agent.loss
    if cfg.train.compile:
        loss_fn = torch.compile(loss_fn)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and cfg.train.amp else nullcontext())
    log = RunLog(run_dir, cfg, step) if ddp.is_main else None
    if log:
        log.start(data, agent, device, resumed=payload is not None)

    def save() -> None:
        # Every rank's RNG (dropout masks differ per rank), so a resumed DDP run continues exactly.
        rngs = ddp.gather_object(capture_rng_state())
        if ddp.is_main:
            log.flush()  # what was logged up to this step survives a kill (resume keeps it)
            save_checkpoint(run_dir, step, {
                "step": step, "model": agent.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng_per_rank": rngs,
                "sampler": sampler.get_state(), "config": config_lib.to_dict(cfg),
                "agent": agent_payload(cfg.agent.name, agent),
                "eval_spec": data.eval_spec.to_dict(), "dataset": data.summary(),
                "eval_history": history}, keep=cfg.train.keep_checkpoints)

    agent.train()
    try:
        while step < cfg.train.steps:
            full = sampler.sample()
            batch = to_device({k: v[shard] for k, v in full.items()}, device)
            with autocast:
                loss, metrics = loss_fn(batch)
            if ddp.enabled:  # rescaled so the averaged gradient is the global batch's (docs/DDP.md)
                share = float(full["mask"][shard].sum()) / max(1, int(full["mask"].sum()))
                # The stop flag rides along, so every rank stops (and saves) at the same step.
                totals = ddp.all_reduce_sum([float(stop.requested), share * float(loss.detach())]
                                            + [share * float(v) for v in metrics.values()])
                stopping = totals[0] > 0  # decided once for all ranks, whatever arrives later
                loss_value, metrics = totals[1], dict(zip(metrics, totals[2:]))
                loss = loss * (share * ddp.world_size)
            else:
                stopping, loss_value = stop.requested, float(loss.detach())
            if not math.isfinite(loss_value):  # the same value on every rank: all stop together
                raise nonfinite(f"non-finite loss ({loss_value})", step, run_dir)
            grad_norm = optimizer_step(agent, loss, optimizer, scheduler, cfg.train.grad_clip)
            if grad_norm is None:  # gradients are synchronised: the same on every rank
                raise nonfinite(f"non-finite gradient norm with loss {loss_value}", step, run_dir)
            step += 1
            if log:
                log.step(step, loss_value, metrics, grad_norm, scheduler.get_last_lr()[0])
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
                if ddp.is_main:
                    history.append(log.evaluation(step, run_evaluation(agent, data, cfg, device)))
                ddp.barrier()
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or stopping:
                save()
            if stopping:
                raise StopRequested(f"stopped at step {step} and saved a checkpoint; continue "
                                    f"with: rlmin train --resume {run_dir}", stop.exit_code)
        results = {}
        if ddp.is_main:
            res = run_evaluation(agent, data, cfg, device)
            history.append(log.evaluation(step, res))
            results = build_results(cfg, data, step, res, history)
            write_results(run_dir / "results.json", results)
    finally:
        if log:
            log.close()  # flushes what was logged, also when training stopped on an error
    return TrainResult(run_dir, step, results)


def nonfinite(what: str, step: int, run_dir: Path) -> TrainingError:
    kept = [p for p in list_checkpoints(run_dir)]
    saved = (f"the last good checkpoint, {kept[-1]}, is kept: resume with `rlmin train --resume "
             f"{run_dir}`" if kept else "no checkpoint had been written yet")
    return TrainingError(f"{what} at step {step + 1}; training stopped and this step was not "
                         f"applied. {saved}. Try a lower train.lr or a smaller train.grad_clip, "
                         f"and check the dataset for extreme values.")


def run_evaluation(agent, data: LoadedDataset, cfg, device) -> dict:
    """Evaluate every target return in the configured acting mode; the agent's mode is restored."""
    with agent.acting(cfg.eval.mode):
        res = evaluate(agent, data.eval_spec, target_returns=cfg.eval.target_returns,
                       episodes=cfg.eval.episodes, n_envs=cfg.eval.n_envs or None,
                       seed=cfg.eval.seed, max_episode_steps=cfg.eval.max_episode_steps or None,
                       device=str(device), progress=cfg.train.progress)
        res["agent"] = agent.describe()
    return res


class LossForward(nn.Module):
    """DDP synchronises gradients through ``forward``: here forward(batch) is the agent's loss."""

    def __init__(self, agent: nn.Module):
        super().__init__()
        self.agent = agent

    def forward(self, batch: dict):
        return self.agent.loss(batch)


def _ckpt_step(path: Path) -> int:
    return int(path.stem.split("_")[-1])


def _headline(res: dict) -> dict:
    return {str(t): {"return_mean": r["return_mean"], "normalized_mean": r.get("normalized_mean")}
            for t, r in res["targets"].items()}


def build_results(cfg, data: LoadedDataset, step: int, res: dict, history: list) -> dict:
    """results.json: last-iterate scores are the headline; best-during-training is labelled."""
    best = None
    scored = [h for h in history if any(v["normalized_mean"] is not None
                                        for v in h["targets"].values())]
    if scored:
        best_h = max(scored, key=lambda h: max(v["normalized_mean"] for v in h["targets"].values()))
        best = {"step": best_h["step"], "targets": best_h["targets"],
                "note": "best evaluation during training; optimistic, not the headline"}
    return {
        "dataset": data.summary(),
        "eval_spec": data.eval_spec.to_dict(),
        "agent": cfg.agent.name,
        "label": res["agent"]["label"],
        "act_mode": res["agent"]["act_mode"],
        "seed": cfg.train.seed,
        "step": step,
        "last_iterate": res,
        "best_during_training": best,
        "history": history,
        "config": config_lib.to_dict(cfg),
        "code": code_version(),
    }


def code_version() -> str | None:
    """The git commit of the code that trained (``+dirty`` with uncommitted changes), if known."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "rlmin", "agents", "envs", "configs"],  # what trains, not docs
                               cwd=root, text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def write_results(path: Path, results: dict) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(results, indent=2, default=float).encode()))
