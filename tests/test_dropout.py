"""FastDropout (train.fast_dropout) against nn.Dropout's contract: the drop rate, the scale of the
kept values, the same mask in the backward, unbiased lanes, identity at evaluation, and a swap
that leaves the model's weights and evaluation outputs alone."""
import json

import pytest
import torch
from torch import nn

from rlmin.nn.dropout import FastDropout, drop_threshold, use_fast_dropout
from rlmin.train import train

N = 1 << 20


def _sigma(p: float, n: int) -> float:
    return (p * (1 - p) / n) ** 0.5


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_rate_and_scale_match_nn_dropout(p):
    torch.manual_seed(0)
    x = torch.rand(N) + 1.0  # no zeros of its own
    out = FastDropout(p).train()(x)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - p) < 5 * _sigma(p, N)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / (1 - p), rtol=1e-5, atol=0)
    assert abs(out.mean().item() - x.mean().item()) < 0.01  # nn.Dropout's expectation


def test_every_lane_of_a_draw_drops_at_the_same_rate():
    # Four 16-bit lanes come from one 64-bit draw; a draw that leaves the sign bit 0 (random_()
    # alone) would make every 4th element never drop at p = 0.5.
    torch.manual_seed(1)
    out = FastDropout(0.5).train()(torch.ones(N))
    for lane in range(4):
        rate = (out[lane::4] == 0).float().mean().item()
        assert abs(rate - 0.5) < 5 * _sigma(0.5, N // 4), f"lane {lane} drops {rate:.3f}"


def test_backward_uses_the_forward_mask():
    torch.manual_seed(2)
    x = (torch.rand(64, 60, 128, dtype=torch.float64) + 1.0).requires_grad_()
    out = FastDropout(0.1).train()(x)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad * x.detach(), out.detach())  # grad = keep * scale, same mask

    def seeded(t):  # one mask for every call gradcheck makes
        torch.manual_seed(3)
        return FastDropout(0.3).train()(t)

    assert torch.autograd.gradcheck(seeded, (torch.rand(40, dtype=torch.float64, requires_grad=True),))


def test_seeded_masks_repeat_and_differ_between_calls():
    layer = FastDropout(0.1).train()
    torch.manual_seed(4)
    a, b = layer(torch.ones(1000)), layer(torch.ones(1000))
    torch.manual_seed(4)
    assert torch.equal(layer(torch.ones(1000)), a)
    assert not torch.equal(a, b)


def test_identity_at_evaluation_and_the_edge_probabilities():
    x = torch.randn(3, 5)
    assert torch.equal(FastDropout(0.5).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))
    assert drop_threshold(0.1) == 6554  # 0.1 * 2^16, rounded
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        FastDropout(1.5)


def test_swap_reaches_every_dropout_and_changes_no_weight_or_eval_output(tiny_config):
    from rlmin.config import agent_class, agent_options
    from rlmin.data.resolve import load_dataset_for
    cfg = tiny_config(None, "agent.dropout=0.1")
    data = load_dataset_for(cfg.data)
    agent = agent_class(cfg)(data.agent_spec(cfg.data.seq_len), agent_options(cfg))
    n_dropout = sum(type(m) is nn.Dropout for m in agent.modules())
    assert n_dropout > 0
    batch = {k: torch.as_tensor(v) for k, v in data.sampler(cfg.data, 4, seed=0).sample().items()}
    before_keys = set(agent.state_dict())
    agent.eval()
    with torch.no_grad():
        loss_before = agent.loss(batch)[0]
    assert use_fast_dropout(agent) == n_dropout
    assert not any(type(m) is nn.Dropout for m in agent.modules())
    assert sum(type(m) is FastDropout for m in agent.modules()) == n_dropout
    assert set(agent.state_dict()) == before_keys
    with torch.no_grad():
        assert torch.equal(agent.loss(batch)[0], loss_before)


def test_trainer_option_trains_with_other_masks(tmp_path, tiny_config):
    def losses(run):
        rows = (run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(r)["loss"] for r in rows if json.loads(r)["kind"] == "train"]

    fast, plain = tmp_path / "fast", tmp_path / "plain"
    train(tiny_config(fast, "agent.dropout=0.1", "train.fast_dropout=true"))
    train(tiny_config(plain, "agent.dropout=0.1"))
    assert losses(fast) != losses(plain), "train.fast_dropout=true changed nothing"
    assert losses(fast) == pytest.approx(losses(plain), rel=0.2)  # the same model, other masks
