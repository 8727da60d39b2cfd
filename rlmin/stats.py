"""Statistics over runs (seeds) for honest tables: bootstrap confidence intervals and the IQM.

The choices, stated once here and in every report that uses them. They are rliable's
(Agarwal et al. 2021, ``rliable.metrics`` / ``rliable.library``), the field's own library:

* **IQM** (interquartile mean): exactly ``rliable.metrics.aggregate_iqm``, which is
  ``scipy.stats.trim_mean(x, proportiontocut=0.25, axis=None)``: sort the runs, drop
  ``int(0.25 * n)`` whole runs from each end, take the plain mean of the rest. With 3 runs
  nothing is dropped (the IQM is the mean), with 5-7 one run per side, with 8 two.
* **Confidence interval**: a percentile bootstrap (Efron): draw ``n`` runs with replacement
  ``n_resamples`` times (default 10,000), take the statistic of each resample, and report the
  2.5% and 97.5% quantiles of those (``np.quantile``'s linear interpolation, as arch's
  ``conf_int(method="percentile")`` that rliable calls). With 3-5 seeds a percentile bootstrap is
  narrow (it cannot see more spread than the runs show): read it together with the number of runs.
* **Stratified bootstrap** (rliable's ``get_interval_estimates`` with one array of runs per task,
  i.e. ``StratifiedIndependentBootstrap``), for one number over several tasks: each resample
  draws, within every task, as many runs as that task has, with replacement, and takes the
  statistic (the IQM) of the pooled draw. Tasks are never resampled (rliable's default
  ``task_bootstrap=False``), so every resample holds each task in its own share.
* Spread over runs is the sample standard deviation (``ddof=1``); ``None`` for a single run.

**Why our own numpy code and not rliable itself.** ``pip install rliable`` pulls arch,
statsmodels, pandas and seaborn (about 190 MB), and as released (rliable 1.2.0 caps
``arch<8``; arch 7.2 imports a private pandas helper whose signature pandas 3 changed) it does
not even import beside pandas 3. Its stratified bootstrap draws its indices from numpy's
*global* ``np.random`` and ignores the ``random_state`` it is given, so a table would depend on
whatever else seeded numpy; ours draws from ``default_rng(seed)`` and is reproducible to the
digit. It also loops in Python (about 0.4 ms a resample). The method is the same, and
tests/test_stats.py checks it against rliable (in the ``dev`` extra): the IQM to 1e-12, the
intervals to a tolerance that a fractional IQM or an unstratified bootstrap fails. numpy only:
scipy is not needed here.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["iqm", "bootstrap_ci", "stratified_bootstrap_ci", "seed_spread_ci", "iqm_over_tasks",
           "summarize", "ci_text", "DEFAULT_RESAMPLES", "DEFAULT_SEED"]

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0


def _as_1d(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        x = x.reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"values must be finite, got {x.tolist()}")
    return x


def iqm(values, axis: int | None = -1) -> np.ndarray | float:
    """Interquartile mean, rliable's ``aggregate_iqm``: ``scipy.stats.trim_mean(x, 0.25)``.

    ``values``: an array; the IQM is taken along ``axis`` (``None``: over all values, as
    rliable does over its runs x tasks matrix); a float when one value comes out. Sorts, drops
    ``int(0.25 * n)`` values from each end and averages the rest. Raises ``ValueError`` on an
    empty axis.
    """
    x = np.asarray(values, dtype=np.float64)
    if axis is None:
        x, axis = x.reshape(-1), -1
    n = x.shape[axis]
    if n == 0:
        raise ValueError("iqm of no values")
    cut = n // 4  # int(0.25 * n): what trim_mean drops from each end
    x = np.moveaxis(np.sort(x, axis=axis), axis, -1)
    out = x[..., cut:n - cut].mean(axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def _mean(x: np.ndarray, axis: int = -1):
    return x.mean(axis=axis)


_STATISTICS: dict[str, Callable] = {"mean": _mean, "iqm": iqm}


def bootstrap_ci(values: Sequence[float], statistic: str | Callable = "mean",
                 confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Percentile bootstrap confidence interval ``(low, high)`` of ``statistic`` over ``values``.

    ``statistic``: ``"mean"`` (default), ``"iqm"``, or a callable ``f(array, axis=-1)`` that
    reduces the last axis. One value gives the degenerate interval ``(v, v)``; no values raise
    ``ValueError``. Deterministic for a given ``seed``.
    """
    return stratified_bootstrap_ci([values], statistic, confidence, n_resamples, seed)


