"""The agents: step-by-step acting equals the parallel forward; resets, loss, options, rebuild.

Everything is tiny (d_model 16, 2 layers, float64) so the whole file runs in seconds on a CPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agents.bc import BCAgent
from agents.decision import DecisionAgent
from rlmin.agent import Agent
from rlmin.spec import DataSpec

OBS, ACT, K = 5, 3, 8
RNNS = ["mingru", "minlstm", "gru", "lstm"]
BACKBONES = RNNS + ["transformer"]
LAYOUTS = ["interleaved", "stacked"]
TOL = dict(rtol=1e-9, atol=1e-9)

_rng = np.random.default_rng(123)
# float32-representable, so the agent's float32 buffers (cast to float64 by .double()) hold them exactly
OBS_MEAN = _rng.normal(size=OBS).astype(np.float32).astype(np.float64)
OBS_STD = _rng.uniform(0.5, 2.0, size=OBS).astype(np.float32).astype(np.float64)


def spec_of(seq_len=K, max_episode_steps=64, obs_mean=OBS_MEAN, obs_std=OBS_STD) -> DataSpec:
    return DataSpec(OBS, ACT, obs_mean, obs_std, seq_len=seq_len, max_episode_steps=max_episode_steps)


def make_agent(backbone="mingru", spec: dict | None = None, **options) -> DecisionAgent:
    """A tiny decision agent; K comes from the spec's ``seq_len``, the timestep table's size from
    its ``max_episode_steps``. Options go through ``options_from_dict`` (as a config's do)."""
    torch.manual_seed(0)
    opts = dict(backbone=backbone, d_model=16, n_layers=2,
                return_scale=10.0)  # dropout stays at its default 0.1: act() must switch it off itself
    opts.update(options)
    return DecisionAgent(spec_of(**(spec or {})), DecisionAgent.options_from_dict(opts)).double()


def trajectories(n, length, seed=0, target=5.0):
    """Random raw obs, actions, rewards; RTG computed as act() computes it (R_t = target - sum r_<t)."""
    rng = np.random.default_rng(seed)
    obs = OBS_MEAN + OBS_STD * rng.normal(size=(n, length, OBS))
    actions = rng.uniform(-1, 1, size=(n, length, ACT))
    rewards = rng.uniform(-0.5, 1.0, size=(n, length))
    targets = np.full(n, target) + np.arange(n)
    rtg = targets[:, None] - np.concatenate([np.zeros((n, 1)), np.cumsum(rewards, 1)[:, :-1]], 1)
    return dict(obs=obs, actions=actions, rewards=rewards, targets=targets, rtg=rtg)


def batch_of(traj, start=0, stop=None, mask=None):
    """A sampler-format batch (normalised obs) for steps [start, stop) of every trajectory."""
    stop = traj["obs"].shape[1] if stop is None else stop
    n = traj["obs"].shape[0]
    batch = {
        "observations": (traj["obs"][:, start:stop] - OBS_MEAN) / OBS_STD,
        "actions": traj["actions"][:, start:stop],
        "rewards": traj["rewards"][:, start:stop],
        "returns_to_go": traj["rtg"][:, start:stop],
        "timesteps": np.tile(np.arange(start, stop), (n, 1)),
    }
    batch["mask"] = np.ones((n, stop - start), bool) if mask is None else mask
    return batch


def replay(agent, traj, force=True):
    """Feed a recorded trajectory through act(), forcing the recorded actions as the previous ones."""
    n, length = traj["obs"].shape[:2]
    state = agent.reset(n, traj["targets"])
    out = []
    for t in range(length):
        reward = None if t == 0 else traj["rewards"][:, t - 1]
        prev = None if (t == 0 or not force) else traj["actions"][:, t - 1]
        a, new_state = agent.act(traj["obs"][:, t], reward, state, prev_action=prev)
        assert a.shape == (n, ACT) and isinstance(a, np.ndarray)
        assert new_state is not state and int(state["t"][0]) == t  # the input state is left alone
        state = new_state
        out.append(a)
    return np.stack(out, 1), state


def parallel(agent, batch):
    agent.eval()
    with torch.no_grad():
        return agent.predict(batch).numpy()


# ---------------------------------------------------------------------------- acting == training
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backbone", RNNS)
def test_carry_acting_equals_parallel_forward(backbone, layout):
    agent = make_agent(backbone, token_layout=layout)
    assert agent.act_mode == "carry"
    traj = trajectories(3, 40)
    agent.train()  # act() must be deterministic anyway
    stepped, state = replay(agent, traj)
    assert agent.training  # and restore the mode
    np.testing.assert_allclose(stepped, parallel(agent, batch_of(traj)), **TOL)
    assert set(state) >= {"target", "rtg", "t", "prev_action", "backbone.0"}
    assert all(v.shape[0] == 3 for v in state.values())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_transformer_window_acting_equals_parallel_forward(layout):
    agent = make_agent("transformer", token_layout=layout)
    assert agent.act_mode == "window"
    assert agent.backbone.context == (3 * K if layout == "interleaved" else K)
    traj = trajectories(2, K, seed=1)
    stepped, _ = replay(agent, traj)
    np.testing.assert_allclose(stepped, parallel(agent, batch_of(traj)), **TOL)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backbone", ["mingru", "transformer"])
def test_window_acting_equals_parallel_forward_on_last_k_steps(backbone, layout):
    agent = make_agent(backbone, token_layout=layout, act_mode="window")
    length = 2 * K + 3
    traj = trajectories(2, length, seed=2)
    stepped, _ = replay(agent, traj)
    full = parallel(agent, batch_of(traj, 0, K))  # the first K steps: a growing window
    np.testing.assert_allclose(stepped[:, :K], full, **TOL)
    for t in range(K, length):  # then a sliding window of the last K steps
        window = parallel(agent, batch_of(traj, t - K + 1, t + 1))
        np.testing.assert_allclose(stepped[:, t], window[:, -1], **TOL)


def test_carry_without_forcing_uses_own_actions():
    """Without prev_action, the agent feeds back its own actions: same as forcing them."""
    agent = make_agent("mingru")
    traj = trajectories(2, 12, seed=3)
    own, _ = replay(agent, traj, force=False)
    traj_own = dict(traj, actions=own)
    forced, _ = replay(agent, traj_own, force=True)
    np.testing.assert_allclose(own, forced, **TOL)
    np.testing.assert_allclose(own, parallel(agent, batch_of(traj_own)), **TOL)


# ---------------------------------------------------------------------------- per-row reset
@pytest.mark.parametrize("backbone,mode,layout", [
    ("mingru", "carry", "interleaved"), ("lstm", "carry", "stacked"),
    ("mingru", "window", "stacked"), ("transformer", "window", "interleaved"),
])
def test_done_resets_one_row(backbone, mode, layout):
    agent = make_agent(backbone, act_mode=mode, token_layout=layout)
    length, cut = 24, K + 4  # the reset comes after the window is full
    a, b = trajectories(1, length, seed=4), trajectories(1, length, seed=5, target=7.0)

    def solo(traj, steps):
        state, out = agent.reset(1, traj["targets"]), []
        for t in range(steps):
            act, state = agent.act(traj["obs"][:, t], None if t == 0 else traj["rewards"][:, t - 1], state)
            out.append(act[0])
        return np.stack(out)

    ref_a, ref_b = solo(a, length), solo(b, length - cut)
    state = agent.reset(2, [5.0, 7.0])
    out = []
    for t in range(length):
        done = np.array([False, t == cut])
        tb = t - cut if t >= cut else t  # env 1 runs trajectory b from its start after the reset
        obs = np.concatenate([a["obs"][:, t], b["obs"][:, tb]])
        prev_r = lambda tr, i: tr["rewards"][0, i - 1] if i > 0 else np.nan  # noqa: E731 (NaN: must be ignored)
        reward = None if t == 0 else np.array([prev_r(a, t), prev_r(b, tb)])
        act, state = agent.act(obs, reward, state, done=done)
        out.append(act)
    out = np.stack(out, 1)
    np.testing.assert_allclose(out[0], ref_a, **TOL)  # the other row does not notice
    np.testing.assert_allclose(out[1, cut:], ref_b, **TOL)
    assert state["t"].tolist() == [length, length - cut]


def test_reward_required_after_first_step():
    agent = make_agent("gru")
    state = agent.reset(2, 5.0)
    _, state = agent.act(np.zeros((2, OBS)), None, state)
    with pytest.raises(ValueError, match="reward"):
        agent.act(np.zeros((2, OBS)), None, state)
    _, state = agent.act(np.zeros((2, OBS)), None, state, done=np.array([True, True]))  # both new: fine


def test_timesteps_beyond_max_are_clamped():
    agent = make_agent("gru", spec=dict(max_episode_steps=4))
    assert agent.max_timestep == 4 and agent.embed_timestep.num_embeddings == 4
    traj = trajectories(1, 10, seed=6)
    batch = batch_of(traj)
    clamped = dict(batch, timesteps=np.minimum(batch["timesteps"], 3))
    np.testing.assert_allclose(parallel(agent, batch), parallel(agent, clamped), **TOL)
    stepped, _ = replay(agent, traj)  # acting past max_timestep does not raise
    np.testing.assert_allclose(stepped, parallel(agent, batch), **TOL)


# ---------------------------------------------------------------------------- training
def overfit(agent, batch, steps=25, lr=1e-2):
    agent.train()
    opt = torch.optim.Adam(agent.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, metrics = agent.loss(batch)
        assert set(metrics) == {"loss", "action_mse"} and isinstance(metrics["loss"], float)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["loss"])
    return losses


@pytest.mark.parametrize("backbone", BACKBONES)
def test_loss_decreases_on_tiny_batch(backbone):
    agent = make_agent(backbone, dropout=0.0)
    traj = trajectories(4, K, seed=7)
    losses = overfit(agent, batch_of(traj))
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_masked_loss_ignores_padding(backbone, layout):
    agent = make_agent(backbone, token_layout=layout)
    agent.eval()
    traj = trajectories(3, K, seed=8)
    mask = np.ones((3, K), bool)
    mask[0, 5:] = False
    mask[2, 2:] = False
    clean = batch_of(traj, mask=mask)
    dirty = {k: v.copy() for k, v in clean.items()}
    pad = ~mask
    dirty["observations"][pad] = np.nan
    dirty["actions"][pad] = np.nan
    dirty["returns_to_go"][pad] = np.inf
    dirty["timesteps"][pad] = 10**6
    loss_clean, _ = agent.loss(clean)
    loss_dirty, _ = agent.loss(dirty)
    assert loss_clean.item() == pytest.approx(loss_dirty.item(), rel=1e-12)
    loss_dirty.backward()
    assert all(torch.isfinite(p.grad).all() for p in agent.parameters() if p.grad is not None)
    # and the loss is the mean over real steps only
    pred = parallel(agent, clean)
    expected = ((pred - clean["actions"]) ** 2)[mask].mean()
    assert loss_clean.item() == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize("options,name", [
    (dict(bogus=1), "bogus"),
    (dict(token_layout="diagonal"), "token_layout"),
    (dict(act_mode="replay"), "act_mode"),
    (dict(d_model=0), "d_model"),
    (dict(n_layers=True), "n_layers"),
    (dict(context_steps=20), "context_steps"),  # K is the data's (spec.seq_len), not an option
    (dict(max_timestep=1000), "max_timestep"),  # the spec's max_episode_steps, not an option
    (dict(spec=dict(seq_len=2.5)), "seq_len"),
    (dict(spec=dict(max_episode_steps=-1)), "max_episode_steps"),
    (dict(return_scale=0), "return_scale"),
    (dict(dropout=1.0), "dropout"),
    (dict(timestep_embedding="yes"), "timestep_embedding"),
    (dict(action_tanh=1), "action_tanh"),
    (dict(backbone_options=[1]), "backbone_options"),
    (dict(backbone="mamba"), "backbone"),
    (dict(backbone="mingru", backbone_options=dict(expansion=-1)), "expansion"),
    (dict(backbone="mingru", backbone_options=dict(bogus=1)), r"\['bogus'\].*mingru"),
    (dict(backbone="transformer", act_mode="carry"), "act_mode"),
    (dict(backbone="transformer", backbone_options=dict(context=K)), "context"),
])
def test_options_validation(options, name):
    with pytest.raises(ValueError, match=name):
        make_agent(**options)


def test_options_are_a_typed_dataclass():
    options = DecisionAgent.Options(backbone="transformer")
    assert options.act_mode == "window"  # resolved once, in __post_init__
    with pytest.raises(TypeError):
        DecisionAgent.Options(bogus=1)  # a dataclass: no silent **kwargs
    with pytest.raises(TypeError, match="DecisionAgent.Options"):
        DecisionAgent(spec_of(), BCAgent.Options())  # another agent's options are refused
    with pytest.raises(ValueError, match=r"unknown option.*'nope'"):
        DecisionAgent.options_from_dict({"d_model": 16, "nope": 1})


def test_transformer_context_defaults():
    stacked = make_agent("transformer", token_layout="stacked")
    assert stacked.backbone.context == K  # sized from the spec's seq_len ...
    assert stacked.options_dict()["backbone_options"]["context"] is None  # ... not spliced into the options
    assert make_agent("transformer", spec=dict(seq_len=5)).backbone.context == 3 * 5
    agent = make_agent("transformer", backbone_options=dict(context=5 * K))
    assert agent.backbone.context == 5 * K


def test_acting_mode_changes_only_inside_acting_and_is_restored():
    agent = make_agent("mingru")
    assert agent.act_mode == "carry" and agent.label() == "mingru"
    with agent.acting("window") as same:
        assert same is agent and agent.act_mode == "window"
        assert agent.label() == "mingru (window)" and agent.describe() == \
            {"label": "mingru (window)", "act_mode": "window"}
        state = agent.reset(1, 5.0)
        assert "win_obs" in state  # acting really switched
    assert agent.act_mode == "carry" and "backbone.0" in agent.reset(1, 5.0)
    with pytest.raises(RuntimeError, match="boom"):
        with agent.acting("window"):
            raise RuntimeError("boom")
    assert agent.act_mode == "carry", "acting() must restore the mode on an error too"
    with agent.acting(None):  # None: the agent's own mode
        assert agent.act_mode == "carry"
    with pytest.raises(ValueError, match="act_mode"):
        with agent.acting("replay"):
            pass
    transformer = make_agent("transformer")
    with pytest.raises(ValueError, match="recurrent"):
        with transformer.acting("carry"):
            pass
    assert transformer.act_mode == "window"
    with pytest.raises(ValueError, match="recurrent"):
        DecisionAgent.check_act_mode(transformer.options, "carry")
    DecisionAgent.check_act_mode(transformer.options, "window")


@pytest.mark.parametrize("backbone", ["minlstm", "transformer"])
def test_build_round_trip(backbone):
    agent = make_agent(backbone, token_layout="stacked", timestep_embedding=False)
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(0.01)
    opts = json.loads(json.dumps(agent.options_dict()))  # plain values
    assert opts["act_mode"] == ("window" if backbone == "transformer" else "carry")
    spec = DataSpec.from_dict(json.loads(json.dumps(agent.spec.to_dict())))
    assert spec.obs_mean is None  # no normalisation given: it comes from the state dict
    clone = DecisionAgent(spec, DecisionAgent.options_from_dict(opts)).double()
    clone.load_state_dict(agent.state_dict())
    traj = trajectories(2, 6, seed=9)
    np.testing.assert_allclose(replay(clone, traj)[0], replay(agent, traj)[0], **TOL)
    np.testing.assert_allclose(parallel(clone, batch_of(traj)), parallel(agent, batch_of(traj)), **TOL)


def test_defaults_are_dts():
    agent = DecisionAgent(DataSpec(OBS, ACT), DecisionAgent.Options(backbone="transformer"))
    o = agent.options
    assert (o.d_model, o.n_layers, agent.context_steps, o.return_scale, o.dropout) == \
        (128, 3, 20, 1000.0, 0.1)
    assert agent.max_timestep == 1000  # DataSpec's default episode cap: the MuJoCo time limit
    assert agent.backbone.context == 60 and o.act_mode == "window"
    assert DecisionAgent(DataSpec(OBS, ACT)).options.backbone == "mingru"
    assert DecisionAgent.Options().backbone == "mingru"
    assert isinstance(agent, Agent)


# ---------------------------------------------------------------------------- behaviour cloning
def test_bc_agent():
    torch.manual_seed(0)
    agent = BCAgent(spec_of(), BCAgent.Options(hidden=[32, 32], dropout=0.0)).double()
    traj = trajectories(4, K, seed=10)
    mask = np.ones((4, K), bool)
    mask[1, 4:] = False
    batch = batch_of(traj, mask=mask)
    batch["observations"][~mask] = np.nan  # padding never reaches the loss or the gradients
    batch["actions"][~mask] = np.nan
    losses = overfit(agent, batch, steps=60)
    assert losses[-1] < 0.5 * losses[0], losses
    state = agent.reset(3, target_return=123.0)
    action, state = agent.act(traj["obs"][:3, 0], None, state)
    assert action.shape == (3, ACT) and np.all(np.abs(action) <= 1)
    action2, state = agent.act(traj["obs"][:3, 1], np.zeros(3), state, done=np.array([False, True, False]))
    assert state["t"].tolist() == [2, 1, 2]
    expected = agent.mlp(torch.as_tensor((traj["obs"][:3, 1] - OBS_MEAN) / OBS_STD)).detach().numpy()
    np.testing.assert_allclose(action2, expected, **TOL)
    opts = json.loads(json.dumps(agent.options_dict()))
    assert opts == {"hidden": [32, 32], "dropout": 0.0, "context": 1}
    clone = BCAgent(DataSpec(OBS, ACT), BCAgent.options_from_dict(opts)).double()
    clone.load_state_dict(agent.state_dict())
    np.testing.assert_allclose(clone.act(traj["obs"][:3, 1], None, clone.reset(3))[0], action2, **TOL)
    assert agent.label() == "bc" and agent.act_modes == ()
    with agent.acting(None):  # no modes to choose: acting(None) is the one way
        pass
    with pytest.raises(ValueError, match="one way only"):
        with agent.acting("window"):
            pass
    with pytest.raises(ValueError, match="hidden"):
        BCAgent.Options(hidden=[0])
    with pytest.raises(ValueError, match="hidden"):
        BCAgent.Options(hidden=32)  # a list of widths, not one number
    with pytest.raises(ValueError, match="dropout"):
        BCAgent.Options(dropout=1.0)
    with pytest.raises(ValueError, match="width"):
        BCAgent.options_from_dict({"width": 3})
