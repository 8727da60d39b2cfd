"""The backbone contract (rlmin.nn): forward == T steps == chunked forward, state layout, resets,
minGRU/minLSTM parameter counts and numerical positivity, the log path, and clear errors."""
from __future__ import annotations

import pytest
import torch

from rlmin.nn import BACKBONES, MinGRU, MinLSTM, backbone_options, build_backbone, reset_rows

NAMES = ["mingru", "minlstm", "transformer", "gru", "lstm"]
# The minRNN stacks once more with every option that touches the state.
VARIANTS = [(n, {}) for n in NAMES] + [
    ("mingru", {"conv_kernel": 4, "learn_h0": True, "expansion": 2, "norm": "rmsnorm"}),
    ("minlstm", {"conv_kernel": 3, "learn_h0": True}),
    ("mingru", {"conv_kernel": 1}),
    ("mingru", {"conv_kernel": 4, "conv_layout": "official", "learn_h0": True, "norm": "rmsnorm"}),
    ("minlstm", {"conv_kernel": 3, "conv_layout": "official"}),
    ("mingru", {"conv_kernel": 1, "conv_layout": "official"}),
    ("transformer", {"position_embedding": True, "activation": "gelu", "init": "gpt2", "n_heads": 2}),
]
IDS = [n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in VARIANTS]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(name, d_model, n_layers=2, dtype=torch.float64, context=None, **options):
    torch.manual_seed(0)
    options = {"dropout": 0.0, **options}
    if name == "transformer" and context is not None:
        options["context"] = context
    model = build_backbone(name, d_model, n_layers, **options).to(dtype).eval()
    if options.get("learn_h0"):  # move the learnable h0 off its init so it matters
        with torch.no_grad():
            for block in model.blocks:
                block.h0_param.normal_()
    return model


def run_steps(model, x, state=None):
    state = model.initial_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def assert_states_close(s1, s2, atol):
    assert len(s1) == len(s2)
    for a, b in zip(s1, s2):
        assert a.shape == b.shape
        torch.testing.assert_close(a.to(b.dtype), b, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype,d_model,T,atol", [(torch.float64, 16, 300, 1e-10), (torch.float32, 64, 64, 1e-5)],
                         ids=["f64-d16-T300", "f32-d64-T64"])
@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_forward_equals_steps(name, options, dtype, d_model, T, atol):
    if name == "transformer":
        T = min(T, 120)  # each step re-runs the whole window: O(T^2) steps of work
    model = make(name, d_model, dtype=dtype, context=T, **options)
    x = torch.randn(3, T, d_model, dtype=dtype)
    with torch.no_grad():
        y, state = model(x)
        ys, state_steps = run_steps(model, x)
    assert y.shape == (3, T, d_model)
    torch.testing.assert_close(ys, y, atol=atol, rtol=0)
    assert_states_close(state_steps, state, atol)


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_chunked_forward_equals_one_forward(name, options):
    T, d = 300, 24
    model = make(name, d, context=T, **options)
    x = torch.randn(2, T, d, dtype=torch.float64)
    with torch.no_grad():
        y, state = model(x)
        ys, s = [], None
        for a, b in [(0, 37), (37, 38), (38, 150), (150, 300)]:  # uneven, with a length-1 chunk
            yc, s = model(x[:, a:b], s)
            ys.append(yc)
        # an explicit initial_state is the same as state=None
        y0, _ = model(x[:, :37], model.initial_state(2))
    torch.testing.assert_close(torch.cat(ys, dim=1), y, atol=1e-10, rtol=0)
    torch.testing.assert_close(y0, y[:, :37], atol=1e-10, rtol=0)
    assert_states_close(s, state, 1e-10)


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_state_layout_and_row_reset(name, options):
    """Every state tensor has the batch as dim 0; resetting one row restarts that row only."""
    B, T, k, d = 3, 20, 8, 16
    model = make(name, d, **options)
    assert model.recurrent == (name != "transformer")
    x = torch.randn(B, T, d, dtype=torch.float64)
    with torch.no_grad():
        for s in model.initial_state(B):
            assert s.shape[0] == B
        y_all, _ = run_steps(model, x)
        _, state = run_steps(model, x[:, :k])
        for s in state:
            assert s.shape[0] == B
        mask = torch.tensor([False, True, False])
        state = reset_rows(state, mask, model.initial_state(B))
        y_tail, _ = run_steps(model, x[:, k:], state)
        y_fresh, _ = run_steps(model, x[1:2, k:])
    torch.testing.assert_close(y_tail[1:2], y_fresh, atol=1e-10, rtol=0)
    torch.testing.assert_close(y_tail[[0, 2]], y_all[[0, 2], k:], atol=1e-10, rtol=0)


