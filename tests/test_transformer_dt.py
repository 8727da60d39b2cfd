"""The transformer backbone is DT's GPT-2 (kzl/decision-transformer, gym/decision_transformer/models/trajectory_gpt2.py
as its experiment.py builds it): checked against a GPT-2 written here from those published formulas, with
rlmin's weights mapped onto GPT-2's parameter names, and one test per DT choice (no wpe, relu, one input
dropout, the init)."""
from __future__ import annotations

import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
import yaml

from rlmin.nn import build_backbone

ROOT = pathlib.Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(d=16, n_layers=3, context=24, **options):
    torch.manual_seed(0)
    model = build_backbone("transformer", d, n_layers, context=context, dropout=0.0, **options).double().eval()
    with torch.no_grad():  # move LayerNorms and biases off their init, so that a misplaced one shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def gpt2_state_dict(model) -> dict:
    """rlmin's parameters under GPT-2's names; Conv1D weights are [in, out], i.e. Linear weights transposed.
    Every rlmin parameter must map to one (so nothing extra, e.g. a position embedding, hides in the model)."""
    sd = dict(model.state_dict())
    out = {}
    names = {"ln1": "ln_1", "ln2": "ln_2", "attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj",
             "mlp.0": "mlp.c_fc", "mlp.2": "mlp.c_proj"}
    for i in range(model.n_layers):
        for ours, theirs in names.items():
            w, b = sd.pop(f"blocks.{i}.{ours}.weight"), sd.pop(f"blocks.{i}.{ours}.bias")
            out[f"h.{i}.{theirs}.weight"] = w if ours.startswith("ln") else w.t()
            out[f"h.{i}.{theirs}.bias"] = b
    out["ln_f.weight"], out["ln_f.bias"] = sd.pop("norm.weight"), sd.pop("norm.bias")
    if "pos" in sd:
        out["wpe.weight"] = sd.pop("pos")
    assert not sd, f"parameters with no GPT-2 counterpart: {sorted(sd)}"
    return out


