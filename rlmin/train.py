"""The trainer: config -> dataset -> agent -> AdamW loop -> checkpoints -> evaluation -> results.

One function, ``train(cfg)``, readable top to bottom (after nanoGPT and CORL). It runs as a single
process or as one rank of a ``torchrun`` launch (DDP); only rank 0 logs, evaluates and writes.
An interrupted run continues with ``train(resume=run_dir)`` from its last good checkpoint: the
step count, optimiser, scheduler, sampler and RNG states all continue, and TensorBoard drops any
events written after that checkpoint (``purge_step``), so curves have no duplicates. On CPU a
resumed run ends with the same parameters as an uninterrupted one (tested).

DDP: every rank draws the same global batch and trains on its own shard of rows. An agent's loss
is a mean over the real (mask=True) steps of its batch, and DDP averages gradients over ranks, so
each rank's loss is rescaled by (its shard's share of the global batch's real steps) x (world
size): the averaged gradient is then the gradient of the mean over the whole global batch, as in
a single process, and the logged loss and metrics are the global batch's (shard values weighted
by the same shares and summed over ranks).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from rlmin import config as config_lib
from rlmin import distributed as dist_lib
from rlmin.checkpoint import (capture_rng_state, checkpoint_path, list_checkpoints, load_latest,
                              restore_rng_state, save_checkpoint)
from rlmin.dataset import LoadedDataset, load_dataset_for
from rlmin.evaluate import evaluate
from rlmin.registry import load_agent_class


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
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def agent_options(agent_cfg, seq_len: int) -> dict:
    """The agent's constructor options from the config's ``agent`` section."""
    opts = config_lib.to_dict(agent_cfg)
    name = opts.pop("name")
    if name == "bc":  # BC is an MLP: width d_model, depth n_layers; no sequence options.
        return {"hidden": [opts["d_model"]] * opts["n_layers"], "dropout": opts["dropout"]}
    opts["context_steps"] = seq_len
    return opts


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, biases and embeddings (as nanoGPT / DT)."""
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


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in batch.items()}


def _new_run_dir(cfg) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{stamp}"


def run_evaluation(agent, data: LoadedDataset, cfg, device) -> dict:
    """Evaluate every target return; adds the dataset/backbone bookkeeping results.json needs."""
    targets = list(cfg.eval.target_returns or data.target_returns)
    was_training = agent.training
    agent.eval()
    if cfg.eval.mode is not None and hasattr(agent, "act_mode"):
        previous_mode, agent.act_mode = agent.act_mode, cfg.eval.mode
    res = evaluate(agent, data.env_id, target_returns=targets, episodes=cfg.eval.episodes,
                   n_envs=cfg.eval.n_envs or None, seed=cfg.eval.seed, ref_min=data.ref_min,
                   ref_max=data.ref_max,
                   max_episode_steps=cfg.eval.max_episode_steps or data.max_episode_steps,
                   device=str(device))
    if cfg.eval.mode is not None and hasattr(agent, "act_mode"):
        agent.act_mode = previous_mode
    agent.train(was_training)
    return res


