"""Load (and, where the config allows, build) one grid run's dataset, in a child process.

    python -m rlmin.data.prepare TASK.yaml BACKBONE.yaml [key=value ...]

The grid driver runs it once per dataset before parallel runs start (rlmin/gridrun.py); exit 0
and one line, ``dataset ready: <id> <steps> steps``.
"""
from __future__ import annotations

import sys
from typing import Sequence

from rlmin.config import load_config
from rlmin.data.resolve import load_dataset_for


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    d = load_dataset_for(load_config(argv[:2], argv[2:]).data)  # task + backbone config, overrides
    print("dataset ready:", d.eval_spec.dataset_id, d.data.num_steps, "steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
