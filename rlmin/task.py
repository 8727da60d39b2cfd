"""What a task is (the ``Task`` record) and how a name finds one; the tasks themselves live elsewhere.

rlmin defines the record, as ``rlmin/agent.py`` defines the agent interface; packages provide the
tasks through the ``rlmin.tasks`` entry-point group (``envs/tasks.py`` for the MuJoCo locomotion
tasks), as ``agents/`` provides the agents. An entry point may hold one ``Task``, a sequence of
them, or a mapping ``name -> Task``.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rlmin import registry

#: Namespace of the datasets the rlmin builder writes locally: ``rlmin/<task>/<level>-v<N>``.
LOCAL_NAMESPACE = "rlmin"

#: D4RL's dataset levels, longest first so ``medium-replay`` is not read as ``medium``.
D4RL_LEVELS = ("medium-replay", "medium-expert", "full-replay", "random", "medium", "expert")
_D4RL_NAME = re.compile(
    r"^(?P<env>[a-z0-9_]+)-(?P<level>" + "|".join(D4RL_LEVELS) + r")-v(?P<version>\d+)$")


@dataclass(frozen=True)
class PublishedScore:
    """A normalised score a paper reports on one level of a task, on that paper's benchmark.

    ``benchmark`` names the datasets, env versions and reference returns the number belongs to
    (e.g. ``"D4RL-v2"``): a report shows it only in a column labelled with it, never as one of its
    own scores.
    """

    method: str     # e.g. "DT"
    level: str      # e.g. "medium-replay"
    score: float    # normalised with the benchmark's own reference returns
    benchmark: str  # e.g. "D4RL-v2"
    source: str     # the paper and where in it


@dataclass(frozen=True)
class Task:
    """One environment with its datasets and reference returns.

    ``dataset_ids`` maps a level (``"medium"``) to a Minari dataset id. ``ref_min``/``ref_max``
    are the returns that normalise scores to 0/100 for the task's *official* datasets, and
    ``ref_source`` says where they came from (datasets that carry their own reference scores in
    their metadata use those instead, see ``rlmin.scores``). ``target_returns`` are the default
    evaluation targets (Decision-Transformer style), in raw return units. ``published``: scores
    papers report on this task's levels, each labelled with its benchmark.
    """

    name: str
    env_id: str
    max_episode_steps: int
    dataset_ids: dict[str, str]
    ref_min: float
    ref_max: float
    ref_source: str
    target_returns: tuple[float, ...]
    obs_dim: int | None = None
    act_dim: int | None = None
    published: tuple[PublishedScore, ...] = ()

    def __post_init__(self):
        if not self.ref_max > self.ref_min:
            raise ValueError(f"task {self.name!r}: ref_max ({self.ref_max}) must exceed "
                             f"ref_min ({self.ref_min})")
        if not self.target_returns:
            raise ValueError(f"task {self.name!r}: at least one target return is needed")
        object.__setattr__(self, "target_returns", tuple(float(t) for t in self.target_returns))
        object.__setattr__(self, "dataset_ids", dict(self.dataset_ids))
        object.__setattr__(self, "published", tuple(self.published))

    def __hash__(self) -> int:  # the dict fields are not hashable; a task is known by its name
        return hash((self.name, self.env_id))

    def local_dataset_id(self, level: str, version: int = 0) -> str:
        """Id of the dataset the rlmin builder writes for ``level``: ``rlmin/<task>/<level>-vN``."""
        return f"{LOCAL_NAMESPACE}/{self.name}/{level}-v{version}"

    def dataset_id(self, level: str) -> str:
        """The official Minari id for ``level`` if there is one, else the local builder's id."""
        return self.dataset_ids.get(level) or self.local_dataset_id(level)

    def published_scores(self, level: str | None) -> list[PublishedScore]:
        """The published scores on ``level`` (none for an unknown or missing level)."""
        return [p for p in self.published if p.level == level]


# ------------------------------------------------------------------------- lookup

def _as_tasks(obj: Any, source: str) -> Iterable[Task]:
    if isinstance(obj, Task):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)) and all(isinstance(t, Task) for t in obj):
        return obj
    raise TypeError(f"rlmin.tasks entry {source!r} must be a Task, a sequence of Tasks or a "
                    f"mapping of them, got {type(obj).__name__}")