def train(cfg=None, resume: str | Path | None = None) -> TrainResult:
    """Train (or resume) one run; returns its directory, final step and results."""
    ddp = dist_lib.setup()
    payload = None
    if resume is not None:
        run_dir = Path(resume)
        with warnings.catch_warnings():  # said below, once, in one line
            warnings.simplefilter("ignore", RuntimeWarning)
            payload, ckpt_path = load_latest(run_dir)
        cfg = config_lib.from_dict(payload["config"])
        if ddp.is_main:
            skipped = [p.name for p in list_checkpoints(run_dir)
                       if _ckpt_step(p) > payload["step"]]
            if skipped:
                print(f"warning: newer checkpoint(s) {', '.join(skipped)} could not be loaded "
                      f"(truncated or corrupt); falling back to {ckpt_path.name}", flush=True)
            print(f"resuming {run_dir} from {ckpt_path.name} (step {payload['step']})", flush=True)
    else:
        if cfg is None:
            raise ValueError("train() needs a config or resume=RUN_DIR")
        run_dir = _new_run_dir(cfg)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = ddp.device if ddp.enabled else pick_device(cfg.train.device)
    seed_everything(cfg.train.seed + ddp.rank)

    if cfg.train.batch_size % ddp.world_size:
        raise config_lib.ConfigError(
            f"train.batch_size={cfg.train.batch_size} must divide by the {ddp.world_size} "
            "processes (it is the global batch)")
    data = load_dataset_for(cfg.data)
    # Every rank draws the same global batch (one seed) and keeps its own shard of rows: a DDP
    # run sees exactly the batches of a single-process run with the same global batch size.
    sampler = data.sampler(cfg.data, cfg.train.batch_size, seed=cfg.train.seed)
    shard = slice(ddp.rank * cfg.train.batch_size // ddp.world_size,
                  (ddp.rank + 1) * cfg.train.batch_size // ddp.world_size)

    agent_cls = load_agent_class(cfg.agent.name)
    agent = agent_cls.build(data.obs_dim, data.act_dim, data.obs_mean, data.obs_std,
                            **agent_options(cfg.agent, cfg.data.seq_len)).to(device)
    optimizer = build_optimizer(agent, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train.warmup_steps)
    step, history = 0, []
    if payload is not None:
        agent.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        sampler.set_state(payload["sampler"])
        per_rank = payload.get("rng_per_rank") or []
        restore_rng_state(per_rank[ddp.rank] if ddp.rank < len(per_rank) else payload["rng"])
        step, history = payload["step"], list(payload.get("eval_history", []))
    last_saved = step if payload is not None else None

    step_fn = ddp.wrap(LossForward(agent)) if ddp.enabled else agent.loss
    if cfg.train.compile:
        step_fn = torch.compile(step_fn)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and cfg.train.amp else nullcontext())

    writer = None
    if ddp.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_lib.to_yaml(cfg))
        # Scalars of steps <= the checkpoint's were logged before it was saved and are kept;
        # anything a killed run logged after it is dropped (purge_step: steps >= step + 1).
        writer = SummaryWriter(run_dir / "tb", purge_step=step + 1 if step else None)
        print(f"run dir: {run_dir}  (tensorboard --logdir {run_dir / 'tb'})")

    def checkpoint() -> None:
        nonlocal last_saved
        # Every rank's RNG (dropout masks differ per rank), so a resumed DDP run continues exactly.
        rng = ddp.gather_object(capture_rng_state())
        if ddp.is_main:
            writer.flush()  # what was logged up to this step survives a kill (resume keeps it)
            save_checkpoint(run_dir, step, {
                "step": step, "model": agent.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng[0], "rng_per_rank": rng,
                "sampler": sampler.get_state(), "config": config_lib.to_dict(cfg),
                "agent_name": cfg.agent.name, "agent_options": agent.options,
                "obs_mean": torch.as_tensor(data.obs_mean),
                "obs_std": torch.as_tensor(data.obs_std),
                "dataset": data.summary(), "eval_history": history,
            }, keep=cfg.train.keep_checkpoints)
        last_saved = step

    def stop(what: str) -> TrainingError:
        kept = (f"the last good checkpoint, {checkpoint_path(run_dir, last_saved)} (step "
                f"{last_saved}), is kept: load it, or resume with `rlmin train --resume {run_dir}`"
                if last_saved is not None else "no checkpoint had been written yet")
        return TrainingError(
            f"{what} at step {step + 1}; training stopped and this step was not applied. {kept}. "
            "Try a lower train.lr or a smaller train.grad_clip, and check the dataset for "
            "extreme values.")

    bar = tqdm(total=cfg.train.steps, initial=step, disable=not (ddp.is_main and cfg.train.progress),
               dynamic_ncols=True, desc="train")
    agent.train()
    tick, samples_since = time.perf_counter(), 0
    try:
        while step < cfg.train.steps:
            full = sampler.sample()
            batch = to_device({k: v[shard] for k, v in full.items()}, device)
            with autocast:
                loss, metrics = step_fn(batch)
            if ddp.enabled:  # see the module docstring: global-batch normalisation
                share = float(full["mask"][shard].sum()) / max(1, int(full["mask"].sum()))
                totals = ddp.all_reduce_sum([share * float(loss.detach())]
                                            + [share * float(v) for v in metrics.values()])
                loss_value, metrics = totals[0], dict(zip(metrics, totals[1:]))
                loss = loss * (share * ddp.world_size)
            else:
                loss_value = float(loss.detach())
            if not math.isfinite(loss_value):  # the same value on every rank: all stop together
                raise stop(f"non-finite loss ({loss_value})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(nn.utils.clip_grad_norm_(agent.parameters(),
                                                       cfg.train.grad_clip or math.inf))
            if not math.isfinite(grad_norm):  # gradients are synchronised: the same on every rank
                raise stop(f"non-finite gradient norm ({grad_norm}) with loss {loss_value}")
            optimizer.step()
            scheduler.step()
            step += 1
            samples_since += cfg.train.batch_size
            bar.update(1)

            if ddp.is_main and (step % cfg.train.log_every == 0 or step == cfg.train.steps):
                now = time.perf_counter()
                rate = samples_since / max(now - tick, 1e-9)
                tick, samples_since = now, 0
                writer.add_scalar("train/loss", loss_value, step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                writer.add_scalar("train/grad_norm", grad_norm, step)
                writer.add_scalar("train/samples_per_s", rate, step)
                for key, value in metrics.items():
                    if f"train/{key}" not in _TRAIN_TAGS:  # an agent's own "loss" is train/loss
                        writer.add_scalar(f"train/{key}", value, step)
                bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{rate:.0f}")
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 \
                    and step < cfg.train.steps:
                if ddp.is_main:
                    res = run_evaluation(agent, data, cfg, device)
                    log_eval(writer, res, step)
                    history.append({"step": step, "targets": _headline(res)})
                ddp.barrier()
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                checkpoint()
        bar.close()

        results = {}
        if ddp.is_main:
            res = run_evaluation(agent, data, cfg, device)
            log_eval(writer, res, step)
            history.append({"step": step, "targets": _headline(res)})
            results = build_results(cfg, data, step, res, history,
                                    cfg.eval.mode or getattr(agent, "act_mode", None))
            write_results(run_dir / "results.json", results)
    finally:
        bar.close()
        if writer is not None:
            writer.close()  # flushes what was logged, also when training stopped on an error
    ddp.cleanup()
    return TrainResult(run_dir, step, results)


_TRAIN_TAGS = ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s")


def _ckpt_step(path: Path) -> int:
    return int(path.stem.split("_")[-1])


class LossForward(nn.Module):
    """DDP synchronises gradients through ``forward``: here forward(batch) is the agent's loss."""

    def __init__(self, agent: nn.Module):
        super().__init__()
        self.agent = agent

    def forward(self, batch: dict):
        return self.agent.loss(batch)


def _headline(res: dict) -> dict:
    return {str(t): {"return_mean": r["return_mean"], "normalized_mean": r.get("normalized_mean")}
            for t, r in res["targets"].items()}


def log_eval(writer, res: dict, step: int) -> None:
    for target, r in res["targets"].items():
        writer.add_scalar(f"eval/return_mean/target_{target}", r["return_mean"], step)
        if r.get("normalized_mean") is not None:
            writer.add_scalar(f"eval/normalized_mean/target_{target}", r["normalized_mean"], step)
    writer.flush()


def build_results(cfg, data: LoadedDataset, step: int, res: dict, history: list,
                  act_mode: str | None = None) -> dict:
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
        "env_id": data.env_id,
        "agent": cfg.agent.name,
        "backbone": cfg.agent.backbone if cfg.agent.name == "decision" else "mlp",
        "seed": cfg.train.seed,
        "step": step,
        "act_mode": act_mode,
        "last_iterate": res,
        "best_during_training": best,
        "history": history,
        "config": config_lib.to_dict(cfg),
    }


def write_results(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float))
    tmp.replace(path)