def test_transformer_slides_past_its_context():
    C, d = 10, 16
    model = make("transformer", d, context=C, n_heads=2)
    assert model.context == C
    x = torch.randn(2, 25, d, dtype=torch.float64)
    with torch.no_grad():
        ys, _ = run_steps(model, x)
        for t in (C - 1, C, 17, 24):  # each step sees the last C inputs, positions from 0
            window, _ = model(x[:, max(0, t - C + 1):t + 1])
            torch.testing.assert_close(ys[:, t], window[:, -1], atol=1e-10, rtol=0)


@pytest.mark.parametrize("d_in,d_hidden", [(1, 1), (16, 24), (7, 64)])
def test_layer_parameter_counts(d_in, d_hidden):
    assert sum(p.numel() for p in MinGRU(d_in, d_hidden).parameters()) == 2 * d_hidden * (d_in + 1)
    assert sum(p.numel() for p in MinLSTM(d_in, d_hidden).parameters()) == 3 * d_hidden * (d_in + 1)


# step vs forward at T=4096 in float32: the linear scan does the step's arithmetic (measured: 0 apart);
# the log-space path exponentiates sums of thousands of logs (measured: 2e-3 apart).
@pytest.mark.parametrize("scan_impl,rtol", [("auto", 1e-6), ("log", 1e-2)])
@pytest.mark.parametrize("layer_cls,n_gates", [(MinGRU, 2), (MinLSTM, 3)])
def test_state_stays_positive_and_finite_at_extreme_preactivations(layer_cls, n_gates, scan_impl, rtol):
    """T=4096, every pre-activation +-30 (a random sign per step and unit), h0 > 0, float32."""
    torch.manual_seed(0)
    B, T, H = 2, 4096, 8
    layer = layer_cls(n_gates * H, H, scan_impl=scan_impl)
    with torch.no_grad():  # pre-activation j = 30 * x[..., j]
        layer.linear.weight.copy_(30.0 * torch.eye(n_gates * H))
        layer.linear.bias.zero_()
    x = torch.randint(0, 2, (B, T, n_gates * H)).float() * 2 - 1
    h0 = torch.tensor([[1e-3], [5.0]]).expand(B, H).clone().requires_grad_()
    h, h_last = layer(x, h0)
    assert torch.isfinite(h).all() and (h > 0).all()
    h.log().sum().backward()
    assert torch.isfinite(h0.grad).all() and torch.isfinite(layer.linear.weight.grad).all()
    with torch.no_grad():
        hs = h0.detach()
        for t in range(T):
            hs = layer.step(x[:, t], hs)
            assert (hs > 0).all() and torch.isfinite(hs).all()
        torch.testing.assert_close(hs, h_last.detach(), rtol=rtol, atol=0)


