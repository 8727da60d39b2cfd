"""The evaluation protocol's levers: the learning-rate decay, the weight average (EMA), targets as
normalised scores, whole-episode batches sized in timesteps, and what a run records of itself."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import TINY_REF

from rlmin.checkpoint import list_checkpoints, load_checkpoint
from rlmin.config import ConfigError, TrainConfig, load_config
from rlmin.policy import agent_from_payload, export_policy, load_payload
from rlmin.train import WeightAverage, build_scheduler, lr_factor, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- lr schedule

def _lrs(cfg: TrainConfig) -> list[float]:
    """The lr of every optimiser step, read off a real optimiser driven by build_scheduler."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg)
    out = []
    for _ in range(cfg.steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_and_linear_decay_reach_the_floor_after_warmup():
    base = dict(lr=1e-3, steps=110, warmup_steps=10, lr_floor=0.1)
    cos = _lrs(TrainConfig(lr_schedule="cosine", **base))
    lin = _lrs(TrainConfig(lr_schedule="linear", **base))
    const = _lrs(TrainConfig(lr_schedule="constant", **base))
    # Warmup is the same linear ramp for all three: step s (0-based) runs at (s+1)/10 of the lr.
    for lrs in (cos, lin, const):
        assert lrs[:10] == pytest.approx([1e-4 * (s + 1) for s in range(10)])
    # Decay over the 100 steps after warmup: at 10 the full lr, at 60 half way, at 110 the floor.
    assert cos[10] == pytest.approx(1e-3) and lin[10] == pytest.approx(1e-3)
    assert cos[60] == pytest.approx(1e-4 + 9e-4 * 0.5)     # cos(pi/2) = 0: the midpoint
    assert lin[60] == pytest.approx(1e-4 + 9e-4 * 0.5)
    assert cos[35] == pytest.approx(1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lin[35] == pytest.approx(1e-4 + 9e-4 * 0.75)
    assert lr_factor(110, TrainConfig(lr_schedule="cosine", **base)) == pytest.approx(0.1)
    assert lr_factor(500, TrainConfig(lr_schedule="linear", **base)) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(cos[10:], cos[11:])), "cosine must not rise after warmup"
    assert const[10:] == pytest.approx([1e-3] * 100)


def test_an_int_is_still_warmup_then_constant():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, 4)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1, 1])


# ----------------------------------------------------------------------------- the weight average

def test_weight_average_follows_the_ema_recurrence_with_its_warmup():
    net = torch.nn.Linear(2, 1)
    avg = WeightAverage(net, decay=0.9)
    values = [1.0, 3.0, -2.0, 5.0, 0.5, 4.0, 2.0, -1.0, 7.0, 0.0, 3.0, 1.0, 2.0, 6.0]
    expected = None
    for n, v in enumerate(values):
        with torch.no_grad():
            net.weight.fill_(v)
        avg.update()
        # n = 0 copies; afterwards beta_n = min(0.9, (1 + n) / (10 + n)), n updates already averaged.
        expected = v if expected is None else expected + (v - expected) * (
            1 - min(0.9, (1 + n) / (10 + n)))
        got = float(avg.agent.weight[0, 0].detach())
        assert got == pytest.approx(expected, rel=1e-6), f"after update {n}"
    assert got != pytest.approx(values[-1]), "the average must not be the last weights"


def _tiny(tiny_config, run, *extra):
    return tiny_config(run, "train.steps=12", *extra)


def test_ema_run_evaluates_checkpoints_and_exports_the_averaged_weights(tmp_path, tiny_config):
    run = tmp_path / "run"
    train(_tiny(tiny_config, run, "train.ema=0.9"))
    payload = load_checkpoint(list_checkpoints(run)[-1])
    assert {"model", "train_model", "ema"} <= set(payload)
    acting, raw = payload["model"], payload["train_model"]
    differ = [k for k in acting if acting[k].is_floating_point()
              and not torch.equal(acting[k], raw[k])]
    assert differ, "the averaged weights equal the raw ones: no averaging happened"
    assert torch.equal(acting["obs_mean"], raw["obs_mean"]), "buffers are copied, not averaged"
    results = json.loads((run / "results.json").read_text())
    assert results["weights"] == "ema"
    assert set(results["last_iterate_raw"]["targets"]) == set(results["last_iterate"]["targets"])
    assert all("raw_targets" in h for h in results["history"])
    # What acts after training (export, `rlmin eval`) is the average.
    out = export_policy(run, tmp_path / "policy.pt")
    exported = load_checkpoint(out)["model"]
    assert all(torch.equal(exported[k], acting[k]) for k in acting)
    assert agent_from_payload(load_payload(run)[0]).state_dict()["obs_mean"].shape[0] == 11


