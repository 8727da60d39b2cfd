"""A third-party agent, outside ``agents/``, registered through the ``rlmin.agents`` entry point.

The test writes a package ``myagents`` into a temp dir with an agent that has an option of its
own (``scale``), and a ``myagents-0.0.0.dist-info`` beside it whose ``entry_points.txt`` puts it
in the ``rlmin.agents`` group: on ``sys.path`` (or ``PYTHONPATH``) that is what an installed
package looks like to ``importlib.metadata``. The agent then trains with ``rlmin train``,
evaluates with ``rlmin eval``, exports and reloads, and an unknown option fails naming the key.
A plugin that forgets to pass its options on to ``Agent.__init__`` still records them.
``rlmin.testing.check_agent`` runs on every registered agent, and catches broken ones.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from rlmin import cli, registry
from rlmin.spec import DataSpec
from rlmin.testing import check_agent

CONSTANT = textwrap.dedent('''\
    """A plugin agent: tanh(scale * (W s + b)), trained by masked MSE; no memory."""
    from dataclasses import dataclass

    import torch
    from torch import nn

    from rlmin.agent import Agent


    class ConstantAgent(Agent):
        @dataclass
        class Options:
            scale: float = 1.0  # an option no shipped agent has

            def __post_init__(self):
                if isinstance(self.scale, bool) or not self.scale > 0:
                    raise ValueError(f"scale must be a number > 0, got {self.scale!r}")

        def __init__(self, spec, options=None):
            super().__init__(spec, options)
            self.linear = nn.Linear(spec.obs_dim, spec.act_dim)

        def label(self):
            return f"constant x{self.options.scale:g}"

        def _action(self, obs):
            return torch.tanh(self.options.scale * self.linear(obs))

        def loss(self, batch):
            mask = self.tensor(batch["mask"], torch.bool)
            obs = torch.where(mask[..., None], self.tensor(batch["observations"]), 0.0)
            mse = self.masked_mse(self._action(obs), self.tensor(batch["actions"]), mask)
            return mse, {"loss": float(mse.detach())}

        def reset(self, n_envs, target_return=None):
            return {"t": torch.zeros(int(n_envs), dtype=torch.long, device=self.device)}

        def act(self, obs, reward, state, done=None):
            with self.inference():
                action = self._action(self.normalize(obs))
            t = state["t"]
            if done is not None:
                t = torch.where(self.env_rows(done, t.shape[0], "done", torch.bool), 0, t)
            return action.cpu().numpy(), {"t": t + 1}
''')


def write_plugin(root: Path) -> Path:
    (root / "myagents").mkdir(parents=True)
    (root / "myagents" / "__init__.py").write_text("")
    (root / "myagents" / "constant.py").write_text(CONSTANT)
    info = root / "myagents-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myagents\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(
        "[rlmin.agents]\nconstant = myagents.constant:ConstantAgent\n")
    return root


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    return write_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture
def plugin(plugin_dir, monkeypatch):
    """The plugin importable and registered in this process too (entry points re-read)."""
    monkeypatch.syspath_prepend(str(plugin_dir))
    registry.clear_cache()
    yield plugin_dir
    monkeypatch.undo()
    sys.modules.pop("myagents.constant", None)
    sys.modules.pop("myagents", None)
    registry.clear_cache()


def rlmin_cli(*argv, plugin_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_dir),
                                                       os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "rlmin.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_plugin_agent_trains_evaluates_exports_and_reloads(plugin, tiny_config, tmp_path, capsys):
    from rlmin.checkpoint import list_checkpoints, load_checkpoint
    from rlmin.policy import Policy

    assert "constant" in registry.names(registry.AGENTS)
    config = tiny_config.yaml(tmp_path / "tiny.yaml", "agent.name=constant", "agent.scale=2.0",
                              "train.steps=4", "eval.max_episode_steps=5")
    run = tmp_path / "run"
    trained = rlmin_cli("train", str(config), f"run_dir={run}", plugin_dir=plugin, cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["agent"] == "constant" and results["label"] == "constant x2"
    assert results["act_mode"] is None and results["step"] == 4
    payload = load_checkpoint(list_checkpoints(run)[-1])
    assert payload["agent"]["name"] == "constant" and payload["agent"]["options"] == {"scale": 2.0}

    evaluated = rlmin_cli("eval", str(run), "--episodes", "1", "--max-episode-steps", "5",
                          plugin_dir=plugin, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    res = json.loads((run / "eval" / "latest.default.seed10000.ep1.eval.json").read_text())
    assert res["agent"] == {"label": "constant x2", "act_mode": None}
    assert all(t["episodes"] == 1 for t in res["targets"].values())

    out = tmp_path / "policy.pt"
    assert cli.main(["export", str(run), str(out)]) == 0
    policy = Policy.load(out)
    assert type(policy.agent).__name__ == "ConstantAgent" and policy.agent.options.scale == 2.0
    policy.reset(n_envs=2)
    obs = np.random.default_rng(0).normal(size=(2, 11))
    action = policy.act(obs)
    state = payload["model"]
    expected = torch.tanh(2.0 * (((torch.as_tensor(obs, dtype=torch.float32) - state["obs_mean"])
                                  / state["obs_std"]) @ state["linear.weight"].T
                                 + state["linear.bias"]))
    np.testing.assert_allclose(action, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert policy.state["t"].tolist() == [1, 1]


@pytest.mark.parametrize("override, needles", [
    ("agent.nope=1", ["'agent.nope'", "constant", "scale"]),
    ("agent.scale=abc", ["'agent.scale'", "abc"]),
    ("agent.scale=-1", ["scale", "> 0"]),
    ("agent.d_model=16", ["'agent.d_model'", "scale"]),  # a decision agent's option, not its
])
def test_a_plugin_agents_options_are_checked_by_it(plugin, tiny_config, tmp_path, capsys,
                                                   override, needles):
    config = tiny_config.yaml(tmp_path / "tiny.yaml", "agent.name=constant")
    assert cli.main(["train", str(config), f"run_dir={tmp_path / 'run'}", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert all(n in err for n in needles), err
    assert not (tmp_path / "run").exists()


def test_unknown_option_fails_in_a_fresh_process(plugin_dir, tiny_config, tmp_path):
    config = tiny_config.yaml(tmp_path / "tiny.yaml", "agent.name=constant")
    proc = rlmin_cli("train", str(config), f"run_dir={tmp_path / 'run'}", "agent.nope=1",
                     plugin_dir=plugin_dir, cwd=tmp_path)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: ") and "\n" not in err, err
    assert "nope" in err and "Traceback" not in err, err


# ----------------------------------------------------------------------------- options recorded
def plugin_variant(old: str, new: str):
    """The plugin's ``ConstantAgent`` with ``old`` in its source replaced by ``new``."""
    assert old in CONSTANT
    namespace = {"__name__": "plugin_variant"}
    source = CONSTANT.replace(old, new)
    exec(compile(source, "<plugin>", "exec", dont_inherit=True), namespace)  # not this file's __future__
    return namespace["ConstantAgent"]


