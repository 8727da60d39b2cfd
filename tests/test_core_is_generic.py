"""The core names no agent and no backbone (issue 9): what sets agents apart lives in the agents.

Two checks read each core module's syntax tree, not its prose:

* names: identifiers (names, attributes, functions, arguments, imports) and string literals,
  leaving out docstrings, comments and the text shown to a user (error messages, printouts,
  warnings, argparse help), where an example such as "e.g. decision" is no special case. A hit
  there means the core treats one agent or backbone differently.
* reach: no import of ``agents`` or ``envs`` (the registry loads them), no attribute that only
  a shipped agent has (``carry_forward``, ``_initial_backbone_state``: the ``Agent`` interface is
  all the core may use), and no ``hasattr``/``getattr`` probing an agent for a method.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ["train.py", "config.py", "grid.py", "gridrun.py", "report.py", "policy.py", "evaluate.py",
        "data/resolve.py", "cli.py", "checkpoint.py", "spec.py", "runlog.py", "rundir.py",
        "interrupts.py", "testing.py", "agent.py", "scores.py", "task.py", "onnx_export.py",
        "onnx_policy.py", "step_protocol.py"]
NAMES = ("decision", "bc", "transformer", "mlp")
_WORD = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(NAMES) + r")(?![a-z0-9])", re.I)
_PROSE_CALLS = {"print", "warn", "add_argument", "add_parser", "write", "say", "ArgumentParser"}


def words_of_identifier(name: str) -> set[str]:
    """``DecisionAgent`` -> {decision, agent}; ``is_bc`` -> {is, bc}; ``MLPHead`` -> {mlp, head}."""
    return {p.lower() for p in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", name)}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _prose(tree: ast.AST) -> set[int]:
    """Ids of string constants that are text for a user: raised messages, printouts, help."""
    found = set()
    for node in ast.walk(tree):
        roots = []
        if isinstance(node, ast.Raise) and node.exc is not None:
            roots.append(node.exc)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _PROSE_CALLS:
                roots.append(node)
        for root in roots:
            found.update(id(n) for n in ast.walk(root) if isinstance(n, ast.Constant))
    return found


def special_cases(source: str) -> list[tuple[int, str]]:
    """(line, what) for every identifier or code string in ``source`` that names an agent."""
    tree = ast.parse(source)
    skip = _docstrings(tree) | _prose(tree)
    hits = []
    for node in ast.walk(tree):
        idents = []
        if isinstance(node, ast.Name):
            idents = [node.id]
        elif isinstance(node, ast.Attribute):
            idents = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            idents = [node.name]
        elif isinstance(node, ast.arg):
            idents = [node.arg]
        elif isinstance(node, ast.keyword) and node.arg:
            idents = [node.arg]
        elif isinstance(node, ast.ImportFrom):
            idents = (node.module or "").split(".") + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            idents = [part for a in node.names for part in a.name.split(".")]
        for ident in idents:
            if words_of_identifier(ident) & set(NAMES):
                hits.append((node.lineno, f"identifier {ident!r}"))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if _WORD.search(node.value):
                hits.append((node.lineno, f"string {node.value!r}"))
    return sorted(set(hits))


def test_the_check_finds_special_cases():
    code = '''
"""A docstring may say decision, bc or transformer."""
from agents.decision import DecisionAgent
# a comment may say mlp
def build(cfg):
    if cfg.agent.name == "bc":
        return make_mlp(cfg)
    is_transformer = cfg.agent.backbone == 'transformer'
    raise ValueError("unknown agent, e.g. decision")
'''
    found = {what for _, what in special_cases(code)}
    assert found == {"identifier 'decision'", "identifier 'DecisionAgent'", "string 'bc'",
                     "identifier 'make_mlp'", "identifier 'is_transformer'",
                     "string 'transformer'"}, found


# ----------------------------------------------------------------------------- reach
OUTSIDE = ("agents", "envs")  # packages the core never imports
PROBES = ("hasattr", "getattr", "setattr")


def agent_attributes() -> tuple[set[str], set[str]]:
    """(every attribute of a shipped agent class but nn.Module's, those that are not the ``Agent``
    interface's: a shipped agent's own methods and class attributes, and the private attributes
    the agents set, ``self._x = ...``)."""
    from torch import nn

    from rlmin.agent import Agent
    from rlmin.registry import AGENTS, load_group

    classes = list(load_group(AGENTS).values())
    every = set().union(*(dir(cls) for cls in classes)) - set(dir(nn.Module))
    own = {name for name in every if name not in dir(Agent)}
    for path in (ROOT / "agents").glob("*.py"):
        own |= {node.attr for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                and node.attr.startswith("_") and not node.attr.startswith("__")}
    return every, own


def reaches_into_agents(source: str, every: set[str], own: set[str]) -> list[tuple[int, str]]:
    """(line, what) for every import of agents/envs, use of an agent's own attribute, or probe of an
    agent's method by name in ``source``."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            roots = [(node.module or "").split(".")[0]] if node.level == 0 else []
        else:
            roots = []
        hits += [(node.lineno, f"import of {root}") for root in roots if root in OUTSIDE]
        if isinstance(node, ast.Attribute) and node.attr in own:
            hits.append((node.lineno, f"attribute {node.attr!r} of an agent"))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PROBES
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            name = node.args[1].value
            if name in own or (node.func.id == "hasattr" and name in every):
                hits.append((node.lineno, f"{node.func.id}(..., {name!r})"))
    return sorted(set(hits))


def test_the_reach_check_finds_agent_internals():
    every, own = agent_attributes()
    assert {"carry_forward", "carry_impl", "_initial_backbone_state", "_traced_steps"} <= own
    assert not {"act", "reset", "loss", "carry_step_module", "max_target_return"} & own
    code = '''
import agents.decision
from envs.tasks import TASKS
def export(agent):
    agent.carry_impl = "step"
    state = agent._initial_backbone_state(1)
    if hasattr(agent, "carry_forward") or hasattr(agent, "carry_step_module"):
        return getattr(agent, "carry_steps")
    return agent.carry_step_module(), agent.act_mode, getattr(agent, "act_mode", None)
'''
    found = {what for _, what in reaches_into_agents(code, every, own)}
    assert found == {"import of agents", "import of envs", "attribute 'carry_impl' of an agent",
                     "attribute '_initial_backbone_state' of an agent",
                     "hasattr(..., 'carry_forward')", "hasattr(..., 'carry_step_module')",
                     "getattr(..., 'carry_steps')"}, found


@pytest.mark.parametrize("name", CORE)
def test_core_module_names_no_agent_and_reaches_no_agent_internals(name):
    path = ROOT / "rlmin" / name
    if not path.exists():
        pytest.skip(f"rlmin/{name} does not exist (any more)")
    code = path.read_text()
    for what, hits in (("names an agent or backbone in its code", special_cases(code)),
                       ("reaches past the Agent interface", reaches_into_agents(code, *agent_attributes()))):
        assert not hits, f"rlmin/{name} {what}: " + "; ".join(f"line {line}: {w}" for line, w in hits)
