"""The trainer: config -> dataset -> agent -> AdamW loop -> checkpoints -> evaluation -> results.

``train(cfg)`` runs as a single process or as one rank of a ``torchrun`` launch (DDP); only rank 0
logs, evaluates and writes. ``train(resume=run_dir)`` continues from the last good checkpoint:
step, optimiser, scheduler, sampler and RNG states all continue (on CPU a resumed run ends with
the same parameters as an uninterrupted one; tested). Ctrl-C or SIGTERM saves and stops.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shlex
import subprocess
import sys
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
from rlmin.checkpoint import (
    TRAINING_KEYS,
    CheckpointError,
    atomic_write_bytes,
    capture_rng_state,
    list_checkpoints,
    load_latest,
    restore_rng_state,
    save_checkpoint,
)
from rlmin.config import TrainConfig
from rlmin.data.resolve import LoadedDataset, load_dataset_for
from rlmin.errors import TrainingError
from rlmin.evaluate import DEFAULT_MAX_ENVS, EvaluationStopped, check_evaluation, evaluate
from rlmin.interrupts import GracefulStop, StopRequested
from rlmin.nn.dropout import use_fast_dropout
from rlmin.policy import agent_payload
from rlmin.rundir import (
    NO_CHECKPOINT,
    RunDirError,
    RunLock,
    check_new,
    check_writable,
    holds_run,
    nothing_to_resume,
    read_results,
    unloadable,
)
from rlmin.runlog import RunLog
from rlmin.spec import EvalSpec


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


def lr_factor(step: int, cfg) -> float:
    """The multiple of ``cfg.lr`` for optimiser step ``step`` (0-based): linear warmup, then
    ``cfg.lr_schedule`` (constant, or a cosine / linear decay to ``lr_floor`` at ``cfg.steps``)."""
    warmup = max(1, cfg.warmup_steps)
    if step < cfg.warmup_steps or cfg.lr_schedule == "constant":
        return min(1.0, (step + 1) / warmup)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1 - progress
    return cfg.lr_floor + (1 - cfg.lr_floor) * shape


def build_scheduler(optimizer, cfg):
    """``cfg``: the ``train`` section (:func:`lr_factor`); an int is a warmup-then-constant
    schedule (DT's)."""
    if isinstance(cfg, int):
        cfg = TrainConfig(warmup_steps=cfg)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


class WeightAverage:
    """The EMA of an agent's weights (``torch.optim.swa_utils.AveragedModel``), with TF's warmup of
    the decay, ``min(decay, (1 + n) / (10 + n))``, so early evaluations are not held near the
    initial weights. Buffers (the normalisation) are copied, not averaged."""

    def __init__(self, agent: nn.Module, decay: float):
        from torch.optim.swa_utils import AveragedModel

        def ema(averaged, current, n):
            beta = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
            return averaged + (current - averaged) * (1.0 - beta)

        self.source = agent
        self.model = AveragedModel(agent, avg_fn=ema, use_buffers=False)

    @property
    def agent(self) -> nn.Module:
        """The averaged agent (an instance of the trained agent's class), buffers in sync."""
        for mine, theirs in zip(self.model.module.buffers(), self.source.buffers()):
            mine.copy_(theirs)
        return self.model.module.eval()

    def update(self) -> None:
        self.model.update_parameters(self.source)

    def state_dict(self) -> dict:
        return {"n_averaged": self.model.n_averaged.clone()}

    def load(self, weights: dict, state: dict) -> None:
        self.model.module.load_state_dict(weights)
        self.model.n_averaged.copy_(state["n_averaged"])


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


# Keys `--resume RUN key=value` (or an edit of the run's config.yaml) may change: how long and how
# often, and every evaluation key: never the model or the data.
RESUMABLE_KEYS = ("train.steps", "train.eval_every", "train.checkpoint_every", "train.log_every",
                  "train.keep_checkpoints", "train.progress", "train.num_threads",
                  *(f"eval.{f.name}" for f in dataclasses.fields(config_lib.EvalConfig)))



def config_edits(run_dir: Path, saved: dict) -> dict:
    """{key: (checkpoint's value, config.yaml's value)} for every key a hand edit of
    ``run_dir/config.yaml`` changed against the checkpoint's config (none when the file is
    missing: the trainer writes it again)."""
    from omegaconf import OmegaConf

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(config_lib.Config), OmegaConf.load(path))
        edited = OmegaConf.to_container(merged, resolve=True)
    except Exception as e:  # YAML syntax, an unknown key, a wrong type
        raise config_lib.ConfigError(
            f"{path} cannot be read as the run's config ({' '.join(str(e).split())[:300]}): fix "
            f"it, or delete it (the checkpoint holds the run's config and resume writes it "
            f"again)") from None
    was = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(config_lib.Config),
                                                 OmegaConf.create(saved)), resolve=True)
    flat_was, flat_now = config_lib.flat_keys(was), config_lib.flat_keys(edited)
    return {k: (flat_was.get(k), flat_now.get(k)) for k in sorted(set(flat_was) | set(flat_now))
            if flat_was.get(k) != flat_now.get(k)}


