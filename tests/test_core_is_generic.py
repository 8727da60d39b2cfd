"""The core names no agent and no backbone (issue 9): what sets agents apart lives in the agents.

The check reads the code, not the prose: identifiers (names, attributes, functions, arguments,
imports) and string literals, leaving out docstrings, comments and the text shown to a user
(error messages, printouts, warnings, argparse help), where an example such as "e.g. decision"
is no special case. A hit there means the core treats one agent or backbone differently.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ["train.py", "config.py", "grid.py", "report.py", "policy.py", "evaluate.py",
        "data/resolve.py", "cli.py", "checkpoint.py", "spec.py", "runlog.py", "rundir.py",
        "interrupts.py", "testing.py", "agent.py", "scores.py", "task.py"]
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


@pytest.mark.parametrize("name", CORE)
def test_core_module_names_no_agent(name):
    path = ROOT / "rlmin" / name
    if not path.exists():
        pytest.skip(f"rlmin/{name} does not exist (any more)")
    hits = special_cases(path.read_text())
    assert not hits, f"rlmin/{name} names an agent or backbone in its code: " + "; ".join(
        f"line {line}: {what}" for line, what in hits)