def test_ema_run_resumed_matches_an_uninterrupted_one(tmp_path, tiny_config):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(_tiny(tiny_config, whole, "train.ema=0.8", "train.lr_schedule=cosine"))
    train(_tiny(tiny_config, parts, "train.ema=0.8", "train.lr_schedule=cosine",
                "train.steps=12"))  # the same config ...
    # ... cut at a checkpoint: drop the last one and resume from step 10.
    last = list_checkpoints(parts)[-1]
    last.unlink()
    (parts / "results.json").unlink()
    (parts / "checkpoints" / "latest").unlink(missing_ok=True)
    train(resume=parts)
    a = load_checkpoint(list_checkpoints(whole)[-1])
    b = load_checkpoint(list_checkpoints(parts)[-1])
    for key in ("model", "train_model"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert a["timesteps_seen"] == b["timesteps_seen"]
    assert len(b["commands"]) == 2 and len(a["commands"]) == 1


# ----------------------------------------------------------------------------- targets

def test_target_scores_become_raw_returns_through_the_datasets_references(tmp_path, tiny_config):
    run = tmp_path / "run"
    train(_tiny(tiny_config, run, "eval.target_returns=null", "eval.target_scores=[110,55]"))
    results = json.loads((run / "results.json").read_text())
    lo, hi = TINY_REF
    want = [lo + 1.10 * (hi - lo), lo + 0.55 * (hi - lo)]  # 111 and 56 for refs (1, 101)
    assert list(results["last_iterate"]["targets"]) == ["111", "56"]  # rounded to 0.1: short keys
    assert results["eval_targets"] == {"kind": "scores", "target_scores": [110.0, 55.0],
                                       "target_returns": pytest.approx(want)}
    assert [t["target_return"] for t in results["last_iterate"]["targets"].values()] == \
        pytest.approx(want)
    assert results["eval_spec"]["target_returns"] == pytest.approx(want)  # rlmin eval's default


@pytest.mark.parametrize("overrides, needle", [
    (["eval.target_scores=[110]", "eval.target_returns=[3600]"], "both set"),
    (["eval.target_scores=[]"], "eval.target_scores"),
    (["eval.target_returns=[]"], "eval.target_returns' is empty"),
    (["train.lr_schedule=step"], "train.lr_schedule"),
    (["train.lr_floor=2"], "train.lr_floor"),
    (["train.ema=1.0"], "train.ema"),
    (["train.batch_timesteps=1280"], "data.mode=episode"),
])
def test_protocol_keys_are_checked_before_any_work(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config([], overrides)


# ----------------------------------------------------------------------------- budgets and records

def test_batch_timesteps_sizes_whole_episode_batches(tmp_path, tiny_config, tiny_hopper_data):
    run = tmp_path / "run"
    lengths = np.minimum(tiny_hopper_data.episode_lengths, 30)
    budget = int(round(3 * lengths.mean()))  # three episodes' worth of real steps
    train(_tiny(tiny_config, run, "data.mode=episode", "data.seq_len=30",
                f"train.batch_timesteps={budget}"))
    results = json.loads((run / "results.json").read_text())
    assert results["batch_size"] == 3
    # Each step drew 3 whole episodes: the real steps seen lie between 3 shortest and 3 longest.
    seen = results["timesteps_seen"]
    assert 12 * 3 * lengths.min() <= seen <= 12 * 3 * lengths.max()


def test_a_run_records_its_command_commit_data_size_and_timesteps(tmp_path, tiny_config):
    run = tmp_path / "run"
    result = train(_tiny(tiny_config, run))
    results = result.results
    prov = results["provenance"]
    assert prov["data_fingerprint"] == results["dataset"]["fingerprint"]
    assert prov["command"].startswith("cd ") and prov["commands"] == [prov["command"]]
    if prov["commit"] is not None:  # inside git (CI's clone is)
        assert re.fullmatch(r"[0-9a-f]{40}", prov["commit"]) and isinstance(prov["dirty"], bool)
    agent = agent_from_payload(load_payload(run)[0])
    assert results["n_params"] == sum(p.numel() for p in agent.parameters())
    # Segments of K=10 steps, batch 4 (the tiny config): at most 12 x 4 x 10 real steps, and the
    # padding of segments that run past an episode's end is not counted.
    cfg = results["config"]
    full = 12 * cfg["train"]["batch_size"] * cfg["data"]["seq_len"]
    assert 0.5 * full < results["timesteps_seen"] <= full


def test_cpu_bf16_autocast_trains_and_keeps_float32_weights(tmp_path, tiny_config):
    run = tmp_path / "run"
    result = train(_tiny(tiny_config, run, "train.cpu_amp=true"))
    assert math.isfinite(result.results["last_iterate"]["targets"]["100"]["return_mean"])
    payload = load_checkpoint(list_checkpoints(run)[-1])
    assert all(t.dtype in (torch.float32, torch.long, torch.bool) for t in payload["model"].values())
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    plain = tmp_path / "plain"
    train(_tiny(tiny_config, plain))
    losses32 = [json.loads(line)["loss"] for line in (plain / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["kind"] == "train"]
    assert losses != losses32, "train.cpu_amp=true changed nothing: autocast was not applied"
    assert losses == pytest.approx(losses32, rel=0.05), "bf16 should stay near float32 here"