def resumed_config(payload: dict, overrides: list[str], run_dir: Path | None = None,
                   say=print) -> config_lib.Config:
    """The checkpoint's config with ``overrides``, and the edits of ``run_dir/config.yaml``:
    taken (and said) when they touch only RESUMABLE_KEYS, refused (naming them) otherwise, so
    an edit is never ignored or written away."""
    bad = [o for o in overrides if o.split("=", 1)[0] not in RESUMABLE_KEYS]
    if bad:
        raise config_lib.ConfigError(f"--resume accepts only {', '.join(RESUMABLE_KEYS)}; "
                                     f"{bad[0]!r} would change the run's model or data")
    saved = payload["config"]
    edits = config_edits(run_dir, saved) if run_dir is not None else {}
    fixed = {k: v for k, v in edits.items() if k not in RESUMABLE_KEYS}
    if fixed:
        shown = "; ".join(f"{k} is {now!r} there, {was!r} in the checkpoint"
                          for k, (was, now) in fixed.items())
        raise config_lib.ConfigError(
            f"{run_dir / 'config.yaml'} was edited after its checkpoint was saved: {shown}. "
            f"Resume cannot change {', '.join(fixed)} (the model or data; resume may change "
            f"only {', '.join(RESUMABLE_KEYS)}): undo the edit, or start a new run from the "
            f"file with `rlmin train {run_dir / 'config.yaml'} run_dir=NEW_DIR`")
    if edits:
        given = {o.split("=", 1)[0] for o in overrides}
        say("note: taking the edits of " + str(run_dir / "config.yaml") + ": " + ", ".join(
            f"{k} {was!r} -> {now!r}" + (" (the command line's value wins)" if k in given else "")
            for k, (was, now) in edits.items()))
        saved = dict(saved)
        for key, (_, now) in edits.items():
            section, name = key.split(".", 1)
            saved[section] = {**saved[section], name: now}
    return config_lib.from_dict(saved, overrides)


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
        if resume is not None and not list_checkpoints(run_dir):  # (a live run: the lock said so)
            raise RunDirError(f"--resume {run_dir}: {nothing_to_resume(run_dir, NO_CHECKPOINT)}")
        payload = load_resume_point(run_dir, ddp) if resume is not None else None
        if payload is not None:
            say = (lambda line: print(line, flush=True)) if ddp.is_main else (lambda line: None)
            cfg = resumed_config(payload, list(overrides), run_dir, say=say)
            check_resumable(run_dir, payload, cfg)
        if ddp.is_main:
            check_writable(run_dir)  # the first save must not fail after the work
        result = _train(cfg, run_dir, payload, ddp, stop)
    ddp.cleanup()
    return result


