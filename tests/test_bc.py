"""The BC agent's ``context`` option: the last K states (DT's MLPBCModel), trained only on exact windows.

What would catch a wrong model: acting over an episode equals the loss path's prediction for the
same window (hand-made batches and the real sampler's); zeros before the episode's start; windows
that cross a mid-episode segment start left out of the loss; ``done`` resetting a row's buffer;
context 1 unchanged from the state-only MLP it was (outputs recorded before the option existed);
the agent contract. Tiny and float64: seconds on a CPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import rlmin.testing
from agents.bc import BCAgent
from rlmin.data.episodes import EpisodeData
from rlmin.data.sampler import SegmentSampler
from rlmin.spec import DataSpec
from rlmin.testing import check_agent

OBS, ACT, K, SEQ = 3, 2, 5, 8
TOL = dict(rtol=1e-10, atol=1e-12)
_rng = np.random.default_rng(7)
# float32-representable, as the agent's buffers are float32 before .double()
MEAN = _rng.normal(size=OBS).astype(np.float32).astype(np.float64)
STD = _rng.uniform(0.5, 2.0, size=OBS).astype(np.float32).astype(np.float64)


def make(context=K, seq_len=SEQ, hidden=(16, 16), dropout=0.0, mean=MEAN, std=STD) -> BCAgent:
    torch.manual_seed(0)
    spec = DataSpec(OBS, ACT, mean, std, seq_len=seq_len)
    return BCAgent(spec, BCAgent.Options(hidden=list(hidden), dropout=dropout, context=context)).double()


def episode(length, seed=0):
    """Raw observations [length, OBS] and actions of one episode."""
    rng = np.random.default_rng(seed)
    return MEAN + STD * rng.normal(size=(length, OBS)), rng.uniform(-1, 1, size=(length, ACT))


def act_through(agent, obs_seq):
    """Actions [T, ACT] of one env acting through the raw observations ``obs_seq`` [T, OBS]."""
    state, reward, out = agent.reset(1), None, []
    for obs in obs_seq:
        action, state = agent.act(obs[None], reward, state)
        out.append(action[0])
        reward = np.zeros(1)
    return np.stack(out)


def segment(obs_seq, actions, start, length=SEQ):
    """A sampler-format row (normalised obs, right padding) for steps [start, start+length)."""
    total = len(obs_seq)
    real = np.arange(start, start + length) < total
    idx = np.where(real, np.arange(start, start + length), 0)
    return {"observations": np.where(real[:, None], (obs_seq[idx] - MEAN) / STD, 0.0),
            "actions": np.where(real[:, None], actions[idx], 0.0),
            "timesteps": np.where(real, idx, 0), "mask": real,
            "rewards": np.zeros(length), "returns_to_go": np.zeros(length)}


def stack(*rows):
    return {k: torch.as_tensor(np.stack([r[k] for r in rows])) for k in rows[0]}


def by_hand(agent, obs_seq, t):
    """The MLP's input at episode step t built as DT's MLPBCModel does: the normalised states of
    steps t-K+1..t concatenated oldest first, zero blocks before the episode's start."""
    k = agent.context
    blocks = [np.zeros(OBS) if i < 0 else (obs_seq[i] - MEAN) / STD for i in range(t - k + 1, t + 1)]
    return torch.as_tensor(np.concatenate(blocks))


# ---------------------------------------------------------------------------- (1) acting == training
def test_acting_equals_the_loss_paths_prediction_for_the_same_window():
    agent = make()
    obs_seq, actions = episode(14)
    acted = act_through(agent, obs_seq)
    # by hand: every step's action is the MLP on its DT-style window
    for t in range(len(obs_seq)):
        np.testing.assert_allclose(acted[t], agent.mlp(by_hand(agent, obs_seq, t)).detach().numpy(), **TOL)
    # the loss path: a segment from the episode's start, two mid-episode ones, one running past the end
    starts = [0, 3, 6, 10]
    batch = stack(*(segment(obs_seq, actions, s) for s in starts))
    win, train = agent.windows(batch)
    pred = agent(win).detach().numpy()
    for row, s in enumerate(starts):
        for t in range(SEQ):
            step = s + t
            if step >= len(obs_seq):
                assert not train[row, t]  # padding
                continue
            assert bool(train[row, t]) == (s == 0 or t >= K - 1), (s, t)
            if train[row, t]:  # every trained window is exactly the one acting feeds at that step
                np.testing.assert_allclose(pred[row, t], acted[step], **TOL)
                np.testing.assert_allclose(win[row, t].reshape(-1).numpy(),
                                           by_hand(agent, obs_seq, step).numpy(), **TOL)
    # the loss is the MSE at the trained positions: zero when the targets are acting's actions
    batch["actions"] = torch.as_tensor(np.stack([
        [acted[min(s + t, len(acted) - 1)] for t in range(SEQ)] for s in starts]))
    batch["actions"][~train] = 5.0  # untrained positions' targets must not count
    assert agent.loss(batch)[0].item() < 1e-20


