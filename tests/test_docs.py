"""The README: its config reference lists every key (the agents' own options included), its
commands exist, and every Python block in it runs as written (on a tiny dataset and checkpoint
this test makes)."""
from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import sys
import types
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from omegaconf import OmegaConf

from rlmin.cli import build_parser
from rlmin.config import Config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _keys(node, prefix=""):
    for key, value in node.items():
        if OmegaConf.is_dict(value) and key not in ("backbone_options", "agent"):
            yield from _keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def _agent_keys():
    """``agent.name`` and every option of every registered agent (the config's agent section
    is that agent's own ``Options``)."""
    from rlmin.registry import AGENTS, load_group

    yield "agent.name"
    for cls in load_group(AGENTS).values():
        for f in dataclasses.fields(cls.Options):
            yield f"agent.{f.name}"


def test_readme_config_reference_has_every_key():
    keys = [k for k in _keys(OmegaConf.structured(Config)) if k != "agent"] + list(_agent_keys())
    missing = [k for k in dict.fromkeys(keys) if f"| `{k}` |" not in README]
    assert not missing, f"README config reference lacks rows for {missing}"


def test_readme_commands_are_cli_subcommands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in ("train", "eval", "export", "data", "quickstart"):
        assert command in sub.choices
    for command in sub.choices:  # and every subcommand is documented
        assert f"rlmin {command}" in README, f"README never mentions `rlmin {command}`"


# ----------------------------------------------------------------------------- Python blocks

def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def string_literals(code: str) -> list[str]:
    return [n.value for n in ast.walk(ast.parse(code))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)]


@pytest.fixture
def readme_cwd(tmp_path, tiny_config, monkeypatch):
    """A working directory as the README's reader has one: the repo's configs, a trained run
    where a block names a ``runs/...`` path, ``policy.pt`` exported from it. Training configs
    the blocks load get the tiny dataset and sizes on top (and a run dir under tmp_path)."""
    import rlmin.config
    from rlmin.checkpoint import list_checkpoints
    from rlmin.policy import export_policy
    from rlmin.train import train

    run = tmp_path / "tiny-run"
    train(tiny_config(run, "train.steps=2", "eval.max_episode_steps=3"))
    ckpt = list_checkpoints(run)[-1]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "configs").symlink_to(ROOT / "configs")
    for text in {s for block in python_blocks() for s in string_literals(block)}:
        target = cwd / text
        if text.startswith("runs/"):
            target.parent.mkdir(parents=True, exist_ok=True)
            if text.endswith(".pt"):
                shutil.copy(ckpt, target)
            elif not target.exists():
                shutil.copytree(run, target)
        elif text.endswith(".pt") and "/" not in text:  # an exported policy, e.g. policy.pt
            export_policy(ckpt, target)
        elif text.endswith(".onnx") and "/" not in text:  # an ONNX policy, e.g. policy.onnx
            from rlmin.onnx_export import export_onnx

            export_onnx(ckpt, target)

    real_load = rlmin.config.load_config
    runs = iter(range(100))

    def tiny_load(files=(), overrides=()):
        # a whole-episode recipe (minlstm.yaml) keeps its episodes whole: the tiny seq_len 10 would cut them
        whole = ["data.seq_len=1000"] if real_load(files, overrides).data.mode == "episode" else []
        return real_load(files, [*overrides, *tiny_config.overrides(
            "train.steps=2", "train.warmup_steps=1", "eval.max_episode_steps=3", *whole,
            run_dir=tmp_path / f"readme-run-{next(runs)}")])

    monkeypatch.setattr(rlmin.config, "load_config", tiny_load)
    monkeypatch.chdir(cwd)
    return cwd


class EpisodeBoundaries:
    """Records every vector env's ends and every ``act`` call's ``done``, to check that the
    acting loop marks each row whose observation starts a new episode (autoreset)."""

    def __init__(self, monkeypatch):
        from rlmin.agent import Agent
        from rlmin.registry import AGENTS, load_group

        self.ended, self.done, self.mode = [], [], None
        real_make_vec = gym.make_vec
        boundaries = self

        def make_vec(*args, **kwargs):
            env = real_make_vec(*args, **kwargs)
            if not sys._getframe(1).f_code.co_filename.startswith("README.md"):
                return env  # rlmin's own evaluator (it resets envs itself)
            boundaries.mode = env.metadata.get("autoreset_mode")
            real_step = env.step

            def step(actions):
                out = real_step(actions)
                boundaries.ended.append(np.logical_or(out[2], out[3]))
                return out

            env.step = step
            return env

        monkeypatch.setattr(gym, "make_vec", make_vec)
        for cls in {*load_group(AGENTS).values()}:
            assert issubclass(cls, Agent)
            real_act = cls.act

            def act(agent, obs, reward, state, done=None, *rest, _real=real_act, **kw):
                n = np.asarray(obs).shape[0]
                boundaries.done.append(np.zeros(n, bool) if done is None
                                       else np.asarray(done, bool).reshape(n))
                return _real(agent, obs, reward, state, done, *rest, **kw)

            monkeypatch.setattr(cls, "act", act)

    def check(self) -> None:
        if not self.ended:
            return  # no vector env: nothing autoresets
        mode = self.mode
        assert mode in (gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP), \
            f"a README loop with autoreset mode {mode}: extend this check"
        lag = 2 if mode == gym.vector.AutoresetMode.NEXT_STEP else 1
        assert any(e.any() for e in self.ended), "no episode ended: the check saw nothing"
        for k in range(1, len(self.done)):
            # act call k sees the obs of env step k-1; under NEXT_STEP an env that ended at step
            # s is reset by step s+1, so act call s+2 gets the new episode's first obs.
            want = self.ended[k - lag] if k - lag >= 0 else np.zeros_like(self.done[k])
            assert np.array_equal(self.done[k], want), (
                f"act call {k}: done={self.done[k].tolist()}, but the rows starting a new "
                f"episode are {want.tolist()}: state and return-to-go carry across episodes")


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs_as_written(readme_cwd, monkeypatch, index):
    code = python_blocks()[index]
    boundaries = EpisodeBoundaries(monkeypatch)
    module = types.ModuleType("__readme__")  # a real module, as a user's script is (dataclasses need it)
    monkeypatch.setitem(sys.modules, "__readme__", module)
    exec(compile(code, f"README.md python block {index + 1}", "exec"), module.__dict__)
    boundaries.check()
