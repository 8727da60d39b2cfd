"""What a run tells its user while it trains: TensorBoard, metrics.jsonl, the terminal, train.log.

* TensorBoard scalars under ``run_dir/tb`` (``purge_step`` on resume drops what a killed run
  logged after its checkpoint, so curves have no duplicates).
* ``run_dir/metrics.jsonl``: one JSON row per logged step and per evaluation, readable without
  TensorBoard (rows after the resumed step are dropped on resume, as TensorBoard's).
* The terminal: a tqdm bar (``train.progress``), or, without it, a line per ``log_every`` steps;
  evaluations are printed either way.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from rlmin import config as config_lib

_TRAIN_TAGS = ("loss", "lr", "grad_norm", "samples_per_s")


def _wait_for_a_later_second(tb_dir: Path) -> None:
    """TensorBoard reads event files in name order, and a name starts with its creation second:
    a resumed run's file opened in the same second as the killed run's could sort first, and the
    killed run's steps after the checkpoint would then come back over the purge."""
    seconds = [int(p.name.split(".")[3]) for p in tb_dir.glob("events.out.tfevents.*")
               if p.name.split(".")[3].isdigit()]
    if seconds:
        time.sleep(max(0.0, max(seconds) + 1 - time.time()))


class RunLog:
    def __init__(self, run_dir: Path, cfg, step: int):
        self.cfg, self.every = cfg, cfg.train.log_every
        (run_dir / "config.yaml").write_text(config_lib.to_yaml(cfg))
        _wait_for_a_later_second(run_dir / "tb")
        # Scalars of steps <= the checkpoint's were logged before it was saved and are kept.
        self.writer = SummaryWriter(run_dir / "tb", purge_step=step + 1 if step else None)
        self.metrics_path = run_dir / "metrics.jsonl"
        _drop_rows_after(self.metrics_path, step)
        self.metrics = self.metrics_path.open("a")
        self.bar = tqdm(total=cfg.train.steps, initial=step, disable=not cfg.train.progress,
                        dynamic_ncols=True, desc="train")
        self.tick, self.samples = time.perf_counter(), 0
        self.run_dir = run_dir

    def start(self, data, agent, device, resumed: bool) -> None:
        spec, n_params = data.eval_spec, sum(p.numel() for p in agent.parameters())
        self.say(f"run dir: {self.run_dir}  (tensorboard --logdir {self.run_dir / 'tb'})")
        self.say(f"data: {spec.describe_refs()}; {data.data.num_episodes} episodes, "
                 f"{data.data.num_steps} steps")
        self.say(f"agent: {self.cfg.agent.name} ({agent.label()}), {n_params:,} parameters; "
                 f"device {device}, {torch.get_num_threads()} threads, seed {self.cfg.train.seed}"
                 + ("; resumed" if resumed else ""))

    def say(self, line: str) -> None:
        (self.bar.write if not self.bar.disable else print)(line)

    def step(self, step: int, loss: float, metrics: dict, grad_norm: float, lr: float) -> None:
        self.bar.update(1)
        self.samples += self.cfg.train.batch_size
        if step % self.every and step != self.cfg.train.steps:
            return
        now = time.perf_counter()
        rate = self.samples / max(now - self.tick, 1e-9)
        self.tick, self.samples = now, 0
        row = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "samples_per_s": rate,
               **{k: v for k, v in metrics.items() if k not in _TRAIN_TAGS}}
        for key, value in row.items():
            self.writer.add_scalar(f"train/{key}", value, step)
        self._row({"step": step, "kind": "train", **row})
        if self.bar.disable:
            print(f"step {step}/{self.cfg.train.steps}: loss {loss:.4f}, {rate:.0f} samples/s",
                  flush=True)
        else:
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.0f}")

    def evaluation(self, step: int, res: dict, raw: dict | None = None) -> dict:
        """Log an evaluation everywhere; returns its history entry. ``raw``: the same evaluation
        of the raw weights when the run averages them (train.ema), logged under eval_raw/."""
        entry = {"step": step, "targets": self._scores("eval", step, res)}
        if raw is not None:
            entry["raw_targets"] = self._scores("eval_raw", step, raw)
        self.writer.flush()
        self._row({"kind": "eval", **entry})
        for name, key in (("", "targets"), ("raw weights: ", "raw_targets")):
            if key in entry:
                shown = ", ".join(f"target {k}: return {v['return_mean']:.1f}" + (
                    f" (normalised {v['normalized_mean']:.1f})" if v["normalized_mean"] is not None
                    else "") for k, v in entry[key].items())
                self.say(f"eval at step {step}: {name}{shown}")
        return entry

    def _scores(self, tag: str, step: int, res: dict) -> dict:
        targets = {}
        for key, r in res["targets"].items():
            self.writer.add_scalar(f"{tag}/return_mean/target_{key}", r["return_mean"], step)
            if r.get("normalized_mean") is not None:
                self.writer.add_scalar(f"{tag}/normalized_mean/target_{key}", r["normalized_mean"], step)
            targets[key] = {"return_mean": r["return_mean"], "normalized_mean": r.get("normalized_mean")}
        return targets

    def _row(self, row: dict) -> None:
        self.metrics.write(json.dumps(row, default=float) + "\n")
        self.metrics.flush()

    def flush(self) -> None:
        self.writer.flush()
        self.metrics.flush()

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self.metrics.close()


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows a resumed run's checkpoint had seen (step <= its step)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(r + "\n" for r in rows))
