"""A backbone added from outside rlmin: one class (its typed Options, forward/step/initial_state)
registered by name, then used by the decision agent through config keys alone (docs/AGENTS.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from torch import nn

from agents.decision import DecisionAgent
from rlmin import registry
from rlmin.checks import probability
from rlmin.config import agent_options, load_config
from rlmin.nn import backbone_class, build_backbone, register_backbone
from rlmin.nn.base import Backbone
from rlmin.spec import DataSpec
from rlmin.testing import check_agent


class LeakyIntegrator(Backbone):
    """h_t = decay * h_{t-1} + (1 - decay) * tanh(W x_t), one such layer per n_layers."""

    @dataclass
    class Options:
        decay: float = 0.9
        dropout: Optional[float] = None  # None: the owning agent's

        def __post_init__(self):
            probability("decay", self.decay)

    def __init__(self, d_model: int, n_layers: int, options: "LeakyIntegrator.Options | None" = None):
        super().__init__(d_model, n_layers, options)
        self.inputs = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        self.drop = nn.Dropout(self.options.dropout or 0.0)

    def initial_state(self, batch_size: int, device=None):
        w = self.inputs[0].weight
        return tuple(torch.zeros(batch_size, self.d_model, device=device or w.device, dtype=w.dtype)
                     for _ in self.inputs)

    def step(self, x, state):
        new = []
        for layer, h in zip(self.inputs, state):
            h = self.options.decay * h + (1 - self.options.decay) * torch.tanh(layer(x))
            new.append(h)
            x = self.drop(h)
        return x, tuple(new)

    def forward(self, x, state=None, lengths=None, last=False):
        state = self.initial_state(x.shape[0], x.device) if state is None else state
        ys, states = [], []
        for t in range(x.shape[1]):  # a plain loop: this toy has no parallel scan
            y, state = self.step(x[:, t], state)
            ys.append(y)
            states.append(state)
        y = torch.stack(ys, dim=1)
        if lengths is not None:  # each row's state after its first lengths[b] steps (0: the start)
            start = self.initial_state(x.shape[0], x.device)
            state = tuple(torch.stack([start[i], *(s[i] for s in states)], dim=1)[torch.arange(x.shape[0]), lengths]
                          for i in range(len(start)))
        if last:
            y = y[:, -1] if lengths is None else y[torch.arange(x.shape[0]), (lengths - 1).clamp(min=0)]
        return y, state


@pytest.fixture
def leaky():
    register_backbone("leaky", LeakyIntegrator)
    yield LeakyIntegrator
    registry.unregister("rlmin.backbones", "leaky")


def test_a_registered_backbone_is_built_by_name_with_its_typed_options(leaky):
    assert backbone_class("leaky") is leaky
    model = build_backbone("leaky", 8, 2, decay=0.5)
    assert model.options == leaky.Options(decay=0.5) and len(model.initial_state(3)) == 2
    with pytest.raises(ValueError, match=r"\['width'\] is not an option of backbone 'leaky'.*decay"):
        build_backbone("leaky", 8, 1, width=3)
    with pytest.raises(ValueError, match="decay must be a number in"):
        build_backbone("leaky", 8, 1, decay=1.5)


def test_a_registered_backbone_passes_the_agent_contract(leaky):
    options = DecisionAgent.Options(backbone="leaky", d_model=8, n_layers=2,
                                    backbone_options={"decay": 0.7})
    assert options.act_mode == "carry"  # recurrent, as its class says
    check_agent(DecisionAgent, options)  # trains, acts, resets rows, reloads with its options
    agent = DecisionAgent(DataSpec(5, 2), options)
    assert agent.backbone.options.dropout == agent.options.dropout  # left to the agent: its 0.1


def test_config_keys_reach_a_registered_backbone(leaky, tmp_path):
    cfg = load_config(["configs/tasks/hopper-medium.yaml"],
                      ["agent.backbone=leaky", "agent.backbone_options.decay=0.25", f"run_dir={tmp_path}"])
    assert agent_options(cfg).backbone_options == leaky.Options(decay=0.25)
    with pytest.raises(ValueError, match=r"config key 'agent.backbone_options.decay'"):
        load_config(["configs/tasks/hopper-medium.yaml"],
                    ["agent.backbone=leaky", "agent.backbone_options.decay=2"])


def test_an_unregistered_backbone_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"config key 'agent.backbone': unknown backbone 'leaky'.*mingru"):
        load_config(["configs/tasks/hopper-medium.yaml"], ["agent.backbone=leaky"])
