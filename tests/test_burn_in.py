"""Burn-in: a segment that starts from the state of the steps before it equals the same steps
predicted as part of the whole sequence, and the sampler's prefixes are those steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.decision import DecisionAgent
from rlmin.data.episodes import EpisodeData
from rlmin.data.sampler import SegmentSampler
from rlmin.spec import DataSpec

OBS, ACT, K = 4, 2, 5


def _episode(rng, length: int) -> dict:
    return {"observations": rng.normal(size=(length + 1, OBS)),
            "actions": rng.uniform(-1, 1, (length, ACT)), "rewards": rng.normal(size=length),
            "terminations": np.r_[np.zeros(length - 1, bool), True],
            "truncations": np.zeros(length, bool)}


@pytest.mark.parametrize("backbone,layout", [("mingru", "interleaved"), ("minlstm", "stacked"),
                                             ("gru", "interleaved"), ("mingru", "stacked")])
def test_prefix_state_equals_the_whole_sequence(backbone, layout):
    torch.manual_seed(0)
    agent = DecisionAgent(DataSpec(OBS, ACT, seq_len=K, max_episode_steps=64),
                          DecisionAgent.Options(backbone=backbone, d_model=16, n_layers=2,
                                                token_layout=layout, dropout=0.0)).double().eval()
    g = torch.Generator().manual_seed(1)
    p, total = 7, 7 + K
    whole = {"observations": torch.randn(2, total, OBS, generator=g, dtype=torch.float64),
             "actions": torch.rand(2, total, ACT, generator=g, dtype=torch.float64) * 2 - 1,
             "returns_to_go": torch.rand(2, total, generator=g, dtype=torch.float64) * 100,
             "timesteps": torch.arange(total).expand(2, total).clone()}
    segment = {k: v[:, p:] for k, v in whole.items()}
    prefix = {f"prefix_{k}": v[:, :p] for k, v in whole.items()}
    with torch.no_grad():
        want = agent.predict(whole)[:, p:]
        got = agent.predict({**segment, **prefix})
        without = agent.predict(segment)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(without, want, atol=1e-6), "the prefix made no difference"


def test_burn_in_gives_no_gradient_to_the_prefix_and_ignores_a_transformer():
    spec = DataSpec(OBS, ACT, seq_len=K, max_episode_steps=64)
    batch = {"observations": torch.randn(1, K, OBS), "actions": torch.zeros(1, K, ACT),
             "returns_to_go": torch.ones(1, K), "timesteps": torch.arange(3, 3 + K)[None],
             "mask": torch.ones(1, K, dtype=torch.bool),
             "prefix_observations": torch.randn(1, 3, OBS, requires_grad=True),
             "prefix_actions": torch.zeros(1, 3, ACT), "prefix_returns_to_go": torch.ones(1, 3),
             "prefix_timesteps": torch.arange(3)[None]}
    agent = DecisionAgent(spec, DecisionAgent.Options(d_model=8, n_layers=1))
    agent.loss(batch)[0].backward()
    assert batch["prefix_observations"].grad is None
    dt = DecisionAgent(spec, DecisionAgent.Options(backbone="transformer", d_model=8, n_layers=1,
                                                   dropout=0.0)).eval()
    plain = {k: v for k, v in batch.items() if not k.startswith("prefix_")}
    torch.testing.assert_close(dt.predict(batch), dt.predict(plain))


def test_sampler_prefix_is_the_steps_before_each_segment():
    rng = np.random.default_rng(0)
    data = EpisodeData.from_episodes([_episode(rng, n) for n in (3, 40, 12, 25, 9)])
    sampler = SegmentSampler(data, K, 16, seed=0, burn_in=6, normalize_obs=False)
    offsets_seen = set()
    for _ in range(40):
        b = sampler.sample()
        offset = int(b["timesteps"][0, 0])
        assert (b["timesteps"][:, 0] == offset).all(), "rows of a batch share their offset"
        q = b["prefix_timesteps"].shape[1]
        assert q == min(offset, 6)
        offsets_seen.add(offset)
        if q:
            np.testing.assert_array_equal(b["prefix_timesteps"][:, -1], offset - 1)
            # the prefix's last observation is the one right before the segment's, in the data
            flat = data.observations
            for row in range(16):
                seg_first = np.flatnonzero((flat == b["observations"][row, 0]).all(axis=1))
                np.testing.assert_array_equal(b["prefix_observations"][row, -1], flat[seg_first[0] - 1])
    assert len(offsets_seen) > 5, "offsets should vary from batch to batch"