def test_sampler_batches_train_exactly_on_the_windows_acting_sees():
    """With the real sampler (every batch key as training gets it), each trained window and its
    prediction equal those of acting through the dataset's episode at that step."""
    lengths = [3, 9, 14, 6]
    eps = [episode(n, seed=10 + i) for i, n in enumerate(lengths)]
    data = EpisodeData.from_episodes([
        {"observations": np.concatenate([o, o[-1:]]), "actions": a, "rewards": np.ones(len(a)),
         "terminations": np.eye(len(a))[-1].astype(bool), "truncations": np.zeros(len(a), bool)}
        for o, a in eps])
    mean, std = data.obs_mean.astype(np.float64), data.obs_std.astype(np.float64)
    agent = make(mean=mean, std=std)
    acted = np.concatenate([act_through(agent, data.observations[a:b])
                            for a, b in zip(data.offsets[:-1], data.offsets[1:])])
    batch = SegmentSampler(data, seq_len=SEQ, batch_size=256, seed=0).sample()
    win, train = agent.windows(batch)
    pred = agent(win).detach().numpy()
    normed = (data.observations.astype(np.float64) - mean) / std
    rows = np.argmin(((batch["observations"][..., None, :] - normed) ** 2).sum(-1), axis=-1)  # [B, L]
    first_ts = batch["timesteps"][:, :1]
    expected = batch["mask"] & ((first_ts == 0) | (np.arange(SEQ) >= K - 1))
    np.testing.assert_array_equal(train.numpy(), expected)
    assert expected.sum() > 100 and (batch["mask"] & ~expected).sum() > 50  # both kinds were drawn
    np.testing.assert_allclose(pred[expected], acted[rows[expected]], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- (2) zero padding
def test_zero_padding_before_the_episode_start():
    agent = make()
    obs_seq, actions = episode(6)
    norm = (obs_seq - MEAN) / STD
    win, train = agent.windows(stack(segment(obs_seq, actions, 0)))
    assert win.shape == (1, SEQ, K, OBS) and bool(train[0, :6].all())
    # the second step (index 1): 3 zero blocks, then s_0, s_1; index 2: 2 zero blocks, s_0..s_2
    np.testing.assert_array_equal(win[0, 1, :3].numpy(), 0.0)
    np.testing.assert_allclose(win[0, 1, 3:].numpy(), norm[:2], **TOL)
    np.testing.assert_array_equal(win[0, 2, :2].numpy(), 0.0)
    np.testing.assert_allclose(win[0, 2, 2:].numpy(), norm[:3], **TOL)
    np.testing.assert_allclose(win[0, 5].numpy(), norm[1:6], **TOL)  # full: no padding
    # acting holds the same buffer: zeros first, oldest state first
    state = agent.reset(1)
    for t in range(3):
        _, state = agent.act(obs_seq[t][None], None if t == 0 else np.zeros(1), state)
        if t == 1:
            np.testing.assert_allclose(state["window"][0].numpy(), win[0, 1].numpy(), **TOL)
    np.testing.assert_allclose(state["window"][0].numpy(), win[0, 2].numpy(), **TOL)


# ---------------------------------------------------------------------------- (3) crossing windows
def test_windows_crossing_a_mid_episode_segment_start_are_out_of_the_loss():
    agent = make()
    obs_seq, actions = episode(20)
    base = segment(obs_seq, actions, 7)  # mid-episode: positions 0..K-2 lack their earlier states
    changed = {k: v.copy() for k, v in base.items()}
    changed["actions"][: K - 1] = -changed["actions"][: K - 1] + 0.3  # only their targets differ
    loss = agent.loss(stack(base))[0].item()
    assert agent.loss(stack(changed))[0].item() == loss
    # ... and the loss is the MSE over positions K-1.. by hand
    pred = torch.stack([agent.mlp(by_hand(agent, obs_seq, 7 + t)) for t in range(K - 1, SEQ)])
    by_hand_loss = ((pred - torch.as_tensor(actions[7 + K - 1: 7 + SEQ])) ** 2).mean().item()
    assert loss == pytest.approx(by_hand_loss, rel=1e-12)
    # the same positions do train when the segment starts at the episode's start
    first, moved = segment(obs_seq, actions, 0), segment(obs_seq, actions, 0)
    moved["actions"][1] += 0.5
    assert agent.loss(stack(moved))[0].item() != agent.loss(stack(first))[0].item()
    # a trained position's target does change the loss, an untrained one's gradient is zero
    changed["actions"][K - 1] += 0.5
    assert agent.loss(stack(changed))[0].item() != loss
    batch = stack(base)
    batch["actions"].requires_grad_(True)
    agent.loss(batch)[0].backward()
    grad = batch["actions"].grad[0]
    assert torch.all(grad[: K - 1] == 0) and torch.all(grad[K - 1:].abs().sum(-1) > 0)


def test_padding_and_nan_never_reach_the_loss():
    agent = make()
    obs_seq, actions = episode(10)
    batch = stack(segment(obs_seq, actions, 5))  # steps 5..9 real, 3 padded
    clean = agent.loss(batch)[0].item()
    batch["observations"][0, 5:] = float("nan")
    batch["actions"][0, 5:] = float("nan")
    loss = agent.loss(batch)[0]
    assert loss.item() == clean and torch.isfinite(loss)


# ---------------------------------------------------------------------------- (4) done
def test_done_resets_a_rows_buffer_only():
    agent = make()
    (o1, _), (o2, _), (o3, _) = episode(6, seed=1), episode(7, seed=2), episode(3, seed=3)
    state, reward = agent.reset(2), None
    for t in range(4):
        _, state = agent.act(np.stack([o1[t], o2[t]]), reward, state)
        reward = np.zeros(2)
    before = {k: v.clone() for k, v in state.items()}
    action, new = agent.act(np.stack([o3[0], o2[4]]), reward, state, done=np.array([True, False]))
    assert all(torch.equal(before[k], state[k]) for k in state)  # act returned a new dict
    assert new["t"].tolist() == [1, 5]
    np.testing.assert_array_equal(new["window"][0, :-1].numpy(), 0.0)
    np.testing.assert_allclose(new["window"][0, -1].numpy(), (o3[0] - MEAN) / STD, **TOL)
    np.testing.assert_allclose(new["window"][1].numpy(), (o2[:5] - MEAN) / STD, **TOL)
    # row 0 then acts as a fresh episode, row 1 as if nothing happened
    rest = [action]
    for t in (1, 2):
        a, new = agent.act(np.stack([o3[t], o2[4 + t]]), np.zeros(2), new)
        rest.append(a)
    rest = np.stack(rest)
    np.testing.assert_allclose(rest[:, 0], act_through(agent, o3), **TOL)
    np.testing.assert_allclose(rest[:, 1], act_through(agent, o2)[4:7], **TOL)


# ---------------------------------------------------------------------------- (5) context 1 unchanged
# Recorded with agents/bc.py before ``context`` existed: torch.manual_seed(0); BCAgent(DataSpec(4, 2,
# [0.5, -0.5, 1, 0], [2, 1, 0.5, 1.5]), Options(hidden=[8, 8])).double(), acting on OLD_OBS; the loss
# on OLD_BATCH in train mode (dropout 0.1 after torch.manual_seed(3)) and in eval mode.
OLD_KEYS = [("obs_mean", (4,)), ("obs_std", (4,)), ("mlp.0.weight", (8, 4)), ("mlp.0.bias", (8,)),
            ("mlp.3.weight", (8, 8)), ("mlp.3.bias", (8,)), ("mlp.6.weight", (2, 8)), ("mlp.6.bias", (2,))]
OLD_OBS = [[1.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0], [-3.0, 1.0, 2.0, -0.25]]
OLD_ACTIONS = [[-0.20632650571781902, -0.4383375643931658],
               [-0.10713348954495559, -0.3605008344665691],
               [-0.011668947776034217, -0.29225999502682726]]
OLD_LOSS_TRAIN, OLD_LOSS_EVAL = 0.11553111873038444, 0.10751107230731946


def test_context_1_is_the_state_only_mlp_it_was():
    torch.manual_seed(0)
    spec = DataSpec(4, 2, np.array([0.5, -0.5, 1.0, 0.0]), np.array([2.0, 1.0, 0.5, 1.5]))
    agent = BCAgent(spec, BCAgent.Options(hidden=[8, 8])).double()
    assert agent.options.context == 1 and agent.label() == "bc"
    assert [(k, tuple(v.shape)) for k, v in agent.state_dict().items()] == OLD_KEYS
    assert sum(p.numel() for p in agent.parameters()) == 130
    state = agent.reset(3)
    assert sorted(state) == ["t"]  # no window buffer
    action, state = agent.act(np.array(OLD_OBS), None, state)
    np.testing.assert_allclose(action, OLD_ACTIONS, rtol=1e-12, atol=1e-14)
    assert sorted(state) == ["t"]
    g = torch.Generator().manual_seed(1)
    batch = {"observations": torch.randn(2, 3, 4, generator=g, dtype=torch.float64),
             "actions": torch.rand(2, 3, 2, generator=g, dtype=torch.float64) * 2 - 1,
             "timesteps": torch.tensor([[5, 6, 7], [0, 1, 2]]),
             "mask": torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)}
    agent.train()
    torch.manual_seed(3)
    assert agent.loss(batch)[0].item() == pytest.approx(OLD_LOSS_TRAIN, rel=1e-12)
    agent.eval()
    assert agent.loss(batch)[0].item() == pytest.approx(OLD_LOSS_EVAL, rel=1e-12)
    # a checkpoint's options from before the option existed load as context 1
    assert BCAgent.options_from_dict({"hidden": [8, 8], "dropout": 0.1}).context == 1