def test_a_plugin_that_forgets_to_pass_its_options_on_records_them():
    """``super().__init__(spec)``: the agent runs with the options it was given, so it must record
    those (it recorded the defaults: a checkpoint rebuilt a different agent)."""
    forgetful = plugin_variant("super().__init__(spec, options)", "super().__init__(spec)")
    agent = forgetful(DataSpec(3, 2), forgetful.Options(scale=2.0))
    assert agent.options == forgetful.Options(scale=2.0) and agent.label() == "constant x2"
    assert agent.options_dict() == {"scale": 2.0}
    assert forgetful(DataSpec(3, 2)).options == forgetful.Options()
    check_agent(forgetful, forgetful.Options(scale=2.0))  # its checkpoint rebuilds it as it ran


def test_a_plugin_that_passes_other_options_on_is_refused():
    replaced = plugin_variant("super().__init__(spec, options)", "super().__init__(spec, self.Options())")
    with pytest.raises(TypeError, match=r"ConstantAgent was built with .*scale=2\.0.*"
                                        r"super\(\)\.__init__\(spec, options\)"):
        replaced(DataSpec(3, 2), replaced.Options(scale=2.0))
    assert replaced(DataSpec(3, 2)).options == replaced.Options()  # none given: its own are recorded
    # A constructor whose second argument is no Options makes them itself: nothing to compare.
    own_signature = plugin_variant(
        "def __init__(self, spec, options=None):\n        super().__init__(spec, options)",
        "def __init__(self, spec, scale=1.0):\n        super().__init__(spec, self.Options(scale=scale))")
    assert own_signature(DataSpec(3, 2), 3.0).options.scale == 3.0


