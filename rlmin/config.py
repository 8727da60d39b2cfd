"""Experiment configuration: a typed schema, YAML files and ``key=value`` overrides.

OmegaConf structured configs do the merging and the type checks (a well-kept library instead
of a hand-written merger): an unknown key or a value of the wrong type is an error that names
the key. Files are merged left to right, then the overrides; a YAML file may list other files
under ``include:`` (paths relative to it), merged before its own keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlmin.errors import ConfigError
from rlmin.spec import DEFAULT_SEQ_LEN, SAMPLING_MODES


@dataclass
class DataConfig:
    # A Minari dataset id, a D4RL-v2 name (hopper-medium-v2), a task shorthand (hopper-medium),
    # or a local dataset path.
    dataset: str = "hopper-medium"
    # Task name for reference scores, target returns and the eval env; inferred when None.
    task: Optional[str] = None
    # Allow downloading a missing Minari dataset (needs the network).
    download: bool = False
    # Build a missing rlmin/<env>/<level> dataset from the behaviour policy the project ships.
    build_if_missing: bool = True
    # "segment": K-step segments, as DT trains; "episode": whole episodes from their first step.
    mode: str = "segment"
    # K for segments (also the agent's window); the maximum length for whole episodes.
    seq_len: int = DEFAULT_SEQ_LEN["segment"]
    # Segment mode: also give each batch up to this many steps that precede its segments, so a
    # recurrent agent starts them from the state carry acting would have (0: off).
    burn_in: int = 0


@dataclass
class TrainConfig:
    steps: int = 100_000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    # "matrices": no decay on norms, biases and embeddings (nanoGPT); "all": every parameter,
    # as DT's gym code (torch.optim.AdamW(model.parameters(), weight_decay=...)).
    weight_decay_scope: str = "matrices"
    warmup_steps: int = 10_000
    # After warmup: "constant" (DT's), or "cosine" / "linear" decay to lr * lr_floor at train.steps.
    lr_schedule: str = "constant"
    lr_floor: float = 0.1
    # Exponential moving average of the weights (its decay, e.g. 0.999; 0: off). When on, the
    # averaged weights are what is evaluated, checkpointed for acting and exported.
    ema: float = 0.0
    # data.mode=episode: size the batch in real timesteps, train.batch_size = round(N / mean
    # episode length) (at least 1), so whole-episode runs see the data segment runs see (0: off).
    batch_timesteps: int = 0
    grad_clip: float = 0.25
    seed: int = 0
    # "auto" picks CUDA when available.
    device: str = "auto"
    # bf16 autocast on CUDA (ignored on CPU).
    amp: bool = True
    # bf16 autocast on CPU (the scans stay float32). Pays only on CPUs with native bf16
    # (AVX-512 BF16, AMX); on an AVX2-only CPU a step ran 16x slower (docs/RESULTS.md).
    cpu_amp: bool = False
    compile: bool = False
    # Dropout masks from 16 random bits an element, not one float draw (rlmin/nn/dropout.py): a
    # CPU lever, the same model in expectation with other masks.
    fast_dropout: bool = False
    # Threads for CPU math; 0 leaves torch's default.
    num_threads: int = 0
    log_every: int = 100
    # Evaluate every N steps (0: only at the end).
    eval_every: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    progress: bool = True


@dataclass
class EvalConfig:
    episodes: int = 10
    # Envs stepped in parallel (0: min(episodes, 16)).
    n_envs: int = 0
    # Target returns (raw); null takes the task's defaults.
    target_returns: Optional[List[float]] = None
    # Targets as normalised scores (100 = the dataset's ref_max), turned into raw returns with the
    # dataset's references, so every dataset asks for the same fraction of its expert. Exclusive
    # with target_returns.
    target_scores: Optional[List[float]] = None
    # With train.ema: also evaluate the raw (not averaged) weights, as last_iterate_raw.
    raw_weights: bool = True
    seed: int = 10_000
    # Acting mode at evaluation; null uses the agent's.
    mode: Optional[str] = None
    # Time limit of an evaluation episode; 0 takes the task's (1000 for the MuJoCo tasks).
    max_episode_steps: int = 0


@dataclass
class Config:
    name: str = "run"
    # Where the run writes; null gives runs/<name>-<timestamp>.
    run_dir: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    # agent.name (a registered agent; unset: the one the installed packages register as
    # "default") plus that agent's own options, typed by its Options class.
    agent: Dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_CHOICES = {
    "data.mode": SAMPLING_MODES,
    "train.weight_decay_scope": ("matrices", "all"),
    "train.lr_schedule": ("constant", "cosine", "linear"),
}
_POSITIVE = ("data.seq_len", "train.steps", "train.batch_size", "train.lr", "train.log_every",
             "train.checkpoint_every", "train.keep_checkpoints", "eval.episodes")
_NON_NEGATIVE = ("train.warmup_steps", "train.weight_decay", "train.grad_clip", "train.eval_every",
                 "train.batch_timesteps", "train.lr_floor", "train.ema",
                 "train.num_threads", "eval.n_envs", "eval.max_episode_steps", "data.burn_in",
                 "train.seed", "eval.seed")
_SCHEMA_HINT = "See rlmin/config.py (or README.md, Config reference) for every key and its type."


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config include cycle: {' -> '.join(map(str, seen + (path,)))}")
    if not path.is_file():
        if seen:
            raise ConfigError(f"config file {seen[-1]} includes {path}, which does not exist; "
                              "include paths are relative to the including file.")
        raise ConfigError(f"config file not found: {path}. Pass a YAML file from configs/ "
                          "(e.g. configs/tasks/hopper-medium.yaml configs/backbones/mingru.yaml).")
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # YAML syntax
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys")
    includes = raw.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    parts = [_read_yaml(path.parent / inc, seen + (path,)) for inc in includes]
    return OmegaConf.merge(*parts, raw) if parts else raw


def load_config(files: list[str | Path] = (), overrides: list[str] = ()) -> Config:
    """Schema defaults <- YAML files (in order) <- ``key=value`` overrides; validated.

    Returns a read-only structured config (attribute access, typed).
    """
    merged = OmegaConf.structured(Config)
    source = "overrides"
    try:
        for f in files:
            source = str(f)
            merged = OmegaConf.merge(merged, _read_yaml(Path(f)))
        source = "overrides"
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        if merged.agent.get("name") is None:  # recorded in config.yaml, so a resume builds the same agent
            merged.agent.name = default_agent_name()
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        reason = str(e).splitlines()[0].strip()
        if not reason.endswith((".", "?", "!")):
            reason += "."
        if key.endswith("target_returns"):
            reason += " Write a list, e.g. eval.target_returns=[3600]."
        raise ConfigError(f"config key '{key}' (in {source}): {reason} {_SCHEMA_HINT}") from None
    validate(merged)
    OmegaConf.set_readonly(merged, True)
    return merged


def validate(cfg: DictConfig) -> None:
    """Value checks that types alone cannot express."""
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key '{key}' is {value!r}; choose one of {choices}")
    for key in _POSITIVE:
        if not OmegaConf.select(cfg, key) > 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {OmegaConf.select(cfg, key)}")
    for key in _NON_NEGATIVE:
        if OmegaConf.select(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {OmegaConf.select(cfg, key)}")
    targets = cfg.eval.target_returns
    if targets is not None and not all(math.isfinite(t) and t >= 0 for t in targets):
        raise ConfigError(f"config key 'eval.target_returns' must hold finite returns >= 0, "
                          f"got {list(targets)}")
    scores = cfg.eval.target_scores
    if scores is not None:
        if targets is not None:
            raise ConfigError("config keys 'eval.target_returns' and 'eval.target_scores' are both "
                              "set; give the targets one way (set the other to null)")
        if not len(scores) or not all(math.isfinite(s) and -1e4 < s < 1e4 for s in scores):
            raise ConfigError(f"config key 'eval.target_scores' must hold one or more finite "
                              f"normalised scores (100 = expert), got {list(scores)}")
    if targets is not None and not len(targets):
        raise ConfigError("config key 'eval.target_returns' is empty: give one or more returns, "
                          "or null for the task's")
    for key, values in (("eval.target_returns", targets), ("eval.target_scores", scores)):
        if values is not None and len(set(values)) != len(values):
            raise ConfigError(f"config key '{key}' has duplicates ({list(values)}): give each "
                              f"target once")
    if not cfg.train.lr_floor <= 1:
        raise ConfigError(f"config key 'train.lr_floor' is a fraction of train.lr in [0, 1], got "
                          f"{cfg.train.lr_floor}")
    if not cfg.train.ema < 1:
        raise ConfigError(f"config key 'train.ema' is a decay in [0, 1) (0: off, e.g. 0.999), "
                          f"got {cfg.train.ema}")
    if cfg.train.batch_timesteps and cfg.data.mode != "episode":
        raise ConfigError("config key 'train.batch_timesteps' sizes whole-episode batches: use "
                          "it with data.mode=episode (segment batches are train.batch_size x "
                          "data.seq_len)")
    if cfg.data.task is not None:
        from rlmin.task import all_tasks

        if cfg.data.task not in all_tasks():
            raise ConfigError(f"config key 'data.task' is {cfg.data.task!r}; known tasks: "
                              f"{', '.join(sorted(all_tasks()))}")
    _validate_agent(cfg)


def default_agent_name() -> str:
    """The name of the agent registered as ``default`` in ``rlmin.agents`` (pyproject.toml)."""
    from rlmin.registry import AGENTS, load_group

    agents = load_group(AGENTS)
    if "default" not in agents:
        raise ConfigError(f"config key 'agent.name' is not set and no agent is registered as "
                          f"the default: set agent.name to one of {', '.join(sorted(agents))}")
    return next((name for name, cls in sorted(agents.items())
                 if cls is agents["default"] and name != "default"), "default")


def agent_class(cfg: DictConfig):
    """The registered agent class named by ``cfg.agent.name``."""
    from rlmin.registry import AGENTS, RegistryError, get, names

    name = cfg.agent.get("name")
    try:
        return get(AGENTS, name)
    except RegistryError:
        raise ConfigError(f"config key 'agent.name' is {name!r}; registered agents: "
                          f"{', '.join(names(AGENTS)) or '(none)'}") from None


def agent_options(cfg: DictConfig):
    """The agent's ``Options`` from ``cfg.agent`` (all but ``name``): typed by OmegaConf from the
    dataclass, nested options (a decision agent's backbone_options) too, then checked by their
    ``__post_init__``; an error names the key (agent.backbone_options.expansion)."""
    from rlmin.errors import OptionError
    from rlmin.options import typed

    cls = agent_class(cfg)
    values = {k: v for k, v in OmegaConf.to_container(cfg.agent, resolve=True).items() if k != "name"}
    try:
        return typed(cls.Options, values, owner=f"agent {cfg.agent.name!r}")
    except OptionError as e:
        where = f"config key 'agent.{e.key}'" if e.key else f"agent {cfg.agent.name!r} options"
        raise ConfigError(f"{where}: {e}") from None


def _validate_agent(cfg: DictConfig) -> None:
    """Registered agent, its options and the eval acting mode: before any dataset is loaded."""
    if not isinstance(cfg.agent.get("name"), str):
        raise ConfigError("config key 'agent.name' must name a registered agent")
    options = agent_options(cfg)
    if cfg.eval.mode is not None:
        try:
            agent_class(cfg).check_act_mode(options, cfg.eval.mode)
        except ValueError as e:
            raise ConfigError(f"config key 'eval.mode': {e}") from None


def flat_keys(tree: dict, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf of a nested dict such as ``to_dict``'s (lists are values)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_dict(cfg: DictConfig) -> dict:
    """Plain dict (for checkpoints, results.json and the saved resolved config)."""
    return OmegaConf.to_container(cfg, resolve=True)


def from_dict(data: dict, overrides: list[str] = ()) -> Config:
    """Rebuild a validated config from ``to_dict`` output (e.g. from a checkpoint), with
    ``key=value`` overrides on top."""
    merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(data),
                             OmegaConf.from_dotlist(list(overrides)))
    if merged.agent.get("name") is None:
        merged.agent.name = default_agent_name()
    validate(merged)
    OmegaConf.set_readonly(merged, True)
    return merged


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
