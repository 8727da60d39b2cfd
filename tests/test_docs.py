"""The README's config reference lists every key of the schema, and its commands exist."""
from pathlib import Path

from omegaconf import OmegaConf

from rlmin.cli import build_parser
from rlmin.config import Config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _keys(node, prefix=""):
    for key, value in node.items():
        if OmegaConf.is_dict(value) and key != "backbone_options":
            yield from _keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def test_readme_config_reference_has_every_key():
    missing = [k for k in _keys(OmegaConf.structured(Config)) if f"| `{k}` |" not in README]
    assert not missing, f"README config reference lacks rows for {missing}"


def test_readme_commands_are_cli_subcommands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in ("train", "eval", "export", "data", "quickstart"):
        assert command in sub.choices
        assert f"rlmin {command}" in README