def all_tasks() -> dict[str, Task]:
    """Every known task by name (entry points + ``register_task``)."""
    tasks: dict[str, Task] = {}
    for source, obj in registry.load_group(registry.TASKS).items():
        for task in _as_tasks(obj, source):
            tasks[task.name] = task
    return tasks


def list_tasks() -> list[str]:
    """Sorted names of the known tasks."""
    return sorted(all_tasks())


def register_task(task: Task, overwrite: bool = False) -> Task:
    """Add a task in-process (e.g. in a test or a notebook)."""
    return registry.register(registry.TASKS, f"task:{task.name}", task, overwrite=overwrite)


def get_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive; a Gymnasium id like ``Hopper-v5`` works too)."""
    tasks = all_tasks()
    if name in tasks:
        return tasks[name]
    lowered = name.lower()
    for task in tasks.values():
        if task.name.lower() == lowered or task.env_id.lower() == lowered:
            return task
    known = ", ".join(sorted(tasks)) or "(none: is the package providing rlmin.tasks installed?)"
    raise registry.RegistryError(f"unknown task {name!r}; known tasks: {known}")


def _task_for_dataset_id(dataset_id: str, tasks: dict[str, Task]) -> Task | None:
    for task in tasks.values():  # an official id listed by a task
        if dataset_id in task.dataset_ids.values():
            return task
    # a namespaced id whose path names a task: rlmin/hopper/medium-v0, shared/hopper/expert-v0
    parts = dataset_id.split("/")[:-1]
    for part in reversed(parts):
        if part in tasks:
            return tasks[part]
    return None


def resolve_dataset(name_or_id: str | Path) -> tuple[Task, str]:
    """Map a dataset name to ``(task, dataset id or path)``.

    Accepts
      * a D4RL name such as ``hopper-medium-v2`` (any ``-vN``): mapped to the task's official
        Minari id for that level when there is one (``mujoco/hopper/medium-v0``), otherwise to the
        local builder's id (``rlmin/hopper/medium-replay-v0``). It warns once per call that the
        scores will be on Gymnasium v5 datasets, not D4RL-v2 ones;
      * a Minari id listed by a task, or one whose namespace names a task
        (``rlmin/hopper/medium-v0``, ``shared/hopper/expert-v0``);
      * a path to a local dataset directory (its ``env_spec`` decides the task).
    """
    tasks = all_tasks()
    text = str(name_or_id)
    match = _D4RL_NAME.match(text)
    if match and match["env"] in tasks:
        task, level = tasks[match["env"]], match["level"]
        dataset_id = task.dataset_id(level)
        warnings.warn(f"{text} is mapped to {dataset_id} ({task.env_id}): scores on Gymnasium v5 "
                      f"datasets are not D4RL-v{match['version']} scores and must not be "
                      f"compared with them as if they were.", UserWarning, stacklevel=2)
        return task, dataset_id

    path = Path(text).expanduser()
    if (isinstance(name_or_id, Path) or path.is_absolute() or text.startswith((".", "~"))
            or (path / "data" / "metadata.json").exists()):
        env_id = _env_id_at_path(path)
        for task in tasks.values():
            if task.env_id == env_id:
                return task, str(path)
        raise ValueError(f"dataset at {path} was collected on {env_id!r}, which no known task "
                         f"uses (known tasks: {', '.join(sorted(tasks))})")

    task = _task_for_dataset_id(text, tasks)
    if task is None:
        example = min(tasks, default="<task>")  # a real name makes the example copyable
        raise ValueError(
            f"cannot tell which task dataset {text!r} belongs to. Use a D4RL name "
            f"({example}-medium-v2), a Minari id listed by a task, or an id namespaced by a task "
            f"name ({LOCAL_NAMESPACE}/{example}/medium-v0); known tasks: "
            f"{', '.join(sorted(tasks)) or '(none)'}")
    return task, text


def _env_id_at_path(path: Path) -> str | None:
    import json
    data = path / "data" if (path / "data").is_dir() else path
    meta_file = data / "metadata.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{path} is not a Minari dataset directory (no {meta_file})")
    env_spec = json.loads(meta_file.read_text()).get("env_spec")
    return json.loads(env_spec).get("id") if env_spec else None
