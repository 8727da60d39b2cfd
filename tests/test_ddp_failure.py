"""A DDP run whose rank 0 fails (here: in its evaluation) ends on every rank within a bounded time."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch.distributed as dist

FAIL_RANK0 = """\
import os
if os.environ.get("RANK") == "0":
    import rlmin.train
    def fail(*args, **kwargs):
        raise RuntimeError("injected failure in rank 0's evaluation")
    rlmin.train.run_evaluation = fail
"""


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with the gloo backend is not available")
def test_rank0_failure_ends_every_rank_quickly(tmp_path, tiny_hopper_id):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAIL_RANK0)
    config = tmp_path / "tiny.yaml"
    config.write_text(f"data: {{dataset: {tiny_hopper_id}, seq_len: 5}}\n"
                      "agent: {d_model: 8, n_layers: 1}\n"
                      "train: {steps: 6, batch_size: 4, warmup_steps: 1, eval_every: 3,"
                      " num_threads: 1, progress: false, device: cpu}\n"
                      "eval: {episodes: 1, max_episode_steps: 5}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(site), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "rlmin.cli", "train", str(config), f"run_dir={tmp_path / 'run'}"]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    took = time.monotonic() - start
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log
    assert "injected failure" in log, log
    assert took < 90, f"the ranks took {took:.0f} s to end after rank 0 failed:\n{log[-2000:]}"
