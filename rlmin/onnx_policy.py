"""Run an exported ONNX policy (``rlmin export CKPT policy.onnx``) with ONNX Runtime: no torch needed.

This module imports only the standard library, numpy, onnxruntime and ``rlmin.step_protocol``
(which imports nothing), so a deployment can copy these two files and the .onnx next to its code
(``pip install numpy onnxruntime``)::

    from rlmin.onnx_policy import OnnxPolicy      # or rlmin.policy.Policy.load("policy.onnx")
    policy = OnnxPolicy.load("policy.onnx")
    policy.reset(n_envs=1)                        # target return: the policy's first default
    obs, _ = env.reset(seed=0); reward = None
    while True:
        action = policy.act(obs[None], reward)[0]   # the carried state lives inside the policy
        obs, reward, term, trunc, _ = env.step(action)
        if term or trunc: break

The API is the torch ``rlmin.policy.Policy``'s: ``reset(n_envs, target_return)``, then
``act(obs, reward, done)`` per step; ``state`` is a dict of numpy arrays under the torch agent's
state keys, ``eval_spec`` the evaluation spec (env id, target returns, reference scores) as a
read-only namespace. The graph's inputs and outputs: rlmin/onnx_export.py.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort

try:
    from rlmin.step_protocol import PREV_ACTION, RTG, TARGET, T, check_reward, restart
except ImportError:  # a deployment's copy, beside this file outside the rlmin package
    from step_protocol import PREV_ACTION, RTG, TARGET, T, check_reward, restart

FORMAT = "rlmin-onnx-policy-v1"
METADATA_KEY = "rlmin"
_DTYPES = {"float32": np.float32, "int64": np.int64}


class OnnxPolicy:
    """A policy graph of one carry step, its state kept here between ``act`` calls."""

    def __init__(self, session: "ort.InferenceSession", metadata: dict):
        self.session, self.metadata = session, metadata
        spec = dict(metadata["eval_spec"])
        spec["target_returns"] = tuple(float(t) for t in spec["target_returns"])
        self.eval_spec = types.SimpleNamespace(**spec)
        self.obs_dim, self.act_dim = int(metadata["obs_dim"]), int(metadata["act_dim"])
        self.layout = [(s["name"], tuple(s["shape"]), _DTYPES[s["dtype"]]) for s in metadata["state"]]
        self.quantization = metadata.get("quantization")  # None (float32, exact) or "int8"
        self.outputs = list(metadata["outputs"])  # action, then next.<key> for the keys that change
        self.updated = [name.removeprefix("next.") for name in self.outputs[1:]]
        self.state: dict[str, np.ndarray] | None = None
        self._starting: np.ndarray | None = None  # rows whose next act starts an episode

    @classmethod
    def load(cls, path: str | Path, threads: int = 1) -> "OnnxPolicy":
        """Open ``path`` with ONNX Runtime on the CPU. ``threads``: intra-op threads (1: a step is
        a few hundred small ops, which more threads slow down more than they split)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX policy {path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for a damaged or foreign file
            raise ValueError(f"{path} is not a loadable ONNX model ({' '.join(str(e).split())})") from e
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        metadata = json.loads(raw) if raw else {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not an rlmin ONNX policy ({FORMAT}); make one with "
                             "`rlmin export CHECKPOINT policy.onnx`")
        return cls(session, metadata)

    def reset(self, n_envs: int = 1, target_return: float | None = None) -> None:
        """Start ``n_envs`` episodes asking for ``target_return`` (a float or one per env)."""
        if not isinstance(n_envs, (int, np.integer)) or isinstance(n_envs, bool) or n_envs < 1:
            raise ValueError(f"n_envs must be a positive int, got {n_envs!r}")
        target = self.eval_spec.target_returns[0] if target_return is None else target_return
        target = np.asarray(target, dtype=np.float32).reshape(-1)
        if target.shape[0] not in (1, n_envs):
            raise ValueError(f"target_return has {target.shape[0]} entries, expected one per env ({n_envs})")
        # The torch agent's own bound (float32 overflow in its return embedding), saved at export.
        limit = float(self.metadata.get("max_target_return", np.finfo(np.float32).max))
        bad = ~(np.abs(target) <= limit)  # NaN and inf fail too
        if bad.any():
            raise ValueError(f"target return {float(target[bad][0]):g} overflows this policy's "
                             f"float32 maths (it embeds target / return_scale): give a target of "
                             f"at most {limit:.3g} in absolute value")
        self.state = {name: np.zeros((n_envs, *shape), dtype) for name, shape, dtype in self.layout}
        self.state[TARGET][:] = target
        self.state[RTG][:] = target
        # The backbone's initial state (zeros or a learned h0) is in the graph: the first act
        # passes done for every row, and the graph puts it in.
        self._starting = np.ones(n_envs, dtype=bool)
        self._no_rows = np.zeros(n_envs, dtype=bool)  # reused: no allocation per step

    def act(self, obs, reward=None, done=None) -> np.ndarray:
        """Actions [n_envs, act_dim] in [-1, 1] for raw ``obs`` [n_envs, obs_dim]; ``reward`` of the
        previous step (ignored on a row's first step); ``done`` marks rows whose ``obs`` starts a
        new episode (their state is reset first)."""
        if self.state is None:
            raise RuntimeError("call policy.reset(n_envs, target_return) before act()")
        n = self.state[T].shape[0]
        obs = np.asarray(obs, dtype=np.float32)
        if obs.shape != (n, self.obs_dim):
            raise ValueError(f"obs must be [{n}, {self.obs_dim}] (n_envs, obs_dim), got {obs.shape}")
        done = self._starting if done is None else self._starting | _rows(done, n, "done", bool)
        if reward is None:  # only when every row is on its first step (the graph restarts done rows)
            check_reward(reward, restart(np.where, self.state[T], done) == 0)
            reward = np.zeros(n, dtype=np.float32)
        feed = {"obs": obs, "reward": _rows(reward, n, "reward", np.float32), "done": done, **self.state}
        action, *updated = self.session.run(self.outputs, feed)
        # The graph gives the keys it changes; the action is the next step's a_{t-1}.
        self.state = {**self.state, **dict(zip(self.updated, updated)), PREV_ACTION: action}
        self._starting = self._no_rows
        return action


def _rows(x, n: int, name: str, dtype) -> np.ndarray:
    """A per-env vector (a scalar is broadcast) as a contiguous [n] array of ``dtype``."""
    x = np.asarray(x, dtype=dtype)
    if x.ndim == 0:
        return np.full(n, x, dtype=dtype)
    x = x.reshape(-1)
    if x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} entries, expected one per env ({n})")
    return x