def stratified_bootstrap_ci(groups: Sequence[Sequence[float]], statistic: str | Callable = "iqm",
                            confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES,
                            seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Percentile CI of ``statistic`` over the pooled runs of ``groups`` (one list of runs per
    task), resampling runs within each group (module docstring). One group is the plain
    bootstrap of :func:`bootstrap_ci`, with the same random stream."""
    xs = [_as_1d(g) for g in groups]
    if not xs or any(x.size == 0 for x in xs):
        raise ValueError("a bootstrap needs at least one value in every group")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    fn = _STATISTICS[statistic] if isinstance(statistic, str) else statistic
    pooled = np.concatenate(xs)
    if all(x.size == 1 for x in xs):  # nothing to resample
        v = float(fn(pooled, axis=-1))
        return v, v
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    chunk = max(1, 1_000_000 // pooled.size)  # bound the index arrays' memory
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        draw = [x[rng.integers(0, x.size, size=(stop - start, x.size))] for x in xs]
        stats[start:stop] = fn(np.concatenate(draw, axis=-1), axis=-1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def seed_spread_ci(groups: Sequence[Sequence[float]], statistic: str | Callable = "iqm",
                   **ci_kw) -> tuple[float, float] | tuple[None, None]:
    """:func:`stratified_bootstrap_ci`, or ``(None, None)`` when a group holds a single run: the
    bootstrap resamples runs within each group, so a group of one adds no seed-to-seed spread,
    and the interval would be too narrow (of zero width when every group holds one run: one seed
    per dataset). Every reported CI goes through this; rliable would print the narrow one."""
    if any(len(_as_1d(g)) < 2 for g in groups):
        return None, None
    return stratified_bootstrap_ci(groups, statistic, **ci_kw)


def ci_text(low: float | None, high: float | None, signed: bool = False) -> str:
    """``[low, high]`` to one decimal, or why there is none (:func:`seed_spread_ci`)."""
    if low is None or high is None:
        return "no CI (1 run)"
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"[{f.format(low)}, {f.format(high)}]"


def iqm_over_tasks(per_task: dict[str, Sequence[float]], **ci_kw) -> dict:
    """The IQM of all runs pooled over ``per_task`` ({task: runs}) with its stratified-bootstrap CI
    (strata: the tasks; None where a task has one run) and the pooled runs' ``n`` and ``mean``:
    an agent's headline number."""
    pooled = [float(v) for values in per_task.values() for v in values]
    low, high = seed_spread_ci(list(per_task.values()), "iqm", **ci_kw)
    return {"iqm": iqm(pooled), "ci_low": low, "ci_high": high, "n": len(pooled),
            "mean": sum(pooled) / len(pooled)}


def summarize(values: Sequence[float], confidence: float = 0.95,
              n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict:
    """``n``, ``mean``, ``std`` (ddof=1; None for one run), ``ci_low``/``ci_high`` (bootstrap of
    the mean; None for one run), ``iqm`` and ``values`` of a set of per-run scores."""
    x = _as_1d(values)
    if x.size == 0:
        raise ValueError("summarize of no values")
    low, high = seed_spread_ci([x], "mean", confidence=confidence, n_resamples=n_resamples,
                               seed=seed)
    return {"n": int(x.size), "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if x.size > 1 else None,
            "ci_low": low, "ci_high": high, "confidence": confidence, "iqm": iqm(x),
            "values": x.tolist()}
