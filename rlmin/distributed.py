"""Data-parallel training with torch.distributed, launched by ``torchrun``.

``setup()`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK). Without it, training is a
single process and every helper here is a no-op. Backend: NCCL on CUDA, gloo on CPU.

Multi-node: on each node run
``torchrun --nnodes=N --node_rank=I --nproc_per_node=G --rdzv_backend=c10d
--rdzv_endpoint=HOST:29500 -m rlmin.cli train CONFIG``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather_object(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks of a list of floats (the list itself in a single process)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def cleanup(self) -> None:
        """Leave the group together: a rank that leaves while another still works (rank 0's final
        evaluation) makes gloo abort."""
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def setup() -> DistContext:
    """Join the torchrun process group when launched by torchrun; else a single process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(True, rank, world, device)