def load_resume_point(run_dir: Path, ddp) -> dict:
    with warnings.catch_warnings():  # said below, once, in one line
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            payload, ckpt_path = load_latest(run_dir, required=TRAINING_KEYS)
        except CheckpointError as e:  # none loads: a damaged run (exit 1)
            raise CheckpointError(f"--resume {run_dir}: "
                                  f"{nothing_to_resume(run_dir, unloadable(e))}") from None
    if ddp.is_main:
        skipped = [p.name for p in list_checkpoints(run_dir) if _ckpt_step(p) > payload["step"]]
        if skipped:
            print(f"warning: newer checkpoint(s) {', '.join(skipped)} could not be loaded "
                  f"(truncated or corrupt, or not a training checkpoint); falling back to "
                  f"{ckpt_path.name}", flush=True)
        print(f"resuming {run_dir} from {ckpt_path.name} (step {payload['step']})", flush=True)
    return payload


def check_resumable(run_dir: Path, payload: dict, cfg) -> None:
    """A resume that has something to do: the run is not finished (a readable results.json of
    the checkpoint's step, nothing left to train), and train.steps does not go back."""
    step = payload["step"]
    if cfg.train.steps < step:
        raise config_lib.ConfigError(
            f"train.steps={cfg.train.steps} is below the step of the run's checkpoint ({step}): "
            f"a resumed run cannot go back; give train.steps={step} or more")
    results, _ = read_results(run_dir)
    if step >= cfg.train.steps and results is not None and results.get("step") == step:
        raise RunDirError(
            f"the run in {run_dir} is finished (step {step}, results.json): nothing to resume. "
            f"Train it longer with `rlmin train --resume {run_dir} train.steps=N` (N > {step}), "
            f"or evaluate it otherwise with `rlmin eval {run_dir}`")


