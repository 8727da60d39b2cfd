"""DDP: ``torchrun --nproc_per_node=2`` on CPU (gloo) trains like one process with the same batch.

Every rank draws the same global batch and trains on its half of the rows. Segments near an
episode's end are right-padded, so the two halves often hold different numbers of real steps;
the trainer weights each rank's masked-mean loss by its share of the global batch's real steps
(see rlmin/train.py), so the gradient DDP averages, and the loss rank 0 logs, are those of the
whole global batch. The per-step losses of the two runs then differ only by float32 rounding
(different summation order: shard sums plus gloo's all-reduce instead of one sum over the batch,
compounded over a few Adam steps): about 1e-7 relative here. The tolerance, 1e-5 relative, leaves
100x room for that, and is far below what an unweighted per-rank mean would give (the loss of a
different objective, 0.1-1% apart on steps whose halves differ, which the test makes sure
there are).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

from rlmin.checkpoint import list_checkpoints, load_checkpoint
from rlmin.data.sampler import SegmentSampler
from rlmin.train import train

STEPS, BATCH, SEQ_LEN, SEED = 12, 8, 10, 5
TINY = (f"train.steps={STEPS}", f"train.batch_size={BATCH}", f"data.seq_len={SEQ_LEN}",
        f"train.seed={SEED}", "train.keep_checkpoints=5", "eval.max_episode_steps=10")
# Lines torchrun/c10d print when the launcher itself cannot start (not a trainer failure).
LAUNCH_FAILURES = ("RendezvousConnectionError", "RendezvousError", "Address already in use",
                   "DistNetworkError", "No module named torch.distributed.run")


def tb_losses(run_dir) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/loss")]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with the gloo backend is not available in this torch")
def test_torchrun_two_ranks_match_one_process(tmp_path, tiny_config, tiny_hopper_data):
    config = tiny_config.yaml(tmp_path / "tiny.yaml", *TINY)

    # The test is only meaningful if some steps give the two ranks unequal real-step counts.
    sampler = SegmentSampler(tiny_hopper_data, SEQ_LEN, BATCH, seed=SEED)
    halves = [(m[: BATCH // 2].sum(), m[BATCH // 2:].sum())
              for m in (sampler.sample()["mask"] for _ in range(STEPS))]
    assert any(a != b for a, b in halves), f"no step with unequal shards: {halves}"

    ddp_run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "rlmin.cli", "train", str(config), f"run_dir={ddp_run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 and any(s in log for s in LAUNCH_FAILURES) \
            and not list_checkpoints(ddp_run):
        pytest.skip(f"torchrun could not start its 2 processes here:\n{log[-2000:]}")
    assert proc.returncode == 0, log

    single_run = tmp_path / "single"
    train(tiny_config(single_run, *TINY))

    got, want = tb_losses(ddp_run), tb_losses(single_run)
    assert [s for s, _ in got] == list(range(1, STEPS + 1)), f"DDP logged steps {got}"
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5, atol=0,
                               err_msg="per-step train/loss of 2 DDP ranks vs 1 process")
    final_ddp = load_checkpoint(ddp_run / "checkpoints" / f"step_{STEPS:08d}.pt")["model"]
    final_one = load_checkpoint(single_run / "checkpoints" / f"step_{STEPS:08d}.pt")["model"]
    for k in final_one:
        torch.testing.assert_close(final_ddp[k], final_one[k], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, k=k: f"final parameter {k}: {m}")

    # Only rank 0 writes: one TensorBoard writer, one "run dir" line, the expected files only.
    assert len(list((ddp_run / "tb").glob("events.out.tfevents.*"))) == 1
    assert proc.stdout.count("run dir:") == 1, proc.stdout
    assert sorted(p.name for p in ddp_run.iterdir()) == \
        ["checkpoints", "config.yaml", "lock", "metrics.jsonl", "results.json", "tb"]
    train_rows = [json.loads(line) for line in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train_rows if r["kind"] == "train"] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in train_rows if r["kind"] == "train"],
                               [v for _, v in got], rtol=1e-6, err_msg="metrics.jsonl vs TensorBoard")
    assert [p.name for p in list_checkpoints(ddp_run)] == \
        ["step_00000005.pt", "step_00000010.pt", "step_00000012.pt"]
    # Each rank's RNG state is in the checkpoint, so a resumed DDP run continues exactly.
    assert len(load_checkpoint(list_checkpoints(ddp_run)[-1])["rng_per_rank"]) == 2
