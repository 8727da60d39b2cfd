"""Shared fixtures: tiny, real Minari datasets made by the tests themselves.

Fixtures (all tests may use them):

``minari_datasets_path`` (session, autouse)
    Points ``MINARI_DATASETS_PATH`` at a fresh temporary folder for the whole session, so no test
    reads or writes ``~/.minari`` or a shared dataset folder. Restored afterwards.
``fresh_minari_path`` (function)
    An empty datasets folder for one test (for tests that build ids that others also build,
    e.g. ``rlmin/hopper/medium-v0``).
``tiny_hopper_id`` (session) -> str
    ``"test/hopper/tiny-v0"``: Hopper-v5 under a ``TINY_MAX_STEPS``-step time limit, uniformly
    random actions (seeded), recorded with the real ``minari.DataCollector(...).create_dataset``.
    It has at least ``TINY_MIN_EPISODES`` episodes, at least one ending in a termination only (the
    hopper fell) and at least one in a truncation only (the time limit). Its metadata carries
    ``ref_min_score``/``ref_max_score`` = ``TINY_REF`` (deliberately unlike the task table's).
``tiny_hopper`` (session) -> minari.MinariDataset of ``tiny_hopper_id``.
``tiny_hopper_data`` (session) -> rlmin.data.EpisodeData of it.
``make_dataset`` (function) -> factory
    ``make_dataset(dataset_id, episodes, observation_space=None, action_space=None, env=None,
    **metadata) -> dataset_id`` writes hand-made episodes with ``minari.create_dataset_from_buffers``.
    Each episode is a dict: ``observations`` (T + 1 rows, or a dict of such arrays for a Dict
    space), ``actions`` (T rows), ``rewards``, and optional ``terminations``/``truncations``
    (default: terminated at the last step). Spaces default to unbounded float32 Boxes of the
    arrays' widths. Extra keyword arguments go to Minari's metadata (``ref_min_score=...``; the
    two ref scores are written even without an env, which Minari itself would drop).

``tiny_config`` (session) -> TinyConfig
    THE builder of seconds-long training configs on ``tiny_hopper_id`` (d_model 16, one layer,
    12 steps, one evaluation episode of at most ``TINY_EVAL_STEPS`` steps):
    ``tiny_config(run_dir, "train.steps=3", ...)`` -> a validated ``Config``;
    ``tiny_config.yaml(path, ...)`` writes the same values as a YAML file (for ``rlmin train``,
    subprocesses, torchrun); ``tiny_config.overrides(...)`` -> the ``key=value`` list itself.
    ``dataset=`` picks another dataset; ``agent.name=bc`` (or any registered agent) swaps the
    tiny decision-agent options for that agent's (``TINY_AGENT_OPTIONS``; none for others).
``load_script`` (function) -> factory
    ``load_script("screen_table")`` imports ``scripts/screen_table.py`` as a module, with
    ``scripts/`` on ``sys.path`` for this test (its sibling imports work as when run as a script).
``restore_torch_threads`` (function, autouse)
    ``train.num_threads=1`` sets torch's process-wide thread count: every test gets its own
    back. Module-scoped fixtures that train wrap themselves in ``torch_threads_kept()``.

Datasets written in the session folder stay for the session: use unique ids.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

TINY_HOPPER_ID = "test/hopper/tiny-v0"
TINY_MAX_STEPS = 30
TINY_MIN_EPISODES = 3
TINY_SEED = 0
TINY_REF = (1.0, 101.0)  # (ref_min_score, ref_max_score) stored in its metadata
TINY_EVAL_STEPS = 15  # time limit of a tiny run's evaluation episode

# Every tiny run: a few dozen steps of compute, one short evaluation episode.
TINY_OVERRIDES = (
    "data.seq_len=10",
    "train.steps=12", "train.batch_size=8", "train.warmup_steps=2", "train.lr=1e-3",
    "train.log_every=1", "train.checkpoint_every=5", "train.num_threads=1",
    "train.progress=false", "train.device=cpu",
    "eval.episodes=1", "eval.target_returns=[100]", f"eval.max_episode_steps={TINY_EVAL_STEPS}",
)
# Each shipped agent at a tiny size (only the agent named by agent.name gets its options).
TINY_AGENT_OPTIONS = {
    "decision": ("agent.d_model=16", "agent.n_layers=1", "agent.dropout=0.0"),
    "bc": ("agent.hidden=[16,16]", "agent.dropout=0.0"),
}


@contextlib.contextmanager
def torch_threads_kept():
    """Restore torch's thread count afterwards (``train.num_threads`` sets it process-wide)."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def restore_torch_threads():
    with torch_threads_kept():
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small ops: extra threads only fight over a shared CPU (10x slower here with 2). Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    with torch_threads_kept():
        torch.set_num_threads(1)
        yield