def _train(cfg, run_dir: Path, payload: dict | None, ddp, stop: GracefulStop) -> TrainResult:
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = ddp.device if ddp.enabled else pick_device(cfg.train.device)
    seed_everything(cfg.train.seed + ddp.rank)
    if not cfg.train.batch_timesteps and cfg.train.batch_size % ddp.world_size:
        raise config_lib.ConfigError(
            f"train.batch_size={cfg.train.batch_size} must divide by the {ddp.world_size} "
            "processes (it is the global batch)")
    data = load_dataset_for(cfg.data)
    if payload is not None:
        check_same_data(data, payload)
    data.eval_spec = eval_targets(data.eval_spec, cfg.eval)
    check_seq_len(cfg, data)
    batch_size = batch_size_for(cfg, data)
    if batch_size % ddp.world_size:
        raise config_lib.ConfigError(
            f"the batch of {batch_size} must divide by the {ddp.world_size} processes (it is "
            "the global batch: train.batch_size, or train.batch_timesteps / episode length)")
    # Every rank draws the same global batch (one seed) and trains on its own shard of rows: a
    # DDP run sees exactly the batches of a single-process run with the same global batch size.
    sampler = data.sampler(cfg.data, batch_size, seed=cfg.train.seed)
    per_rank = batch_size // ddp.world_size
    shard = slice(ddp.rank * per_rank, (ddp.rank + 1) * per_rank)
    agent_cls = config_lib.agent_class(cfg)
    agent = agent_cls(data.agent_spec(cfg.data.seq_len), config_lib.agent_options(cfg)).to(device)
    if cfg.train.fast_dropout:
        use_fast_dropout(agent)
    optimizer = build_optimizer(agent, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    averager = WeightAverage(agent, cfg.train.ema) if cfg.train.ema else None
    step, history, seen = 0, [], 0
    commands = [launch_command()]
    if payload is not None:
        agent.load_state_dict(payload.get("train_model", payload["model"]))
        if averager is not None:
            averager.load(payload["model"], payload["ema"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        sampler.set_state(payload["sampler"])
        rngs = payload["rng_per_rank"]
        restore_rng_state(rngs[ddp.rank] if ddp.rank < len(rngs) else rngs[0])
        step, history = payload["step"], list(payload["eval_history"])
        seen = payload.get("timesteps_seen", 0)
        commands = [*payload.get("commands", []), *commands]
        was_steps = payload["config"]["train"]["steps"]
        if cfg.train.lr_schedule != "constant" and was_steps != cfg.train.steps and ddp.is_main:
            print(f"note: train.lr_schedule={cfg.train.lr_schedule} decays over train.steps: the "
                  f"decay now ends at step {cfg.train.steps}, not {was_steps}", flush=True)
    loss_fn = ddp.wrap(LossForward(agent)) if ddp.enabled else agent.loss
    if cfg.train.compile:
        loss_fn = torch.compile(loss_fn)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and cfg.train.amp else
                torch.autocast("cpu", dtype=torch.bfloat16)
                if device.type == "cpu" and cfg.train.cpu_amp else nullcontext())
    # Before anything is written or trained: what the final evaluation will use (its settings,
    # the data's references and env, the targets through the agent's own reset) and the memory
    # of a training step, so a bad value fails now, not after the work.
    if ddp.is_main:
        check_final_evaluation(agent, data, cfg)
    check_memory(agent, sampler, per_rank, device, autocast, ranks=ddp.world_size,
                 envs=eval_envs(cfg) if ddp.is_main else 0)
    log = RunLog(run_dir, cfg, step) if ddp.is_main else None
    if log:
        log.start(data, agent, device, resumed=payload is not None)
        if batch_size != cfg.train.batch_size:
            log.say(f"batch: {batch_size} episodes (train.batch_timesteps="
                    f"{cfg.train.batch_timesteps} / mean episode length "
                    f"{data.data.episode_lengths.mean():.0f})")

    def acting_agent():
        return averager.agent if averager is not None else agent

    def evaluation():
        """The evaluation at ``step``: (results, raw weights' results, history entry). The stop
        flag (Ctrl-C, SIGTERM) ends it between two env steps: EvaluationStopped."""
        res = run_evaluation(acting_agent(), data, cfg, device, stop=lambda: stop.requested)
        raw = (run_evaluation(agent, data, cfg, device, stop=lambda: stop.requested)
               if averager is not None and cfg.eval.raw_weights else None)
        return res, raw, log.evaluation(step, res, raw)

    def save() -> None:
        # Every rank's RNG (dropout masks differ per rank), so a resumed DDP run continues exactly.
        rngs = ddp.gather_object(capture_rng_state())
        if ddp.is_main:
            log.flush()  # what was logged up to this step survives a kill (resume keeps it)
            weights = {"model": agent.state_dict()}
            if averager is not None:  # "model" is what acts and exports; "train_model" resumes
                weights = {"model": averager.agent.state_dict(), "train_model": agent.state_dict(),
                           "ema": averager.state_dict()}
            save_checkpoint(run_dir, step, {
                "step": step, **weights, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng_per_rank": rngs,
                "sampler": sampler.get_state(), "config": config_lib.to_dict(cfg),
                "agent": agent_payload(cfg.agent.name, agent),
                "eval_spec": data.eval_spec.to_dict(), "dataset": data.summary(),
                "eval_history": history, "timesteps_seen": seen, "commands": commands},
                keep=cfg.train.keep_checkpoints)

    agent.train()
    try:
        while step < cfg.train.steps:
            full = sampler.sample()
            seen += int(full["mask"].sum())
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
            if averager is not None:
                averager.update()
            step += 1
            if log:
                log.step(step, loss_value, metrics, grad_norm, scheduler.get_last_lr()[0])
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
                if ddp.is_main:
                    try:
                        history.append(evaluation()[2])
                    except EvaluationStopped:  # the next step sees the flag, saves and stops
                        log.say(f"evaluation at step {step} stopped by a signal (not recorded)")
                ddp.barrier()
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or stopping:
                save()
            if stopping:
                raise StopRequested(f"stopped at step {step} and saved a checkpoint; continue "
                                    f"with: rlmin train --resume {run_dir}", stop.exit_code)
        results = {}
        if ddp.is_main:  # the last step's checkpoint is saved (above): a stop here keeps it
            try:
                res, raw, entry = evaluation()
            except EvaluationStopped:
                raise StopRequested(
                    f"stopped during the final evaluation; the checkpoint of step {step} is "
                    f"saved. Evaluate it with `rlmin eval {run_dir}`, or finish the run (only "
                    f"the final evaluation, then results.json) with `rlmin train --resume "
                    f"{run_dir}`", stop.exit_code) from None
            history.append(entry)
            results = build_results(cfg, data, step, res, history, raw=raw, agent=agent,
                                    timesteps_seen=seen, commands=commands)
            write_results(run_dir / "results.json", results)
    except (RuntimeError, MemoryError) as e:
        if not out_of_memory(e):
            raise
        said = " ".join(str(e).split())[:160] or type(e).__name__
        if step >= cfg.train.steps:  # the final evaluation: its checkpoint is saved
            raise TrainingError(f"out of memory in the final evaluation ({said}): finish the run "
                                f"with fewer envs, `rlmin train --resume {run_dir} "
                                f"eval.n_envs=N`") from None
        raise TrainingError(f"out of memory at step {step + 1} ({said}): start a new run with a "
                            f"smaller step: lower {MEMORY_KEYS}") from None
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


def run_evaluation(agent, data: LoadedDataset, cfg, device, stop=None) -> dict:
    """Evaluate every target return in the configured acting mode; the agent's mode is restored.
    ``stop``: ends it between env steps when it returns True (``evaluate``'s)."""
    with agent.acting(cfg.eval.mode):
        res = evaluate(agent, data.eval_spec,  # its targets: eval_targets(), set when data loaded
                       episodes=cfg.eval.episodes, n_envs=cfg.eval.n_envs or None,
                       seed=cfg.eval.seed, max_episode_steps=cfg.eval.max_episode_steps or None,
                       device=str(device), progress=cfg.train.progress, stop=stop)
        res["agent"] = agent.describe()
    return res


def check_final_evaluation(agent, data: LoadedDataset, cfg) -> None:
    """The evaluation's own checks (``rlmin.evaluate.check_evaluation``) on the run's eval keys,
    before the first step; a problem is a ConfigError naming the keys."""
    try:
        with agent.acting(cfg.eval.mode):
            check_evaluation(agent, data.eval_spec, episodes=cfg.eval.episodes,
                             n_envs=cfg.eval.n_envs or None, seed=cfg.eval.seed,
                             max_episode_steps=cfg.eval.max_episode_steps or None)
    except ValueError as e:  # EvalUsageError, or an agent's own refusal
        raise config_lib.ConfigError(f"the final evaluation would fail: {e} (the eval.* keys; "
                                     f"checked before the first step)") from None


def check_seq_len(cfg, data: LoadedDataset) -> None:
    """``data.seq_len`` at most the longest episode an agent meets (the data's longest, or the
    task's time limit): longer rows are padding only, and every batch pays for all of it."""
    longest = data.agent_spec(1).max_episode_steps
    if cfg.data.seq_len > longest:
        raise config_lib.ConfigError(
            f"config key 'data.seq_len' is {cfg.data.seq_len}, but no episode of "
            f"{data.eval_spec.dataset_id} (or of its task's time limit) is longer than {longest} "
            f"steps: every row would be padded to {cfg.data.seq_len} steps; give data.seq_len "
            f"<= {longest}")
    if cfg.data.mode == "episode":  # the cap cuts every episode: most data unseen is a slip
        lengths = data.data.episode_lengths
        kept = float(np.minimum(lengths, cfg.data.seq_len).sum() / lengths.sum())
        if kept < 0.5:
            raise config_lib.ConfigError(
                f"config key 'data.seq_len' is {cfg.data.seq_len}: data.mode=episode cuts every "
                f"episode at its first {cfg.data.seq_len} steps, {kept:.0%} of "
                f"{data.eval_spec.dataset_id}'s steps (episodes average {lengths.mean():.0f}); "
                f"give data.seq_len={longest} for whole episodes (a task file's seq_len: 20 is "
                f"the segment length K), or data.mode=segment")


# ============================================================================ memory
#: The keys that size a training step (said when a step would not fit, or did not).
MEMORY_KEYS = ("data.seq_len or train.batch_size (train.batch_timesteps), or the agent's size "
               "(e.g. agent.d_model, agent.n_layers)")
#: Peak memory of a training step (forward, backward, AdamW step) over :func:`step_memory`'s
#: estimate without it. Measured once (2026-12-02, torch 2.13 CPU, one thread, glibc heap kept
#: as rlmin.cpu sets it): in a fresh process per agent, the growth of the peak resident set
#: (VmHWM after /proc/self/clear_refs) over one first training step, against the estimate, at
#: d_model 128, 3 layers: minGRU whole episodes (8 x 1000 steps) 1.27, minLSTM 1.24, stacked
#: minGRU 1.32, nn.GRU 1.63, nn.LSTM 0.85, minGRU segments (2048 x 20) 1.26, the transformer
#: 1.27 (16 x 200) and 1.58 (512 x 20), BC [256, 256] (64 x 1000) 1.48. The largest, rounded up.
MEMORY_FACTOR = 2.0
_PROBE_STEPS = (8, 16)
#: Memory of one evaluation env: a Hopper-v5 in a sync vector env of 200 took 1.07 MB of
#: resident memory each (measured once, 2026-12-02); twice that, for the other MuJoCo tasks.
ENV_BYTES = 2 << 20


def eval_envs(cfg) -> int:
    """The envs an evaluation of ``cfg`` steps at once (``evaluate``'s n_envs rule)."""
    return min(cfg.eval.n_envs or DEFAULT_MAX_ENVS, cfg.eval.episodes)


def step_memory(agent, sampler, rows: int, device, autocast=nullcontext()) -> int:
    """Estimated bytes of one training step on ``rows`` rows of ``sampler.seq_len`` steps.

    Generic, measured: the bytes autograd keeps for the backward (storages of the saved
    tensors, the parameters left out) of the agent's loss on two short probe batches of 8 and 16
    steps, per row and step, fitted as ``a + b * L`` per step (``b``: attention keeps L² per row)
    and extrapolated to the sampler's length, plus the batch itself, times
    :data:`MEMORY_FACTOR`. In the formula's terms: batch × seq_len × (tokens × d_model × layers ×
    what each keeps, measured here) × the factor. The probe changes nothing training sees: it
    runs under ``torch.random.fork_rng``, computes no gradients and restores the sampler's
    state."""
    state = sampler.get_state()
    try:
        full = sampler.sample(2)
    finally:
        sampler.set_state(state)
    length = sampler.seq_len
    fixed = {t.untyped_storage().data_ptr() for t in (*agent.parameters(), *agent.buffers())}
    cuda = [device.index or 0] if device.type == "cuda" else []
    per_step = []
    lengths = sorted({min(n, length) for n in _PROBE_STEPS})
    for n in lengths:
        batch = to_device({k: v[:, :n] for k, v in full.items()}, device)
        kept: dict[int, int] = {}

        def pack(t):  # runs inside this iteration's forward only, so the loop's `kept` is the one
            storage = t.untyped_storage()
            if storage.data_ptr() not in fixed:
                kept[storage.data_ptr()] = storage.nbytes()  # noqa: B023
            return t

        with torch.random.fork_rng(devices=cuda), autocast, \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = agent.loss(batch)
        del loss
        inputs = sum(v.nbytes for v in full.values()) / full["mask"].shape[1]  # per row-step
        per_step.append(sum(kept.values()) / (2 * n) + inputs / 2)
    slope = (max(0.0, (per_step[1] - per_step[0]) / (lengths[1] - lengths[0]))
             if len(lengths) == 2 else 0.0)
    base = max(0.0, per_step[0] - slope * lengths[0])
    return int(rows * length * (base + slope * length) * MEMORY_FACTOR)


def free_memory(device) -> int | None:
    """Bytes this process may still allocate on ``device``: CUDA's free memory; on a CPU the
    kernel's MemAvailable, capped by a cgroup (container) limit. None where neither is known."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            cap = Path(limit).read_text().strip()
            if cap.isdigit() and int(cap) < 1 << 60:
                found.append(int(cap) - int(Path(usage).read_text().strip()))
                break
        except OSError:
            continue
    return min(found) if found else None


def check_memory(agent, sampler, rows: int, device, autocast=nullcontext(), ranks: int = 1,
                 envs: int = 0) -> None:
    """Refuse, before the first step, a run that would not fit in memory: a training step (see
    :func:`step_memory`; on a CPU every process of the run shares the machine's memory) and,
    on the machine's memory, the ``envs`` evaluation envs (:data:`ENV_BYTES` each)."""
    step = step_memory(agent, sampler, rows, device, autocast) * (ranks if device.type == "cpu" else 1)
    free = free_memory(device)
    if free is not None and step > free:
        raise config_lib.ConfigError(
            f"a training step needs about {step / 2**30:.1f} GiB ({rows} rows of "
            f"data.seq_len={sampler.seq_len} steps"
            + (f", {ranks} processes" if ranks > 1 and device.type == "cpu" else "")
            + f"), but {free / 2**30:.1f} GiB are free on {device}: lower {MEMORY_KEYS}")
    host = free_memory(torch.device("cpu"))
    need = envs * ENV_BYTES + (step if device.type == "cpu" else 0)
    if host is not None and envs and need > host:
        raise config_lib.ConfigError(
            f"the evaluation's {envs} envs (eval.n_envs, at most eval.episodes) need about "
            f"{envs * ENV_BYTES / 2**30:.1f} GiB beside the training step, but "
            f"{host / 2**30:.1f} GiB are free: lower eval.n_envs (0: 16 envs)")


def out_of_memory(e: BaseException) -> bool:
    """A failed allocation (torch's CPU or CUDA allocator, or Python's)."""
    text = str(e)
    return isinstance(e, MemoryError) or any(
        s in text for s in ("not enough memory", "DefaultCPUAllocator", "out of memory"))


class LossForward(nn.Module):
    """DDP synchronises gradients through ``forward``: here forward(batch) is the agent's loss."""

    def __init__(self, agent: nn.Module):
        super().__init__()
        self.agent = agent

    def forward(self, batch: dict):
        return self.agent.loss(batch)


def _ckpt_step(path: Path) -> int:
    return int(path.stem.split("_")[-1])


def eval_targets(spec: EvalSpec, cfg) -> EvalSpec:
    """The spec with the run's target returns: ``eval.target_scores`` turned into raw returns
    through the dataset's references, else ``eval.target_returns``, else the task's."""
    if cfg.target_scores is not None:
        if spec.ref_min is None:
            raise config_lib.ConfigError(
                f"config key 'eval.target_scores' needs reference scores, and {spec.dataset_id} "
                "has none: give raw eval.target_returns instead")
        returns = tuple(round(spec.ref_min + s / 100.0 * (spec.ref_max - spec.ref_min), 1)
                        for s in cfg.target_scores)  # 0.1 of a return: short keys, same targets
        return spec.replace(target_returns=returns)
    if cfg.target_returns is not None:
        return spec.replace(target_returns=tuple(float(t) for t in cfg.target_returns))
    return spec


def batch_size_for(cfg, data: LoadedDataset) -> int:
    """``train.batch_size``, or with ``train.batch_timesteps`` the number of whole episodes that
    holds that many real steps on average (episodes are drawn uniformly, cut at data.seq_len)."""
    if not cfg.train.batch_timesteps:
        return cfg.train.batch_size
    mean_len = float(np.minimum(data.data.episode_lengths, cfg.data.seq_len).mean())
    return max(1, round(cfg.train.batch_timesteps / mean_len))


def _headline(res: dict) -> dict:
    return {str(t): {"return_mean": r["return_mean"], "normalized_mean": r.get("normalized_mean")}
            for t, r in res["targets"].items()}


def build_results(cfg, data: LoadedDataset, step: int, res: dict, history: list, *,
                  raw: dict | None = None, agent: nn.Module | None = None,
                  timesteps_seen: int | None = None, commands: list[str] = ()) -> dict:
    """results.json: last-iterate scores are the headline; best-during-training is labelled.
    ``raw``: the raw weights' evaluation when the headline is the weight average's."""
    best = None
    scored = [h for h in history if any(v["normalized_mean"] is not None
                                        for v in h["targets"].values())]
    if scored:
        best_h = max(scored, key=lambda h: max(v["normalized_mean"] for v in h["targets"].values()))
        best = {"step": best_h["step"], "targets": best_h["targets"],
                "note": "best evaluation during training; optimistic, not the headline"}
    commit, dirty = code_commit()
    kind = ("scores" if cfg.eval.target_scores is not None
            else "returns" if cfg.eval.target_returns is not None else "task")
    out = {
        "dataset": data.summary(),
        "eval_spec": data.eval_spec.to_dict(),
        "agent": cfg.agent.name,
        "label": res["agent"]["label"],
        "act_mode": res["agent"]["act_mode"],
        "seed": cfg.train.seed,
        "step": step,
        "weights": "ema" if cfg.train.ema else "raw",
        "last_iterate": res,
        "best_during_training": best,
        "history": history,
        "eval_targets": {"kind": kind, "target_scores": cfg.eval.target_scores and
                         list(cfg.eval.target_scores),
                         "target_returns": list(data.eval_spec.target_returns)},
        "n_params": sum(p.numel() for p in agent.parameters()) if agent is not None else None,
        "batch_size": batch_size_for(cfg, data),
        "timesteps_seen": timesteps_seen,
        "provenance": {"command": commands[0] if commands else None,
                       "commands": list(commands), "commit": commit, "dirty": dirty,
                       "data_fingerprint": data.fingerprint},
        "config": config_lib.to_dict(cfg),
        "code": commit and commit[:7] + ("+dirty" if dirty else ""),  # the older short form
    }
    if raw is not None:
        out["last_iterate_raw"] = raw
    return out


def launch_command() -> str:
    """This process's command line as a user would type it again (``rlmin ...`` for the CLI)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "cli.py" and Path(argv[0]).parent.name == "rlmin":
        argv = ["rlmin", *argv[1:]]
    elif argv and Path(argv[0]).name in ("rlmin", "__main__.py"):
        argv = ["rlmin", *argv[1:]]
    elif argv:
        argv = [Path(sys.executable).name, *argv]
    return f"cd {shlex.quote(os.getcwd())} && {shlex.join(argv)}"


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", *args], cwd=root, text=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_commit() -> tuple[str | None, bool | None]:
    """The full git commit of the code that trained and whether the code (rlmin, agents, envs,
    configs: what trains, not docs) had uncommitted changes; (None, None) outside git."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None, None
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--",
                 "rlmin", "agents", "envs", "configs")
    return commit, bool(dirty) if dirty is not None else None


def write_results(path: Path, results: dict) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(results, indent=2, default=float).encode()))
