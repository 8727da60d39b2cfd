"""Burn-in: a segment that starts from the state of the steps before it equals the same steps
predicted as part of the whole sequence, and the sampler's prefixes are those steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.decision import DecisionAgent
from rlmin.data.episodes import EpisodeData
from rlmin.data.sampler import SegmentSampler
from rlmin.nn import build_backbone
from rlmin.spec import DataSpec

OBS, ACT, K = 4, 2, 5


def _episode(rng, length: int) -> dict:
    return {"observations": rng.normal(size=(length + 1, OBS)),
            "actions": rng.uniform(-1, 1, (length, ACT)), "rewards": rng.normal(size=length),
            "terminations": np.r_[np.zeros(length - 1, bool), True],
            "truncations": np.zeros(length, bool)}


@pytest.mark.parametrize("backbone,layout,options", [
    ("mingru", "interleaved", {}), ("minlstm", "stacked", {}), ("gru", "interleaved", {}),
    ("lstm", "stacked", {}), ("mingru", "stacked", {"conv_kernel": 3}),
    ("minlstm", "interleaved", {"conv_kernel": 3, "conv_layout": "official", "learn_h0": True})])
def test_prefix_state_equals_the_whole_sequence(backbone, layout, options):
    torch.manual_seed(0)
    agent = DecisionAgent(DataSpec(OBS, ACT, seq_len=K, max_episode_steps=64),
                          DecisionAgent.Options(backbone=backbone, d_model=16, n_layers=2,
                                                token_layout=layout, dropout=0.0,
                                                backbone_options=options)).double().eval()
    if options.get("learn_h0"):  # a non-zero start state, so a wrong one would show
        for block in agent.backbone.blocks:
            torch.nn.init.normal_(block.h0_param)
    g = torch.Generator().manual_seed(1)
    starts = [7, 0, 3]  # each row's segment starts at its own step: prefixes of 7, 0 and 3 steps
    q, rows, want = max(starts), [], []
    for p in starts:
        total = p + K
        whole = {"observations": torch.randn(1, total, OBS, generator=g, dtype=torch.float64),
                 "actions": torch.rand(1, total, ACT, generator=g, dtype=torch.float64) * 2 - 1,
                 "returns_to_go": torch.rand(1, total, generator=g, dtype=torch.float64) * 100,
                 "timesteps": torch.arange(total)[None]}
        with torch.no_grad():
            want.append(agent.predict(whole)[:, p:])
        junk = {k: torch.full((1, q - p) + v.shape[2:], 9.0, dtype=v.dtype) for k, v in whole.items()}
        rows.append({**{k: v[:, p:] for k, v in whole.items()},
                     **{f"prefix_{k}": torch.cat([v[:, :p], junk[k]], 1) for k, v in whole.items()},
                     "prefix_mask": (torch.arange(q) < p)[None]})  # right padding, filled with junk
    batch = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    with torch.no_grad():
        got = agent.predict(batch)
        without = agent.predict({k: v for k, v in batch.items() if not k.startswith("prefix_")})
    torch.testing.assert_close(got, torch.cat(want), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(without[0], want[0][0], atol=1e-6), "the prefix made no difference"


@pytest.mark.parametrize("backbone", ["mingru", "minlstm", "gru", "lstm"])
def test_backbone_state_at_lengths_is_the_state_of_those_steps(backbone):
    torch.manual_seed(0)
    net = build_backbone(backbone, 8, 2).double()
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    state0 = tuple(s + torch.rand_like(s) for s in net.initial_state(3))  # a carried, non-zero state
    lengths = torch.tensor([6, 0, 2])
    _, got = net(x, state0, lengths=lengths)
    for row, n in enumerate(lengths.tolist()):
        one = tuple(s[row:row + 1] for s in state0)
        want = net(x[row:row + 1, :n], one)[1] if n else one
        for g_, w in zip(got, want):
            torch.testing.assert_close(g_[row:row + 1], w, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="lengths must be"):
        net(x, state0, lengths=torch.tensor([7, 0, 2]))


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
    plain = SegmentSampler(data, K, 16, seed=0, normalize_obs=False)
    lengths_seen = set()
    for _ in range(40):
        b, same = sampler.sample(), plain.sample()
        for key in ("observations", "actions", "timesteps", "mask"):  # burn-in adds, never redraws
            np.testing.assert_array_equal(b[key], same[key])
        q = b["prefix_mask"].sum(1)
        np.testing.assert_array_equal(q, np.minimum(b["timesteps"][:, 0], 6))
        assert b["prefix_timesteps"].shape[1] == q.max()
        lengths_seen.update(q.tolist())
        flat = data.observations
        for row in range(16):
            n = q[row]
            assert b["prefix_mask"][row, :n].all() and not b["prefix_mask"][row, n:].any()
            np.testing.assert_array_equal(b["prefix_timesteps"][row, :n],
                                          np.arange(b["timesteps"][row, 0] - n, b["timesteps"][row, 0]))
            assert not b["prefix_observations"][row, n:].any(), "padding is zeros"
            if n:  # the prefix's last observation is the one right before the segment's, in the data
                seg_first = np.flatnonzero((flat == b["observations"][row, 0]).all(axis=1))
                np.testing.assert_array_equal(b["prefix_observations"][row, n - 1], flat[seg_first[0] - 1])
    assert len(lengths_seen) >= 5, f"rows of a batch should have their own prefix lengths: {lengths_seen}"