# ----------------------------------------------------------------------------- check_agent

def tiny_options(name: str, cls):
    """Every registered agent at a tiny size: the decision agent once per backbone."""
    from rlmin.nn import BACKBONES

    if name == "decision":
        return [cls.Options(backbone=b, d_model=8, n_layers=1) for b in BACKBONES] + [
            cls.Options(backbone="mingru", d_model=8, n_layers=1, token_layout="stacked")]
    if name == "bc":
        return [cls.Options(hidden=[8, 8])]
    return [cls.Options()]


def test_check_agent_passes_for_every_registered_agent(plugin):
    agents = registry.load_group(registry.AGENTS)
    assert {"decision", "bc", "constant"} <= set(agents)
    checked = []
    for name, cls in sorted(agents.items()):
        for options in tiny_options(name, cls):
            check_agent(cls, options)
            checked.append((name, getattr(options, "backbone", None)))
    assert len(checked) >= 8, checked


def _broken_agents():
    from agents.bc import BCAgent
    from agents.decision import DecisionAgent

    class MutatesState(BCAgent):
        def act(self, obs, reward, state, done=None):
            action, new = super().act(obs, reward, state, done)
            state["t"] += 1  # in place: a caller's saved state changes under it
            return action, new

    class AcceptsAnything(BCAgent):
        @classmethod
        def options_from_dict(cls, values):
            return cls.Options(**{k: v for k, v in values.items() if k in ("hidden", "dropout")})

    class OutOfRange(BCAgent):
        def act(self, obs, reward, state, done=None):
            action, new = super().act(obs, reward, state, done)
            return action + 2.0, new

    class IgnoresDone(DecisionAgent):
        def act(self, obs, reward, state, done=None, prev_action=None):
            return super().act(obs, reward, state, None, prev_action)  # never resets a row

    class RecordsOtherOptions(BCAgent):
        def __init__(self, spec, options=None):
            super().__init__(spec, options)  # builds its dropout layers from options.dropout
            self.options = self.Options(hidden=self.options.hidden)  # then records the default dropout

    tiny = DecisionAgent.Options(backbone="mingru", d_model=8, n_layers=1)
    return [(MutatesState, None, "changed the state passed in"),
            (AcceptsAnything, None, "accepted an unknown option"),
            (OutOfRange, None, r"in \[-1, 1\]"),
            (IgnoresDone, tiny, "done"),
            (RecordsOtherOptions, BCAgent.Options(hidden=[8], dropout=0.3),
             r"built with .*dropout=0\.3.* training checkpoint rebuilds it with .*dropout=0\.1")]


@pytest.mark.parametrize("index", range(5), ids=["mutates-state", "accepts-anything", "out-of-range",
                                                 "ignores-done", "records-other-options"])
def test_check_agent_catches_a_broken_agent(index):
    cls, options, message = _broken_agents()[index]
    with pytest.raises(AssertionError, match=message):
        check_agent(cls, options)
