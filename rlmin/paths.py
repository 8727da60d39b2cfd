"""Where the files that ship with rlmin are (one definition for the CLI and the grid driver)."""
from __future__ import annotations

from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