@pytest.mark.parametrize("layer_cls", [MinGRU, MinLSTM])
def test_log_scan_matches_linear_scan_layer(layer_cls):
    torch.manual_seed(0)
    x = torch.randn(3, 200, 12, dtype=torch.float64)
    h0 = torch.rand(3, 20, dtype=torch.float64)
    lin, log = layer_cls(12, 20), layer_cls(12, 20, scan_impl="log")
    log.load_state_dict(lin.state_dict())
    lin, log = lin.double(), log.double()
    for h0_ in (None, h0, torch.zeros_like(h0)):
        torch.testing.assert_close(log(x, h0_)[0], lin(x, h0_)[0], atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("options", [{}, {"conv_kernel": 4, "learn_h0": True}], ids=["plain", "conv-h0"])
@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_log_scan_matches_default_backbone(name, options):
    x = torch.randn(2, 150, 32, dtype=torch.float64)
    outs = []
    for impl in ("auto", "log", "reference"):
        model = make(name, 32, scan_impl=impl, **options)
        y, s = model(x[:, :70])
        y2, _ = model(x[:, 70:], s)
        outs.append(torch.cat([y, y2], dim=1))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-9, rtol=0)
    torch.testing.assert_close(outs[2], outs[0], atol=1e-9, rtol=0)
    # float32 too, at a float32 tolerance
    m32 = make(name, 32, dtype=torch.float32, **options)
    l32 = make(name, 32, dtype=torch.float32, scan_impl="log", **options)
    torch.testing.assert_close(l32(x.float())[0], m32(x.float())[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layer_cls", [MinGRU, MinLSTM])
def test_log_scan_gradient_at_zero_h0(layer_cls):
    """A fresh state (h0 = 0) gets its true gradient on the log path (it used to be clamped to `tiny`: 0)."""
    torch.manual_seed(0)
    log, ref = layer_cls(6, 5, scan_impl="log").double(), layer_cls(6, 5, scan_impl="reference").double()
    ref.load_state_dict(log.state_dict())
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    for h0 in (torch.zeros(2, 5, dtype=torch.float64), -torch.rand(2, 5, dtype=torch.float64)):  # any sign
        assert torch.autograd.gradcheck(lambda h0: log(x, h0)[0], (h0.clone().requires_grad_(),))
        grads = []
        for layer in (log, ref):
            h0r = h0.clone().requires_grad_()
            layer(x, h0r)[0].sum().backward()
            grads.append(h0r.grad)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
        assert grads[0].abs().min() > 0


LAYER_PATHS = ["auto", "sequential", "reference", "log", "triton"]


@pytest.mark.parametrize("scan_impl", LAYER_PATHS)
@pytest.mark.parametrize("layer_cls", [MinGRU, MinLSTM])
def test_every_layer_path_checks_inputs_the_same_way(layer_cls, scan_impl):
    """The fused CPU path used to broadcast an h0 of shape [1, H] (the others raised) and fail on T=0 with an
    IndexError: every path now raises the same ValueError, before any scan runs (triton included, on CPU)."""
    layer = layer_cls(4, 3, scan_impl=scan_impl)
    x = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match=r"h0 must be \[B, d_hidden\] = \(2, 3\) \(no broadcasting\); got shape \(1,"):
        layer(x, torch.rand(1, 3))
    with pytest.raises(ValueError, match=r"h0 must be .*got shape \(2, 4\)"):
        layer(x, torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"x must be \[B, T, 4\] with T >= 1; got shape \(2, 0, 4\)"):
        layer(x[:, :0])
    with pytest.raises(ValueError, match=r"x must be \[B, T, 4\] with T >= 1; got shape \(2, 5, 3\)"):
        layer(x[..., :3])
    with pytest.raises(ValueError, match=r"x must be \[B, T, 4\] with T >= 1; got shape \(5, 4\)"):
        layer(x[0])
    with pytest.raises(ValueError, match=r"h must be \[B, d_hidden\] = \(2, 3\) \(no broadcasting\)"):
        layer.step(x[:, 0], torch.rand(1, 3))


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
@pytest.mark.parametrize("options", [{}, {"conv_kernel": 3}, {"conv_kernel": 3, "conv_layout": "official"}],
                         ids=["plain", "conv-branch", "conv-official"])
def test_minrnn_backbone_refuses_empty_sequences(name, options):
    model = make(name, 8, **options)
    with pytest.raises(ValueError, match=r"x must be \[B, T, 8\] with T >= 1; got shape \(2, 0, 8\)"):
        model(torch.randn(2, 0, 8, dtype=torch.float64))


def _official_conv(block, x):
    """lucidrains' / BorealisAI's CausalDepthWiseConv1d, written from their code: pad k-1 zeros on the left,
    depthwise Conv1d(k, groups=d), then pointwise Conv1d(1)."""
    import torch.nn.functional as F

    conv = block.conv
    y = F.conv1d(F.pad(x.transpose(1, 2), (conv.kernel - 1, 0)), conv.conv.weight, conv.conv.bias,
                 groups=x.shape[-1])
    y = F.conv1d(y, conv.pointwise.weight.unsqueeze(-1), conv.pointwise.bias)  # 1x1 conv = the Linear's weights
    return y.transpose(1, 2)


@pytest.mark.parametrize("layout", ["branch", "official"])
def test_conv_layouts_are_the_blocks_they_say(layout):
    """One block written out by hand: official = x + conv(x) before norm1 (depthwise then pointwise, as the
    official code); branch = a depthwise conv on norm1(x) inside the minRNN branch, no residual of its own."""
    import torch.nn.functional as F

    model = make("mingru", 12, n_layers=1, conv_kernel=3, conv_layout=layout)
    block = model.blocks[0]
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    with torch.no_grad():
        if layout == "official":
            x1 = x + _official_conv(block, x)
            u = block.norm1(x1)
        else:
            x1 = x
            c = block.conv.conv
            u = F.conv1d(F.pad(block.norm1(x).transpose(1, 2), (2, 0)), c.weight, c.bias, groups=12).transpose(1, 2)
            assert block.conv.pointwise is None
        h, _ = block.rnn(u)
        x2 = x1 + block.proj(h)
        want = model.norm(x2 + block.mlp(block.norm2(x2)))
        got, _ = model(x)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name,options", [("mingru", {}), ("minlstm", {}), ("mingru", {"scan_impl": "log"}),
                                          ("mingru", {"conv_kernel": 3, "conv_layout": "official",
                                                      "learn_h0": True}),
                                          ("transformer", {}), ("gru", {}), ("lstm", {})],
                         ids=["mingru", "minlstm", "mingru-log", "mingru-conv-official-h0", "transformer", "gru",
                              "lstm"])
