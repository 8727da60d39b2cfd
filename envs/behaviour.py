"""Behaviour policies that collect D4RL-style datasets, usable without stable-baselines3.

A policy is the actor of a SAC agent (an MLP giving a tanh-squashed Gaussian), exported as a
plain state dict plus a metadata dict, so it loads with ``torch.load(weights_only=True)``.

Where policies are looked up: ``envs/policies`` (shipped with the project), or the folder named by
``RLMIN_POLICIES_DIR``. It holds ``<task>-<level>.pt`` (medium, expert) and, for medium-replay,
``<task>-replay/`` (a few SAC snapshots and their ``manifest.json``, see
``envs.builder.make_replay_series``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.torch_version import TorchVersion

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SB3's clamp, kept so exported actors act identically


class GaussianActor(nn.Module):
    """SB3 SAC actor layout: latent MLP (ReLU) -> mean and log-std heads -> tanh."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        layers, last = [], obs_dim
        for width in hidden:
            layers += [nn.Linear(last, width), nn.ReLU()]
            last = width
        self.latent_pi = nn.Sequential(*layers)
        self.mu = nn.Linear(last, act_dim)
        self.log_std = nn.Linear(last, act_dim)
        self.hidden = tuple(hidden)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False,
            generator: torch.Generator | None = None) -> np.ndarray:
        """Actions in [-1, 1] for a batch (or one) observation; stochastic unless told otherwise."""
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        latent = self.latent_pi(x)
        mean = self.mu(latent)
        if deterministic:
            return torch.tanh(mean).numpy()
        std = self.log_std(latent).clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        noise = torch.randn(mean.shape, generator=generator)
        return torch.tanh(mean + std * noise).numpy()


def save_actor(actor: GaussianActor, path: str | Path, metadata: dict) -> None:
    """Write the actor and a metadata dict of plain values (how it was trained, its return)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": actor.state_dict(),
        "obs_dim": actor.latent_pi[0].in_features,
        "act_dim": actor.mu.out_features,
        "hidden": list(actor.hidden),
        # plain JSON values only (torch.__version__ is a TorchVersion, not a str), so the file
        # loads with weights_only=True
        "metadata": json.loads(json.dumps(metadata, default=str)),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _allow(cls):
    """``torch.serialization.safe_globals`` (torch >= 2.5), or the global allowlist (2.4)."""
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals([cls])
    torch.serialization.add_safe_globals([cls])
    return contextlib.nullcontext()


def load_actor(path: str | Path) -> tuple[GaussianActor, dict]:
    """Load an exported actor; returns (actor, metadata)."""
    # weights_only: nothing in the file can run code. TorchVersion (a str subclass) is allowed
    # because actors saved by older envs/sac.py hold torch.__version__ in their metadata.
    with _allow(TorchVersion):
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    actor = GaussianActor(payload["obs_dim"], payload["act_dim"], tuple(payload["hidden"]))
    actor.load_state_dict(payload["state_dict"])
    actor.eval()
    return actor, payload["metadata"]


#: Environment variable naming another policies folder (e.g. actors you trained yourself).
POLICIES_DIR_ENV = "RLMIN_POLICIES_DIR"
SHIPPED_POLICIES_DIR = Path(__file__).parent / "policies"


def policies_dir() -> Path:
    """``RLMIN_POLICIES_DIR`` if set, else the shipped ``envs/policies``."""
    return Path(os.environ.get(POLICIES_DIR_ENV) or SHIPPED_POLICIES_DIR)


def weights_digest(actor: GaussianActor) -> str:
    """sha256 of an actor's weights alone: equal for the same actor saved with other metadata."""
    h = hashlib.sha256()
    for name, tensor in sorted(actor.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def shipped_policy_path(env_name: str, level: str) -> Path:
    """The behaviour policy of a task and level: ``<policies_dir()>/<task>-<level>.pt``."""
    return policies_dir() / f"{env_name}-{level}.pt"


def replay_series_path(env_name: str) -> Path:
    """Folder of a task's medium-replay snapshot series (``<policies_dir()>/<task>-replay``)."""
    return policies_dir() / f"{env_name}-replay"
