"""What the benchmarks share: agents built from the shipped configs as `rlmin train` builds them,
equal-size widths, and a synthetic batch in the sampler's format."""
from __future__ import annotations

import argparse
from pathlib import Path

from rlmin import config as config_lib
from rlmin.spec import DataSpec

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BACKBONES = ("mingru", "minlstm", "transformer", "gru", "lstm")
REFERENCE = ("mingru", 128)  # the backbone and d_model whose parameter count the others match
OBS_DIM, ACT_DIM = 11, 3  # Hopper's


def build_agent(backbone: str, d_model: int, seq_len: int = 20, device: str = "cpu",
                overrides: tuple[str, ...] = ()):
    """(agent, cfg): configs/protocols/dt.yaml + configs/backbones/<backbone>.yaml at ``d_model``."""
    cfg = config_lib.load_config(
        [CONFIGS / "protocols" / "dt.yaml", CONFIGS / "backbones" / f"{backbone}.yaml"],
        [f"agent.d_model={d_model}", f"data.seq_len={seq_len}", *overrides])
    spec = DataSpec(OBS_DIM, ACT_DIM, seq_len=seq_len, max_episode_steps=1000)
    agent = config_lib.agent_class(cfg)(spec, config_lib.agent_options(cfg))
    return agent.to(device), cfg


def param_count(backbone: str, d_model: int, seq_len: int = 20) -> int:
    return sum(p.numel() for p in build_agent(backbone, d_model, seq_len)[0].parameters())


def matched_widths(backbones=BACKBONES, reference=REFERENCE, step: int = 4) -> dict:
    """{backbone: (d_model, params)} with params nearest the reference's (counts grow with d)."""
    target = param_count(*reference)
    out = {}
    for bb in backbones:
        if bb == reference[0]:
            out[bb] = (reference[1], target)
            continue
        lo, hi = 1, 1024 // step  # d = k * step; bisect the smallest k with params >= target
        while lo < hi:
            mid = (lo + hi) // 2
            if param_count(bb, mid * step) >= target:
                hi = mid
            else:
                lo = mid + 1
        cands = [k * step for k in (lo - 1, lo) if k >= 1]
        d = min(cands, key=lambda c: abs(param_count(bb, c) - target))
        out[bb] = (d, param_count(bb, d))
    return out


def synthetic_batch(batch: int, length: int, seed: int = 0) -> dict:
    """A batch in the sampler's format; every step real (mask all True)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(batch, length, OBS_DIM, generator=g),
        "actions": torch.rand(batch, length, ACT_DIM, generator=g) * 2 - 1,
        "rewards": torch.rand(batch, length, generator=g),
        "returns_to_go": torch.rand(batch, length, generator=g) * 3000,
        "timesteps": torch.arange(length).expand(batch, length).clone(),
        "mask": torch.ones(batch, length, dtype=torch.bool),
    }


def parse_backbones(ap: argparse.ArgumentParser, text: str) -> list[str]:
    """The comma-separated --backbones list, checked (argparse error on an unknown name)."""
    backbones = text.split(",")
    bad = [b for b in backbones if b not in BACKBONES]
    if bad:
        ap.error(f"unknown backbones {bad}; choose from {', '.join(BACKBONES)}")
    return backbones