def test_model_cast_to_bf16_matches_float32(name, options):
    """A backbone cast with .to(torch.bfloat16) (not autocast) runs forward and step, and its values are the
    float32 model's to bf16 accuracy (a few bf16 roundings of the output's scale), not only finite."""
    import copy

    model = make(name, 32, dtype=torch.float32, **options)
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    x = torch.randn(3, 40, 32)
    with torch.no_grad():
        want, _ = model(x)
        got, state = m16(x.bfloat16())
        steps, _ = run_steps(m16, x.bfloat16())
    assert got.dtype == torch.bfloat16 and steps.dtype == torch.bfloat16
    tol = 4 * 2**-8 * want.abs().max().item()  # measured: about 2 bf16 roundings of max|y|
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=0)
    torch.testing.assert_close(steps.float(), want, atol=tol, rtol=0)
    if name in ("mingru", "minlstm"):  # the state is kept as the scan computes it, in float32
        assert state[0].dtype == torch.float32 and m16.initial_state(3)[0].dtype == torch.float32


def test_learned_h0_gets_gradients():
    model = make("mingru", 16, learn_h0=True)
    y, _ = model(torch.randn(2, 10, 16, dtype=torch.float64))
    y.square().sum().backward()
    for block in model.blocks:
        assert block.h0_param.grad is not None and block.h0_param.grad.abs().sum() > 0


def test_options_have_defaults():
    for name in NAMES:
        opts = backbone_options(name)
        assert build_backbone(name, 8, 1, **opts) is not None
    assert set(BACKBONES) == set(NAMES)
    # dropout and context are left to the owning agent (None); alone, DT's 0.1 and 60
    assert backbone_options("transformer") == {"n_heads": 1, "dropout": None, "context": None,
                                               "position_embedding": False, "input_dropout": 0.0,
                                               "activation": "relu", "init": "dt"}
    alone = build_backbone("transformer", 8, 1)
    assert alone.context == 60 and alone.blocks[0].attn.dropout == 0.1


def test_options_are_typed_dataclasses():
    from rlmin.nn import MinGRUBackbone

    options = MinGRUBackbone.Options(expansion=2.0, scan_impl="reference")
    model = MinGRUBackbone(8, 1, options)
    assert model.d_hidden == 16 and model.scan_impl == "reference" and model.options is options
    with pytest.raises(TypeError):
        MinGRUBackbone.Options(heads=2)  # a dataclass: no silent **kwargs
    with pytest.raises(ValueError, match="expansion must be a positive number"):
        MinGRUBackbone.Options(expansion=0)  # checked once, where the options are made
    with pytest.raises(TypeError, match="MinGRUBackbone.Options"):
        MinGRUBackbone(8, 1, {"expansion": 2.0})  # a mapping goes through build_backbone
    assert build_backbone("mingru", 8, 1, {"expansion": 2.0}).d_hidden == 16


