"""Reproduction grids and their report; the same as ``rlmin repro`` (rlmin/grid.py, rlmin/report.py).

    python scripts/repro.py run --grid small --out runs/repro-small
    python scripts/repro.py run --grid full --out runs/repro-full --shard 0/4
    python scripts/repro.py report runs/repro-small
"""
import sys

from rlmin.grid import main

if __name__ == "__main__":
    sys.exit(main())
