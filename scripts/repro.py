"""Reproduction grids and their report; the same as ``rlmin repro`` (see rlmin/repro.py).

    python scripts/repro.py run --preset small --out runs/repro-small --workers 2
    python scripts/repro.py run --preset full --out runs/repro-full --shard 0/4
    python scripts/repro.py report runs/repro-small
"""
import sys

from rlmin.repro import main

if __name__ == "__main__":
    sys.exit(main())
