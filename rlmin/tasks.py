"""Moved to ``rlmin/task.py``: this re-export goes once rlmin/dataset.py, envs/builder.py,
tests/test_data.py and tests/test_builder.py import ``rlmin.task``."""
from rlmin.task import (D4RL_LEVELS, LOCAL_NAMESPACE, PublishedScore, Task,  # noqa: F401
                        all_tasks, get_task, list_tasks, register_task, resolve_dataset)