@pytest.mark.parametrize("call,match", [
    (lambda: build_backbone("mamba", 16, 2), r"unknown backbone 'mamba'.*mingru, minlstm, transformer, gru, lstm"),
    (lambda: build_backbone("mingru", 16, 2, heads=2),
     r"\['heads'\] is not an option of backbone 'mingru'.*expansion.*conv_kernel"),
    (lambda: build_backbone("gru", 16, 2, expansion=2), r"\['expansion'\] is not an option of backbone 'gru'.*dropout"),
    (lambda: build_backbone("transformer", 16, 2, conv_kernel=3), r"\['conv_kernel'\] is not an option.*n_heads"),
    (lambda: build_backbone("mingru", 0, 2), r"d_model must be a positive integer; got 0"),
    (lambda: build_backbone("lstm", 16, -1), r"n_layers must be a positive integer; got -1"),
    (lambda: build_backbone("transformer", 16, 0), r"n_layers must be a positive integer"),
    (lambda: build_backbone("mingru", 16.0, 2), r"d_model must be a positive integer"),
    (lambda: build_backbone("mingru", 16, 1, dropout=1.5), r"dropout must be a number in \[0, 1\)"),
    (lambda: build_backbone("mingru", 16, 1, scan_impl="fast"), r"scan_impl must be one of auto, reference, log"),
    (lambda: build_backbone("minlstm", 16, 1, norm="batchnorm"), r"norm must be one of layernorm, rmsnorm"),
    (lambda: build_backbone("mingru", 16, 1, expansion=0), r"expansion must be a positive number"),
    (lambda: build_backbone("mingru", 16, 1, conv_kernel=-1), r"conv_kernel must be an integer >= 0"),
    (lambda: build_backbone("mingru", 16, 1, conv_layout="lucid"), r"conv_layout must be one of branch, official"),
    (lambda: build_backbone("transformer", 16, 1, activation="tanh"), r"activation must be one of gelu, relu"),
    (lambda: build_backbone("transformer", 16, 1, init="xavier"), r"init must be one of dt, gpt2, torch"),
    (lambda: build_backbone("transformer", 16, 1, position_embedding=1), r"position_embedding must be True or"),
    (lambda: build_backbone("transformer", 16, 1, input_dropout=1.0), r"dropout must be a number in \[0, 1\)"),
    (lambda: build_backbone("transformer", 16, 1, n_heads=3), r"n_heads must divide d_model"),
    (lambda: build_backbone("transformer", 16, 1, context=0), r"context must be a positive integer"),
    (lambda: MinGRU(0, 4), r"d_in must be a positive integer"),
])
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_transformer_refuses_sequences_longer_than_its_context():
    model = make("transformer", 16, context=8)
    with pytest.raises(ValueError, match="longer than the transformer's context 8.*sliding window"):
        model(torch.randn(1, 9, 16, dtype=torch.float64))
    _, state = model(torch.randn(1, 6, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="exceeds the context 8"):
        model(torch.randn(1, 3, 16, dtype=torch.float64), state)


def test_wrong_state_is_refused():
    model = make("mingru", 16, conv_kernel=3)
    with pytest.raises(ValueError, match=r"state must be a tuple of 4 tensors"):
        model(torch.randn(1, 4, 16, dtype=torch.float64), model.initial_state(1)[:2])


@pytest.mark.parametrize("name", NAMES)
def test_runs_under_bf16_autocast(name):
    model = make(name, 16, dtype=torch.float32)
    x = torch.randn(2, 12, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = model(x)
        y2, _ = model.step(x[:, 0], model.initial_state(2))
    y.float().square().mean().backward()
    assert torch.isfinite(y.float()).all() and torch.isfinite(y2.float()).all()
    if name in ("mingru", "minlstm"):  # the gates and the scan run in float32 under autocast
        assert all(s.dtype == torch.float32 for s in state)


@pytest.mark.parametrize("lstm", [False, True], ids=["mingru", "minlstm"])
def test_fused_scan_coefficients_match_composed_ops_and_gradcheck(lstm):
    import torch.nn.functional as F

    from rlmin.nn.fused import scan_coefficients
    from rlmin.nn.mingru import g

    torch.manual_seed(0)
    n = 3 if lstm else 2
    p = (3 * torch.randn(2, 5, n * 4, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: scan_coefficients(p, lstm), (p,))
    if lstm:
        f, i, c = p.chunk(3, dim=-1)
        x = F.softplus(-f) - F.softplus(-i)
    else:
        x, c = p.chunk(2, dim=-1)
    a, b = scan_coefficients(p, lstm)
    torch.testing.assert_close(a, torch.sigmoid(-x), atol=1e-15, rtol=1e-12)
    torch.testing.assert_close(b, torch.sigmoid(x) * g(c), atol=1e-15, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# The CPU-fast layer path (rlmin.nn.fused: oneDNN linear + fused gates/scan) against plain torch
# ---------------------------------------------------------------------------------------------


def _g_plain(x):
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def _plain_layer(layer, x, h0):
    """The minGRU / minLSTM layer written plainly: F.linear, the gates as the paper writes them, scan_reference."""
    import torch.nn.functional as F

    from rlmin.nn.scan import scan_reference

    p = F.linear(x, layer.linear.weight, layer.linear.bias)
    if isinstance(layer, MinLSTM):
        f, i, c = p.chunk(3, dim=-1)
        f, i = torch.sigmoid(f), torch.sigmoid(i)
        a, z = f / (f + i), i / (f + i)
    else:
        k, c = p.chunk(2, dim=-1)
        a, z = torch.sigmoid(-k), torch.sigmoid(k)
    return scan_reference(a, z * _g_plain(c), h0)


def _layer_value_and_grads(fn, layer, x, h0, w):
    x = x.clone().requires_grad_()
    h0 = None if h0 is None else h0.clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    h = fn(x, h0)
    (h * w).sum().backward()
    out = [h.detach(), x.grad, layer.linear.weight.grad, layer.linear.bias.grad]
    return out + ([] if h0 is None else [h0.grad])


@pytest.mark.parametrize("dtype,B,T,tol", [(torch.float64, 3, 1, 1e-12), (torch.float64, 3, 150, 1e-12),
                                           (torch.float32, 8, 300, 2e-5)], ids=["f64-T1", "f64-T150", "f32-T300"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["h0=None", "h0"])
@pytest.mark.parametrize("layer_cls", [MinGRU, MinLSTM])
def test_fused_layer_matches_plain_torch_layer(layer_cls, with_h0, dtype, B, T, tol):
    """Value and every gradient (x, W, bias, h0) of the default CPU path against the plainly written layer;
    float32 with B*T >= 1024 goes through the oneDNN linear; T=150/300 crosses several scan chunks."""
    from rlmin.nn.fused import fused_scan_ok

    torch.manual_seed(0)
    layer = layer_cls(12, 20).to(dtype)
    x = 2 * torch.randn(B, T, 12, dtype=dtype)
    h0 = torch.rand(B, 20, dtype=dtype) if with_h0 else None
    w = torch.randn(B, T, 20, dtype=dtype)
    assert fused_scan_ok(x, h0, layer.scan_impl)
    got = _layer_value_and_grads(lambda x, h0: layer(x, h0)[0], layer, x, h0, w)
    want = _layer_value_and_grads(lambda x, h0: _plain_layer(layer, x, h0), layer, x, h0, w)
    for name, a, b in zip(("h", "x", "weight", "bias", "h0"), got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item(),
                                   msg=lambda m, name=name: f"{name}: {m}")
    with torch.no_grad():  # step mode == forward
        hs = torch.zeros(B, 20, dtype=dtype) if h0 is None else h0
        for t in range(T):
            hs = layer.step(x[:, t], hs)
        torch.testing.assert_close(hs, got[0][:, -1], rtol=tol, atol=tol)


@pytest.mark.parametrize("with_h0", [False, True], ids=["h0=None", "h0"])
@pytest.mark.parametrize("lstm", [False, True], ids=["mingru", "minlstm"])
def test_fused_layer_scan_gradcheck_across_chunks(lstm, with_h0, monkeypatch):
    import rlmin.nn.fused as fused

    monkeypatch.setattr(fused, "_CHUNK", 3)  # T=8: chunks of 3, 3, 2
    torch.manual_seed(0)
    n = 3 if lstm else 2
    p = (3 * torch.randn(2, 8, n * 4, dtype=torch.float64)).requires_grad_()
    h0 = torch.rand(2, 4, dtype=torch.float64).requires_grad_() if with_h0 else None
    args = (p,) if h0 is None else (p, h0)
    assert torch.autograd.gradcheck(lambda p, h0=None: fused.layer_scan(p, h0, lstm), args)


def test_fused_g_derivative_at_zero_is_one():
    """g'(0) = 1 (the x >= 0 branch), as autograd through the paper's where-based g gives."""
    from rlmin.nn.fused import layer_scan

    p = torch.zeros(1, 2, 4, dtype=torch.float64)
    p[..., :2] = torch.tensor([0.3, -1.2], dtype=torch.float64)  # gates; candidates exactly 0
    p1 = p.clone().requires_grad_()
    layer_scan(p1, None, False).sum().backward()
    p2 = p.clone().requires_grad_()
    k, c = p2.chunk(2, dim=-1)
    from rlmin.nn.scan import scan_reference

    scan_reference(torch.sigmoid(-k), torch.sigmoid(k) * _g_plain(c)).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-12, atol=1e-15)


def test_cpu_linear_matches_torch_linear():
    import torch.nn.functional as F

    import rlmin.nn.fused as fused

    if not fused._ONEDNN:
        pytest.skip("torch built without oneDNN")
    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 40)
    x = torch.randn(4, 700, 24)  # 2800 rows: several row blocks of the weight-gradient GEMM, one ragged
    dy = torch.randn(4, 700, 40)
    outs = []
    for fn in (lambda x: fused.cpu_linear(x, lin.weight, lin.bias), lambda x: F.linear(x, lin.weight, lin.bias)):
        xr = x.clone().requires_grad_()
        lin.zero_grad(set_to_none=True)
        y = fn(xr)
        y.backward(dy)
        outs.append((y.detach(), xr.grad, lin.weight.grad, lin.bias.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_cpu_linear_switch_gives_same_layer(monkeypatch):
    import rlmin.nn.fused as fused

    torch.manual_seed(0)
    layer = MinGRU(16, 16)
    x = torch.randn(4, 600, 16)
    h_onednn = layer(x)[0]
    monkeypatch.setattr(fused, "CPU_LINEAR", "torch")
    torch.testing.assert_close(layer(x)[0], h_onednn, rtol=1e-5, atol=1e-6)


def test_tune_cpu_allocator_is_idempotent_and_says_whether_it_applied():
    import platform
    import subprocess
    import sys

    code = "from rlmin.cpu import tune_cpu_allocator as t; a = t(); b = t(); print(a, b)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.split()
    assert first == second
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first == "True"


@pytest.mark.parametrize("name,options", [("mingru", {}), ("minlstm", {"conv_kernel": 3, "learn_h0": True}),
                                          ("mingru", {"conv_kernel": 2, "conv_layout": "official"}),
                                          ("gru", {}), ("lstm", {})],
                         ids=["mingru", "minlstm-conv-h0", "mingru-official", "gru", "lstm"])
def test_last_output_only_is_the_full_forwards_last_valid_row(name, options):
    """``last=True`` (what acting reads; the minRNN stacks skip the last block's other positions) gives
    y at each row's lengths - 1 (T - 1 without lengths) and the same state as the full forward."""
    model = make(name, 8, n_layers=3, **options)
    x = torch.randn(4, 5, 8, dtype=torch.float64)
    state = model(torch.randn(4, 2, 8, dtype=torch.float64))[1]  # a carried, non-initial state
    lengths = torch.tensor([5, 2, 1, 4])
    for lens in (None, lengths):
        y, s = model(x, state, lengths=lens)
        y_last, s_last = model(x, state, lengths=lens, last=True)
        at = torch.full((4,), 4) if lens is None else lens - 1
        torch.testing.assert_close(y_last, y[torch.arange(4), at], rtol=0, atol=1e-12)
        for a, b in zip(s_last, s):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