class TinyConfig:
    """Tiny training configs on one dataset; see the module docstring (``tiny_config``)."""

    def __init__(self, dataset: str):
        self.dataset = dataset

    def overrides(self, *extra: str, run_dir=None, dataset: str | None = None) -> list[str]:
        name = "decision"
        for item in extra:
            if item.startswith("agent.name="):
                name = item.split("=", 1)[1]
        out = [f"data.dataset={dataset or self.dataset}", *TINY_OVERRIDES,
               *TINY_AGENT_OPTIONS.get(name, ())]
        if run_dir is not None:
            out.append(f"run_dir={run_dir}")
        return out + list(extra)

    def __call__(self, run_dir, *extra: str, dataset: str | None = None):
        """A validated config writing to ``run_dir`` (None: leave run_dir unset)."""
        from rlmin.config import load_config
        return load_config([], self.overrides(*extra, run_dir=run_dir, dataset=dataset))

    def yaml(self, path, *extra: str, dataset: str | None = None) -> Path:
        """The same values as a YAML file at ``path`` (no run_dir unless given in ``extra``)."""
        from omegaconf import OmegaConf
        path = Path(path)
        path.write_text(OmegaConf.to_yaml(OmegaConf.from_dotlist(
            self.overrides(*extra, dataset=dataset))))
        return path


@pytest.fixture(scope="session", autouse=True)
def minari_datasets_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("minari_datasets")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


@pytest.fixture
def fresh_minari_path(tmp_path, monkeypatch):
    path = tmp_path / "minari_datasets"
    path.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


def _quiet():
    """Inside ``warnings.catch_warnings()``: hide Minari's advice about unset optional fields."""
    warnings.filterwarnings("ignore", message=r".*is set to None.*")
    warnings.filterwarnings("ignore", message=r"env_spec is None.*")


@pytest.fixture(scope="session")
def tiny_hopper_id(minari_datasets_path) -> str:
    import minari

    import envs  # noqa: F401  (MuJoCo's warnings become Python warnings, not MUJOCO_LOG.TXT in the cwd)

    env = gym.make("Hopper-v5", max_episode_steps=TINY_MAX_STEPS)
    env.action_space.seed(TINY_SEED)
    collector = minari.DataCollector(env, record_infos=False)
    ends = []
    try:
        for episode in range(50):
            collector.reset(seed=TINY_SEED + episode)
            while True:
                _, _, terminated, truncated, _ = collector.step(env.action_space.sample())
                if terminated or truncated:  # gymnasium allows both at once; count pure ones
                    ends.append({(True, False): "term", (False, True): "trunc"}.get(
                        (bool(terminated), bool(truncated)), "both"))
                    break
            if len(ends) >= TINY_MIN_EPISODES and {"term", "trunc"} <= set(ends):
                break
        assert {"term", "trunc"} <= set(ends), f"tiny hopper: no mix of endings in {ends}"
        with warnings.catch_warnings():
            _quiet()
            collector.create_dataset(
                dataset_id=TINY_HOPPER_ID, eval_env="Hopper-v5", algorithm_name="uniform random",
                author="rlmin tests", code_permalink="tests/conftest.py",
                description=f"tiny Hopper-v5 test set: random actions, {TINY_MAX_STEPS}-step limit",
                ref_min_score=TINY_REF[0], ref_max_score=TINY_REF[1])
    finally:
        collector.close()
    return TINY_HOPPER_ID


@pytest.fixture(scope="session")
def tiny_config(tiny_hopper_id) -> TinyConfig:
    return TinyConfig(tiny_hopper_id)


@pytest.fixture(scope="session")
def tiny_hopper(tiny_hopper_id):
    import minari
    return minari.load_dataset(tiny_hopper_id)


@pytest.fixture(scope="session")
def tiny_hopper_data(tiny_hopper_id):
    from rlmin.data import from_minari
    return from_minari(tiny_hopper_id)


def _box_for(arr) -> gym.spaces.Box:
    width = np.asarray(arr).shape[1]
    return gym.spaces.Box(-np.inf, np.inf, (width,), np.float32)


@pytest.fixture
def make_dataset():
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    def make(dataset_id: str, episodes: list[dict], observation_space=None, action_space=None,
             env=None, **metadata) -> str:
        buffers = []
        for i, ep in enumerate(episodes):
            T = len(ep["rewards"])
            term = ep.get("terminations", [False] * (T - 1) + [True])
            trunc = ep.get("truncations", [False] * T)
            buffers.append(EpisodeBuffer(
                id=i, observations=ep["observations"], actions=np.asarray(ep["actions"]),
                rewards=list(map(float, ep["rewards"])), terminations=list(map(bool, term)),
                truncations=list(map(bool, trunc))))
        if env is None and episodes:
            observation_space = observation_space or _box_for(episodes[0]["observations"])
            action_space = action_space or _box_for(episodes[0]["actions"])
        # Minari keeps ref scores only when it has an env to evaluate in: set them afterwards.
        refs = {k: metadata.pop(k) for k in ("ref_min_score", "ref_max_score") if k in metadata}
        with warnings.catch_warnings():
            _quiet()
            dataset = minari.create_dataset_from_buffers(
                dataset_id=dataset_id, buffer=buffers, env=env, observation_space=observation_space,
                action_space=action_space, algorithm_name="hand-made", author="rlmin tests",
                code_permalink="tests/conftest.py", description="hand-made test episodes",
                **metadata)
        if refs:
            dataset.storage.update_metadata(refs)
        return dataset_id

    return make


@pytest.fixture
def load_script(monkeypatch):
    scripts = Path(__file__).resolve().parent.parent / "scripts"

    def load(name: str):
        monkeypatch.syspath_prepend(str(scripts))
        spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
