"""Acting paths: the chunked carry step equals the per-token reference; the ONNX policy equals the torch one.

Tiny agents (d_model 16, 2 layers) built directly and saved as the payload ``rlmin export`` writes,
so no training is needed. Observations and rewards are a fake random stream with ``done`` resets
mid-stream, which exercises every row pattern: all rows starting, none, and some.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.decision import DecisionAgent
from rlmin import cli
from rlmin.policy import FORMAT, Policy, agent_payload
from rlmin.spec import DataSpec

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

OBS, ACT, K = 5, 3, 8
REPO = Path(__file__).resolve().parent.parent
_rng = np.random.default_rng(7)
OBS_MEAN = _rng.normal(size=OBS).astype(np.float32)
OBS_STD = _rng.uniform(0.5, 2.0, size=OBS).astype(np.float32)
EVAL_SPEC = {"env_id": "Hopper-v5", "max_episode_steps": 1000, "target_returns": [30.0, 15.0],
             "ref_min": -20.0, "ref_max": 3000.0, "ref_source": "test", "obs_dim": OBS, "act_dim": ACT,
             "dataset_id": "test/fake-v0", "task": None, "level": None}


def make_agent(backbone="mingru", **options) -> DecisionAgent:
    torch.manual_seed(0)
    spec = DataSpec(OBS, ACT, OBS_MEAN, OBS_STD, seq_len=K, max_episode_steps=64)
    opts = dict(backbone=backbone, d_model=16, n_layers=2, return_scale=10.0)
    return DecisionAgent(spec, DecisionAgent.options_from_dict({**opts, **options}))


def save_checkpoint(agent, path: Path) -> Path:
    """A payload with the keys rlmin.policy.export_policy writes (a policy is a checkpoint too)."""
    torch.save({"format": FORMAT, "agent": agent_payload("decision", agent), "model": agent.state_dict(),
                "eval_spec": EVAL_SPEC, "dataset": {"id": "test/fake-v0"}, "step": 0}, path)
    return path


def stream(n: int, steps: int, seed: int = 0, p_done: float = 0.02):
    """Raw obs [steps, n, OBS], rewards [steps, n] and done [steps, n]: a fake env's output."""
    rng = np.random.default_rng(seed)
    obs = OBS_MEAN + OBS_STD * rng.normal(size=(steps, n, OBS))
    rewards = rng.uniform(-0.5, 1.0, size=(steps, n))
    done = rng.uniform(size=(steps, n)) < p_done
    done[0] = False
    if n > 1 and steps > 5:
        done[5, 0] = True  # some rows start, others do not
    if steps > 9:
        done[9] = True  # every row starts at once
    return obs, rewards, done


def run_agent(agent, n, steps, seed=0):
    obs, rewards, done = stream(n, steps, seed)
    state, out = agent.reset(n, 5.0 + np.arange(n)), []
    for t in range(steps):
        action, state = agent.act(obs[t], None if t == 0 else rewards[t - 1], state,
                                  done[t] if t else None)
        out.append(action)
    return np.stack(out), state


def run_policy(policy, n, steps, seed=0):
    obs, rewards, done = stream(n, steps, seed)
    policy.reset(n)
    out = []
    for t in range(steps):
        out.append(policy.act(obs[t].astype(np.float32), None if t == 0 else rewards[t - 1],
                              done[t] if t else None))
    return np.stack(out)