def reference_gpt2(sd, x, n_layers, n_heads, activation, attention_mask=None):
    """GPT2Model.forward(inputs_embeds=x) of DT's trajectory_gpt2 in eval mode (dropout off), from its code:
    Conv1D y = x W + b; Attention with scale=True, causal scores replaced by masked_bias = -1e4, the
    attention_mask added as (1 - mask) * -10000; Block: h + attn(ln_1(h)), h + mlp(ln_2(h)); ln_f at the end.
    layer_norm_epsilon = 1e-5 (GPT2Config's default); wpe only if given (DT removes it)."""
    B, T, d = x.shape
    dh = d // n_heads
    act = {"relu": F.relu, "gelu": F.gelu}[activation]  # transformers' ACT2FN["relu"], ["gelu"]

    def ln(h, name):
        return F.layer_norm(h, (d,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)

    def conv1d(h, name):
        return h @ sd[f"{name}.weight"] + sd[f"{name}.bias"]

    h = x + sd["wpe.weight"][:T] if "wpe.weight" in sd else x
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(n_layers):
        q, k, v = conv1d(ln(h, f"h.{i}.ln_1"), f"h.{i}.attn.c_attn").split(d, dim=2)
        q, v = (t.view(B, T, n_heads, dh).permute(0, 2, 1, 3) for t in (q, v))
        k = k.view(B, T, n_heads, dh).permute(0, 2, 3, 1)
        w = torch.matmul(q, k) / math.sqrt(dh)
        w = torch.where(causal, w, torch.tensor(-1e4, dtype=w.dtype))
        if attention_mask is not None:
            w = w + (1.0 - attention_mask[:, None, None, :].to(w.dtype)) * -10000.0
        a = torch.matmul(w.softmax(dim=-1), v).permute(0, 2, 1, 3).reshape(B, T, d)
        h = h + conv1d(a, f"h.{i}.attn.c_proj")
        h = h + conv1d(act(conv1d(ln(h, f"h.{i}.ln_2"), f"h.{i}.mlp.c_fc")), f"h.{i}.mlp.c_proj")
    return ln(h, "ln_f")


@pytest.mark.parametrize("options,activation", [
    ({}, "relu"),  # DT's: the defaults
    ({"n_heads": 2}, "relu"),
    ({"position_embedding": True, "activation": "gelu", "init": "gpt2"}, "gelu"),  # the variations
], ids=["dt", "dt-2-heads", "wpe-gelu"])
def test_outputs_equal_dt_gpt2(options, activation):
    model = make(**options)
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    want = reference_gpt2(gpt2_state_dict(model), x, model.n_layers, model.n_heads, activation)
    with torch.no_grad():
        y, state = model(x)
        steps = []
        for t in range(12):  # the cached-window step path, too
            s, state = (model.step(x[:, t], state if t else model.initial_state(2)))
            steps.append(s)
    torch.testing.assert_close(y, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.stack(steps, dim=1), want, atol=1e-12, rtol=0)


def test_short_window_equals_dt_left_padded_window():
    """DT acts on a short history by left-padding it to K steps and masking the padding; rlmin runs the real
    tokens only (right padding, which causality ignores). With DT's model the outputs are the same."""
    model = make()
    K, n = 10, 4
    x = torch.randn(2, n, 16, dtype=torch.float64)
    padded = torch.cat([torch.randn(2, K - n, 16, dtype=torch.float64), x], dim=1)  # any padding values
    mask = torch.cat([torch.zeros(2, K - n), torch.ones(2, n)], dim=1)
    want = reference_gpt2(gpt2_state_dict(model), padded, model.n_layers, 1, "relu", attention_mask=mask)
    with torch.no_grad():
        y, _ = model(x)
    torch.testing.assert_close(y, want[:, K - n:], atol=1e-12, rtol=0)


@pytest.mark.parametrize("position_embedding", [False, True])
def test_no_absolute_position_unless_asked(position_embedding):
    """Without a position embedding (DT's) one attention layer sees the earlier tokens as a set: shuffling
    them leaves the last token's output unchanged. With one, it changes. (One layer: in a second, the earlier
    tokens' own outputs depend on their own prefixes.)"""
    model = make(n_layers=1, position_embedding=position_embedding)
    assert (model.pos is not None) == position_embedding
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    shuffled = torch.cat([x[:, torch.randperm(11, generator=torch.Generator().manual_seed(0))], x[:, 11:]], dim=1)
    with torch.no_grad():
        last, last_shuffled = model(x)[0][:, -1], model(shuffled)[0][:, -1]
    assert torch.allclose(last, last_shuffled, atol=1e-12, rtol=0) == (not position_embedding)


def test_inputs_are_dropped_only_if_asked():
    """DT drops its inputs once (GPT-2's `drop`), and in rlmin the agent's embedding dropout is that one: the
    transformer's own input dropout is 0 by default, so with dropout=0 training is deterministic."""
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    model = make()
    assert model.drop.p == 0.0
    with torch.no_grad():
        y_eval = model(x)[0]
        y_train = model.train()(x)[0]
        torch.testing.assert_close(y_train, y_eval, atol=0, rtol=0)
        noisy = make(input_dropout=0.5).train()
        assert not torch.allclose(noisy(x)[0], y_eval)
    # GPT-2's other dropouts, at `dropout`: attention weights, and the end of both residual branches
    dt = build_backbone("transformer", 16, 3, dropout=0.1)
    for block in dt.blocks:
        assert block.attn.dropout == 0.1 and block.attn.resid_drop.p == 0.1 and block.mlp[3].p == 0.1


def test_mlp_is_4d_with_the_activation_asked():
    for activation, cls in (("relu", torch.nn.ReLU), ("gelu", torch.nn.GELU)):
        mlp = build_backbone("transformer", 16, 1, activation=activation).blocks[0].mlp
        assert isinstance(mlp[1], cls) and mlp[0].out_features == 64  # DT's n_inner = 4 * d


@pytest.mark.parametrize("init", ["dt", "gpt2", "torch"])
def test_init(init):
    """dt: DT's _init_weights, N(0, 0.02) for every Linear weight, zero biases, LayerNorms 1/0;
    gpt2: the residual projections (c_proj) at 0.02 / sqrt(2 n_layers); torch: PyTorch's default."""
    d, L = 256, 4
    torch.manual_seed(0)
    model = build_backbone("transformer", d, L, init=init)
    for block in model.blocks:
        for lin in (block.attn.qkv, block.attn.out, block.mlp[0], block.mlp[2]):
            residual = lin is block.attn.out or lin is block.mlp[2]
            want = {"dt": 0.02, "gpt2": 0.02 / math.sqrt(2 * L) if residual else 0.02,
                    "torch": 1 / math.sqrt(3 * lin.in_features)}[init]  # kaiming_uniform(a=sqrt 5): U(+-1/sqrt(fan_in))
            assert abs(lin.weight.std().item() / want - 1) < 0.03, (init, lin, lin.weight.std().item(), want)
            assert abs(lin.weight.mean().item()) < 0.002
            assert (lin.bias.abs().max().item() == 0) == (init != "torch")
        for norm in (block.ln1, block.ln2):
            assert bool((norm.weight == 1).all() and (norm.bias == 0).all())


def test_the_yaml_is_dt():
    """configs/backbones/transformer.yaml builds DT's model: every DT choice spelled out, equal to the defaults."""
    cfg = yaml.safe_load((ROOT / "configs/backbones/transformer.yaml").read_text())["agent"]
    opts = cfg["backbone_options"]
    assert opts == {"n_heads": 1, "position_embedding": False, "input_dropout": 0.0, "activation": "relu",
                    "init": "dt"}
    assert cfg["d_model"] == 128 and cfg["n_layers"] == 3 and cfg["dropout"] == 0.1  # DT's gym defaults
    model = build_backbone("transformer", cfg["d_model"], cfg["n_layers"], dropout=cfg["dropout"], **opts)
    assert model.pos is None and model.drop.p == 0.0
    assert isinstance(model.blocks[0].mlp[1], torch.nn.ReLU)
