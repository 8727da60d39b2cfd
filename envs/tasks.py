"""MuJoCo locomotion tasks on Gymnasium v5, with Minari's ``mujoco/*`` datasets.

Registered with rlmin through the ``rlmin.tasks`` entry point (``locomotion = envs.tasks:TASKS``).

Reference returns. Minari's v5 MuJoCo datasets carry no ``ref_min_score``/``ref_max_score``
(Minari issue #323), and D4RL-v2's numbers belong to the v2 envs, so the table's are:

* ref_min: the mean return of a uniform-random policy over 20 episodes, measured here with the
  real v5 env: ``env.action_space.seed(0)``; episode i reset with ``seed=i`` (i = 0..19); actions
  ``env.action_space.sample()`` until terminated or truncated at 1000 steps (gymnasium 1.4,
  mujoco env defaults). Measured values, mean ± std (mean episode length):
  Hopper-v5 24.80 ± 27.00 (27.5 steps), HalfCheetah-v5 -260.79 ± 47.52 (1000),
  Walker2d-v5 2.23 ± 8.07 (21.3).
* ref_max: the expert policy's return on the Minari model card of ``mujoco/<env>/expert-v0``:
  Hopper 4098, HalfCheetah 17642, Walker2d 6957.

Ant-v5 is left out: its Minari model-card expert return was not available here to cite.
Datasets built locally by ``envs.builder`` (ids ``rlmin/<task>/<level>-v0``) carry their own
reference scores in their metadata, which take precedence over this table.

Published scores. ``published`` holds the Decision Transformer paper's normalised scores. They are
D4RL-v2 numbers: v2 envs, D4RL's datasets and D4RL's reference returns (e.g. hopper -20.27 /
3234.3), so a report shows them only in a column labelled D4RL-v2, beside, never among, rlmin's
Gymnasium-v5 scores.
"""
from __future__ import annotations

from rlmin.task import PublishedScore, Task

_RANDOM_HOW = ("mean return of a uniform-random policy over 20 episodes of {env} measured by rlmin "
               "(action_space.seed(0), reset seeds 0..19)")
_EXPERT_HOW = ("expert return from the Minari model card of mujoco/{name}/expert-v0; Minari's v5 "
               "datasets carry no reference scores (Minari issue #323). These are not D4RL-v2 "
               "reference returns.")
_DT_PAPER = ("Chen et al. 2021, Decision Transformer (arXiv:2106.01345), D4RL gym results, "
             "normalised with D4RL's reference returns")


def _dt_paper(scores: dict[str, float]) -> tuple[PublishedScore, ...]:
    return tuple(PublishedScore("DT", level, score, "D4RL-v2", _DT_PAPER)
                 for level, score in scores.items())


def _task(name: str, env_id: str, obs_dim: int, act_dim: int, ref_min: float, ref_max: float,
          targets: tuple[float, float], dt_paper: dict[str, float]) -> Task:
    return Task(
        name=name,
        env_id=env_id,
        max_episode_steps=1000,
        dataset_ids={level: f"mujoco/{name}/{level}-v0" for level in ("simple", "medium", "expert")},
        ref_min=ref_min,
        ref_max=ref_max,
        ref_source=(f"ref_min {ref_min:g}: " + _RANDOM_HOW.format(env=env_id)
                    + f"; ref_max {ref_max:g}: " + _EXPERT_HOW.format(name=name)),
        target_returns=targets,  # Decision Transformer's targets (kzl), raw return units
        obs_dim=obs_dim,
        act_dim=act_dim,
        published=_dt_paper(dt_paper),
    )


HOPPER = _task("hopper", "Hopper-v5", 11, 3, ref_min=24.80, ref_max=4098.0,
               targets=(3600.0, 1800.0),
               dt_paper={"medium": 67.6, "medium-replay": 82.7, "medium-expert": 107.6})
HALFCHEETAH = _task("halfcheetah", "HalfCheetah-v5", 17, 6, ref_min=-260.79, ref_max=17642.0,
                    targets=(12000.0, 6000.0),
                    dt_paper={"medium": 42.6, "medium-replay": 36.6, "medium-expert": 86.8})
WALKER2D = _task("walker2d", "Walker2d-v5", 17, 6, ref_min=2.23, ref_max=6957.0,
                 targets=(5000.0, 2500.0),
                 dt_paper={"medium": 74.0, "medium-replay": 66.6, "medium-expert": 108.1})

TASKS: tuple[Task, ...] = (HOPPER, HALFCHEETAH, WALKER2D)
