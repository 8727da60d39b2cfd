"""Batches of trajectory segments from ``EpisodeData``, drawn with numpy fancy indexing.

The batch format (every agent is built against it)::

    observations   [B, L, obs_dim] float32  normalised with the data's obs_mean / obs_std
    actions        [B, L, act_dim] float32
    rewards        [B, L]          float32
    returns_to_go  [B, L]          float32  raw, unscaled (the agent divides by its return scale)
    timesteps      [B, L]          int64    step index within the episode
    mask           [B, L]          bool     True = a real step, False = padding

Padding is on the RIGHT: every row starts with its real steps and ends with padding (mask False,
zeros in every array). Recurrent agents need the real steps first, so their state at a real step
never saw padding.

Modes
  * ``"segment"`` (Decision Transformer): L = K steps. An episode is drawn with probability
    proportional to its length and the start uniformly within it, which is the same as drawing
    the start uniformly over all N steps of the dataset; that is how it is done (one draw). A
    segment running past its episode's end is padded.
  * ``"episode"``: whole episodes from their first step, up to L steps (default 1000; longer
    episodes are cut to their first L steps), right-padded. Episodes are drawn uniformly
    (``weighting="length"`` draws them proportionally to length instead).

Burn-in (``burn_in=N > 0``, segment mode): each batch also holds the up-to-N steps that precede
each row's segment in its episode, right-padded to the batch's longest: ``prefix_observations``
[B, Q, obs_dim], ``prefix_actions``, ``prefix_rewards``, ``prefix_returns_to_go``,
``prefix_timesteps`` and ``prefix_mask`` [B, Q] (True = a real step), with q_b = min(offset_b, N)
real steps in row b and Q = max q_b. A recurrent agent runs each row's q_b steps to start its
segment from the state carry acting would have there. The segments are drawn exactly as without
burn-in (the same draws for the same seed): each row its own start, uniform over the dataset.

No Python loop runs per sample: a batch is one index array [B, L] and one ``np.take`` per field.
"""
from __future__ import annotations

import numpy as np

from rlmin.checks import positive_int
from rlmin.data.episodes import EpisodeData
from rlmin.spec import DEFAULT_SEQ_LEN, SAMPLING_MODES

MODES = SAMPLING_MODES


class SegmentSampler:
    """Draws batches of ``batch_size`` rows of ``seq_len`` steps from ``data``.

    ``seq_len``: K for ``"segment"`` (default 20), the episode cap for ``"episode"`` (default
    1000); must be positive. ``seed``: seeds the sampler's own ``np.random.Generator``.
    ``normalize_obs``: False leaves observations raw (the batch format says normalised).
    """

    def __init__(self, data: EpisodeData, seq_len: int | None = None, batch_size: int = 64,
                 mode: str = "segment", seed: int | None = None, weighting: str | None = None,
                 normalize_obs: bool = True, burn_in: int = 0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        seq_len = DEFAULT_SEQ_LEN[mode] if seq_len is None else seq_len
        positive_int("seq_len", seq_len)
        positive_int("batch_size", batch_size)
        weighting = weighting or ("length" if mode == "segment" else "uniform")
        if weighting not in ("length", "uniform"):
            raise ValueError(f"weighting must be 'length' or 'uniform', got {weighting!r}")
        if mode == "segment" and weighting != "length":
            raise ValueError("segment mode draws episodes proportionally to length (as DT does); "
                             "weighting='uniform' is only for mode='episode'")
        if data.num_steps == 0:
            raise ValueError("cannot sample from an empty dataset")
        if isinstance(burn_in, bool) or not isinstance(burn_in, (int, np.integer)) or burn_in < 0:
            raise ValueError(f"burn_in must be an integer >= 0, got {burn_in!r}")
        if burn_in and mode != "segment":
            raise ValueError("burn_in applies to segment mode (whole episodes start at step 0)")
        self.burn_in = int(burn_in)

        self.data, self.mode, self.weighting = data, mode, weighting
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.rng = np.random.default_rng(seed)
        self._offsets = np.asarray(data.offsets, dtype=np.int64)
        self._starts = self._offsets[:-1]
        self._ends = self._offsets[1:]
        self._arange = np.arange(self.seq_len, dtype=np.int64)
        n = data.num_steps
        self._pad = n  # index of the all-zeros row appended to every field

        def padded(x: np.ndarray, dtype) -> np.ndarray:
            x = np.asarray(x, dtype=dtype)
            out = np.zeros((n + 1,) + x.shape[1:], dtype=dtype)
            out[:n] = x
            return out

        obs = data.normalize_obs(data.observations) if normalize_obs else data.observations
        self._fields = {
            "observations": padded(obs, np.float32),
            "actions": padded(data.actions, np.float32),
            "rewards": padded(data.rewards, np.float32),
            "returns_to_go": padded(data.returns_to_go, np.float32),
            "timesteps": padded(data.timesteps, np.int64),
        }

    @property
    def timesteps_per_batch(self) -> int:
        return self.batch_size * self.seq_len

    def _draw_starts(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Start index and end (exclusive) of the episode, for ``b`` rows."""
        n = self.data.num_steps
        if self.mode == "segment":
            # Uniform over all steps == episode ∝ length, then start uniform inside it.
            start = self.rng.integers(0, n, size=b)
            ep = np.searchsorted(self._offsets, start, side="right") - 1
        elif self.weighting == "length":
            ep = np.searchsorted(self._offsets, self.rng.integers(0, n, size=b), side="right") - 1
            start = self._starts[ep]
        else:
            ep = self.rng.integers(0, self.data.num_episodes, size=b)
            start = self._starts[ep]
        return start, self._ends[ep]

    def sample(self, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """One batch in the format described in the module docstring."""
        b = self.batch_size if batch_size is None else int(batch_size)
        start, end = self._draw_starts(b)
        idx = start[:, None] + self._arange[None, :]          # [B, L]
        mask = idx < end[:, None]                             # right padding: real steps first
        idx = np.where(mask, idx, self._pad)
        batch = {k: np.take(v, idx, axis=0) for k, v in self._fields.items()}
        batch["mask"] = mask
        if self.burn_in:
            q = np.minimum(self._fields["timesteps"][start], self.burn_in)  # steps before, per row
            j = np.arange(q.max(), dtype=np.int64)[None, :]
            prefix_mask = j < q[:, None]                      # right padding, as the segments
            before = np.where(prefix_mask, start[:, None] - q[:, None] + j, self._pad)
            for k, v in self._fields.items():
                batch[f"prefix_{k}"] = np.take(v, before, axis=0)
            batch["prefix_mask"] = prefix_mask
        return batch

    def get_state(self) -> dict:
        """The RNG state (plain ints and strings; checkpoint-safe), for exact resumption."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def __iter__(self):
        while True:
            yield self.sample()