def test_parameter_counts_for_hopper():
    spec = DataSpec(11, 3, seq_len=20)
    def count(hidden, context):
        agent = BCAgent(spec, BCAgent.Options(hidden=hidden, context=context))
        return sum(p.numel() for p in agent.parameters())

    assert count([64, 64], 1) == 5_123 and count([256, 256], 1) == 69_635
    assert count([256, 256], 20) == 123_139 and count([128, 128, 128], 20) == 61_699  # DT's BC


# ---------------------------------------------------------------------------- (6) contract, options
@pytest.mark.parametrize("context", [1, 4])
def test_check_agent(context):
    check_agent(BCAgent, BCAgent.Options(hidden=[8, 8], context=context))  # its segments: 4 steps


def test_check_agent_context_5(monkeypatch):
    """check_agent's data spec has 4-step segments, too short for K=5 (refused); with 8 it passes."""
    with pytest.raises(ValueError, match="seq_len"):
        check_agent(BCAgent, BCAgent.Options(hidden=[8, 8], context=5))
    monkeypatch.setattr(rlmin.testing, "SEQ", 8)
    check_agent(BCAgent, BCAgent.Options(hidden=[8, 8], context=5))


def test_options_and_refusals():
    for bad in (0, -1, True, 2.5, "3", None):
        with pytest.raises(ValueError, match="context"):
            BCAgent.Options(context=bad)
    assert BCAgent.Options(context=np.int64(3)).context == 3
    with pytest.raises(ValueError, match=r"context=9.*data.seq_len=8"):
        make(context=9, seq_len=8)
    make(context=8, seq_len=8)  # a whole window fits: allowed
    agent = make()
    assert agent.label() == "bc K=5"
    opts = json.loads(json.dumps(agent.options_dict()))
    assert opts == {"hidden": [16, 16], "dropout": 0.0, "context": K}
    clone = BCAgent(DataSpec.from_dict(agent.spec.to_dict(), MEAN, STD),
                    BCAgent.options_from_dict(opts)).double()
    clone.load_state_dict(agent.state_dict())
    obs_seq, _ = episode(7)
    np.testing.assert_array_equal(act_through(clone, obs_seq), act_through(agent, obs_seq))
    assert agent.mlp[0].in_features == K * OBS
    with pytest.raises(ValueError, match="windows"):
        agent(torch.zeros(2, OBS, dtype=torch.float64))  # one state is not a window


def test_dropout_is_off_when_acting():
    agent = make(dropout=0.5)
    agent.train()
    obs_seq, _ = episode(6)
    first = act_through(agent, obs_seq)
    np.testing.assert_array_equal(first, act_through(agent, obs_seq))
    assert agent.training  # act restored the mode
