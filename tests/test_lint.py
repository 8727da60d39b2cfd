"""The tree passes the linter configured in pyproject.toml ([tool.ruff]): unused or undefined
names, unsorted imports and bugbear's likely bugs fail the suite, not a later reader."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff")  # the dev extra installs it
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    out = subprocess.run([*cmd, "check", "--no-cache", "--output-format", "concise", str(ROOT)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, f"ruff check found problems (fix, or `ruff check --fix`):\n{out.stdout}{out.stderr}"