# ---------------------------------------------------------------------------- torch acting paths
@pytest.mark.parametrize("layout", ["interleaved", "stacked"])
@pytest.mark.parametrize("backbone", ["mingru", "minlstm", "gru", "lstm"])
def test_chunked_carry_equals_per_token_steps(backbone, layout):
    """One backbone.forward of a step's tokens == one backbone.step per token, first rows included."""
    agent = make_agent(backbone, token_layout=layout).double()
    agent.carry_impl = "step"
    ref, ref_state = run_agent(agent, 3, 30)
    agent.carry_impl = "chunk"
    out, state = run_agent(agent, 3, 30)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)
    for key in ref_state:
        np.testing.assert_allclose(state[key].numpy(), ref_state[key].numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", ["interleaved", "stacked"])
@pytest.mark.parametrize("backbone", ["mingru", "minlstm", "gru", "lstm"])
def test_traced_carry_equals_per_token_steps(backbone, layout):
    """carry_impl="traced" (Policy.load's): the same actions as the reference, per n_envs and dtype,
    without falling back to eager (a failed trace warns, and warnings are errors here)."""
    import warnings

    agent = make_agent(backbone, token_layout=layout).double()
    agent.carry_impl = "step"
    ref = [run_agent(agent, n, 30, seed=n)[0] for n in (3, 1)]
    agent.carry_impl = "traced"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = [run_agent(agent, n, 30, seed=n)[0] for n in (3, 1)]
    for a, b in zip(out, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert sorted(k[0] for k in agent.__dict__["_traced_steps"]) == [1, 3]
    assert all(fn != agent._no_start_ops for fn in agent.__dict__["_traced_steps"].values())


def test_traced_carry_reads_the_weights_live():
    """A traced step keeps using the agent's parameters (no frozen copy): after an update of the
    weights it still equals the reference, as training-time evaluation needs."""
    agent = make_agent("mingru").double()
    agent.carry_impl = "traced"
    run_agent(agent, 2, 5)  # traces
    with torch.no_grad():
        for p in agent.backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    out, _ = run_agent(agent, 2, 20)
    agent.carry_impl = "step"
    np.testing.assert_allclose(out, run_agent(agent, 2, 20)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("options", [{}, {"conv_kernel": 3, "learn_h0": True},
                                     {"conv_kernel": 2, "conv_layout": "official"}])
def test_chunked_carry_equals_training_forward(options):
    """Carry acting from an episode's start is the whole-episode forward that training runs."""
    agent = make_agent("mingru", backbone_options=options).double().eval()
    n, steps = 2, 12
    rng = np.random.default_rng(1)
    obs = OBS_MEAN + OBS_STD * rng.normal(size=(n, steps, OBS))
    actions = rng.uniform(-1, 1, size=(n, steps, ACT))
    rewards = rng.uniform(size=(n, steps))
    rtg = 5.0 - np.concatenate([np.zeros((n, 1)), np.cumsum(rewards, 1)[:, :-1]], 1)
    state, out = agent.reset(n, 5.0), []
    for t in range(steps):
        a, state = agent.act(obs[:, t], None if t == 0 else rewards[:, t - 1], state,
                             prev_action=None if t == 0 else actions[:, t - 1])
        out.append(a)
    with torch.no_grad():
        full = agent.predict({"observations": (obs - OBS_MEAN) / OBS_STD, "actions": actions,
                              "returns_to_go": rtg, "timesteps": np.tile(np.arange(steps), (n, 1))})
    np.testing.assert_allclose(np.stack(out, 1), full.numpy(), rtol=1e-9, atol=1e-9)


def test_carry_equals_window_while_the_window_is_filling():
    """For t < K both see the episode from its start through a fresh recurrence: the same actions.
    (docs/AGENTS.md: beyond K, window acting restarts the recurrence every step, carry does not.)"""
    agent = make_agent("mingru").double()
    carry, _ = run_agent(agent, 2, K, seed=3)
    with agent.acting("window"):
        window, _ = run_agent(agent, 2, K, seed=3)
    np.testing.assert_allclose(carry, window, rtol=1e-9, atol=1e-9)


def test_act_leaves_the_input_state_alone_and_rejects_unknown_impl():
    agent = make_agent("mingru")
    state = agent.reset(2, 5.0)
    _, state = agent.act(np.zeros((2, OBS)), None, state)
    before = {k: v.clone() for k, v in state.items()}
    agent.act(np.zeros((2, OBS)), np.ones(2), state, done=np.array([True, False]))
    assert all(torch.equal(before[k], state[k]) for k in state)
    agent.carry_impl = "fast"
    with pytest.raises(ValueError, match="carry_impl"):
        agent.act(np.zeros((2, OBS)), np.ones(2), state)


# ---------------------------------------------------------------------------- the ONNX policy
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (torch Policy, ONNX policy, onnx path)} for each exported agent."""
    root = tmp_path_factory.mktemp("onnx")
    agents = {"mingru": make_agent("mingru"), "minlstm": make_agent("minlstm"),
              "gru": make_agent("gru"), "lstm": make_agent("lstm"),
              "mingru-conv-h0-stacked": make_agent("mingru", token_layout="stacked",
                                                   backbone_options={"conv_kernel": 3, "learn_h0": True}),
              "minlstm-conv-h0-official": make_agent("minlstm", backbone_options={
                  "conv_kernel": 3, "conv_layout": "official", "learn_h0": True})}
    out = {}
    for name, agent in agents.items():
        ckpt = save_checkpoint(agent, root / f"{name}.pt")
        onnx_path = root / f"{name}.onnx"
        assert cli.main(["export", str(ckpt), str(onnx_path)]) == 0
        out[name] = (Policy.load(ckpt), Policy.load(onnx_path), onnx_path)
    return out


@pytest.mark.parametrize("n_envs", [1, 4])
@pytest.mark.parametrize("name", ["mingru", "minlstm", "gru", "lstm"])
def test_onnx_policy_equals_torch_policy_over_1000_steps(exported, name, n_envs):
    torch_policy, onnx_policy, _ = exported[name]
    expected = run_policy(torch_policy, n_envs, 1000, seed=n_envs)
    actions = run_policy(onnx_policy, n_envs, 1000, seed=n_envs)
    assert actions.shape == (1000, n_envs, ACT) and actions.dtype == np.float32
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-5)
    assert onnx_policy.state["t"].tolist() == torch_policy.state["t"].tolist()
    np.testing.assert_allclose(onnx_policy.state["rtg"], torch_policy.state["rtg"].numpy(), atol=1e-3)


@pytest.mark.parametrize("name", ["mingru-conv-h0-stacked", "minlstm-conv-h0-official"])
def test_onnx_policy_carries_conv_cache_and_learned_h0(exported, name):
    """The interleaved graph shifts first rows' tokens with length 2: the conv cache must come from
    the right positions (a cache taken at T - 1 fails after every done)."""
    torch_policy, onnx_policy, _ = exported[name]
    np.testing.assert_allclose(run_policy(onnx_policy, 3, 200), run_policy(torch_policy, 3, 200),
                               rtol=0, atol=1e-5)


def test_onnx_policy_metadata_and_api(exported):
    torch_policy, onnx_policy, _ = exported["mingru"]
    assert torch_policy.agent.carry_impl == "traced"  # Policy.load's: the deployment path
    spec = onnx_policy.eval_spec
    assert (spec.env_id, spec.target_returns, spec.ref_min, spec.ref_max) == ("Hopper-v5", (30.0, 15.0),
                                                                            -20.0, 3000.0)
    layout = {s["name"]: s for s in onnx_policy.metadata["state"]}
    assert list(layout)[:4] == ["target", "rtg", "t", "prev_action"] and "backbone.1" in layout
    assert onnx_policy.metadata["agent"]["options"]["backbone"] == "mingru"
    with pytest.raises(RuntimeError, match="reset"):
        type(onnx_policy).load(exported["mingru"][2]).act(np.zeros((1, OBS)))
    onnx_policy.reset(2)  # the default target: the first of the eval spec's
    assert onnx_policy.state["rtg"].tolist() == [30.0, 30.0]
    onnx_policy.act(np.zeros((2, OBS)))
    with pytest.raises(ValueError, match="reward"):
        onnx_policy.act(np.zeros((2, OBS)))
    with pytest.raises(ValueError, match="obs must be"):
        onnx_policy.act(np.zeros((3, OBS)), np.zeros(3))


@pytest.mark.parametrize("copied", [False, True], ids=["in-the-repo", "two-copied-files"])
def test_onnx_policy_runs_without_torch(exported, tmp_path, copied):
    """rlmin.onnx_policy imports numpy and onnxruntime only: it runs with torch made unimportable,
    and from onnx_policy.py and step_protocol.py copied beside a deployment's code, without rlmin."""
    import shutil

    torch_policy, _, path = exported["minlstm" if not copied else "mingru"]
    expected = run_policy(torch_policy, 2, 20, seed=5)
    np.savez(tmp_path / "stream.npz", *stream(2, 20, seed=5))
    if copied:
        for name in ("onnx_policy.py", "step_protocol.py"):
            shutil.copy(REPO / "rlmin" / name, tmp_path / name)
    blocked, where, module = (("torch", "rlmin"), tmp_path, "onnx_policy") if copied else \
        (("torch",), REPO, "rlmin.onnx_policy")
    code = f"""
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of it now raises ImportError
sys.path.insert(0, {str(where)!r})
import numpy as np
from {module} import OnnxPolicy
obs, rewards, done = np.load({str(tmp_path / "stream.npz")!r}).values()
policy = OnnxPolicy.load({str(path)!r})
policy.reset(2)
out = [policy.act(obs[t], None if t == 0 else rewards[t - 1], done[t] if t else None).tolist()
       for t in range(len(obs))]
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.array(json.loads(proc.stdout)), expected, rtol=0, atol=1e-5)


def test_transformer_export_is_refused_in_one_line(tmp_path, capsys):
    ckpt = save_checkpoint(make_agent("transformer"), tmp_path / "dt.pt")
    assert cli.main(["export", str(ckpt), str(tmp_path / "dt.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "carry" in err and ".pt" in err
    assert not (tmp_path / "dt.onnx").exists()


def test_int8_export_is_quantized_close_and_says_so(tmp_path, capsys):
    """--quantize int8: the Linear weights really are int8 (a silently skipped quantization, or lost
    metadata, fails here), the actions stay near the float policy's, and a .pt output is refused."""
    import onnx

    agent = make_agent("mingru", d_model=32)
    ckpt = save_checkpoint(agent, tmp_path / "m.pt")
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m8.onnx"
    assert cli.main(["export", str(ckpt), str(fp32)]) == 0
    assert cli.main(["export", str(ckpt), str(int8), "--quantize", "int8"]) == 0
    ops = [node.op_type for node in onnx.load(int8).graph.node]
    assert ops.count("MatMulInteger") >= 2 * 4 + 1  # every block's gates, proj and MLP; the head
    assert "Gemm" not in ops and "MatMul" not in ops  # no float matrix product left
    p8, p32 = Policy.load(int8), Policy.load(fp32)
    assert (p8.quantization, p32.quantization) == ("int8", None)
    a8, a32 = run_policy(p8, 4, 300, seed=2), run_policy(p32, 4, 300, seed=2)
    diff = np.abs(a8 - a32)
    assert 1e-6 < diff.max() < 0.1 and diff.mean() < 0.01, (diff.max(), diff.mean())
    capsys.readouterr()
    assert cli.main(["export", str(ckpt), str(tmp_path / "m2.pt"), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".onnx" in err and not (tmp_path / "m2.pt").exists()


def test_eval_of_the_onnx_file_replays_the_checkpoints_episodes(tmp_path, capsys):
    """`rlmin eval policy.onnx` runs the deployed file in the real env: a float32 export plays the
    same episodes as the checkpoint (same lengths, returns to float round-off)."""
    from rlmin.evaluate import evaluate_checkpoint

    torch.manual_seed(0)
    spec = DataSpec(11, 3, np.zeros(11), np.ones(11), seq_len=K, max_episode_steps=64)
    agent = DecisionAgent(spec, DecisionAgent.options_from_dict(dict(backbone="minlstm", d_model=16, n_layers=2)))
    ckpt = tmp_path / "hopper.pt"
    torch.save({"format": FORMAT, "agent": agent_payload("decision", agent), "model": agent.state_dict(),
                "eval_spec": {**EVAL_SPEC, "obs_dim": 11}, "dataset": None, "step": 7}, ckpt)
    onnx_path = tmp_path / "hopper.onnx"
    assert cli.main(["export", str(ckpt), str(onnx_path)]) == 0
    kw = dict(episodes=3, n_envs=2, target_returns=[30.0], max_episode_steps=40, seed=3)  # one env resets
    ref, got = evaluate_checkpoint(ckpt, **kw), evaluate_checkpoint(onnx_path, **kw)
    r, g = ref["targets"]["30"], got["targets"]["30"]
    assert g["lengths"] == r["lengths"]
    np.testing.assert_allclose(g["returns"], r["returns"], rtol=1e-4)
    assert got["agent"] == {"label": "minlstm", "act_mode": "carry", "policy": "onnx", "quantization": None}
    assert got["checkpoint"]["step"] == 7
    capsys.readouterr()
    assert cli.main(["eval", str(onnx_path), "--mode", "window", "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "carry mode only" in err
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    assert cli.main(["eval", str(tmp_path / "broken.onnx"), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a loadable ONNX model" in err
