"""Statistics over runs (seeds) for honest tables: bootstrap confidence intervals and the IQM.

The choices, stated once here and in every report that uses them:

* **Confidence interval**: a percentile bootstrap of the mean over runs (Efron): draw ``n``
  runs with replacement ``n_resamples`` times (default 10,000), take the statistic of each
  resample, and report the 2.5% and 97.5% quantiles of those. The generator is numpy's
  ``default_rng(seed)`` with a fixed default seed, so a table is reproducible to the digit.
  It is numpy only, on purpose: scipy is not one of rlmin's dependencies, and a table should not
  change with whether it happens to be installed. (``scipy.stats.bootstrap(..., method=
  "percentile")`` computes the same interval from a different random stream; the tests compare
  the two when scipy is there.) With 3-5 seeds a percentile bootstrap is narrow (it cannot see
  more spread than the runs show): read it together with the number of runs.
* **Stratified bootstrap** (rliable's ``StratifiedIndependentBootstrap``, Agarwal et al. 2021),
  for one number over several tasks: each resample draws, within every task, as many runs as
  that task has, with replacement, and takes the statistic (the IQM) of the pooled draw. Tasks
  are never resampled, so every resample holds each task in its own share.
* **IQM** (interquartile mean): the mean of the middle 50% of the runs, where a run lying across
  the 25% or 75% boundary counts with the fraction of it that lies inside. Sorted values each
  cover an interval of width ``1/n`` on [0, 1]; each is weighted by its overlap with
  [0.25, 0.75], and the weights add up to 0.5. When ``n`` is a multiple of 4 this equals
  ``scipy.stats.trim_mean(x, 0.25)``, which is what rliable's ``aggregate_iqm`` (Agarwal et al.
  2021) calls; for other ``n`` ``trim_mean`` drops whole runs only (with 3 runs it drops none
  and gives the plain mean), so the two differ. We use the fractional form because our tables
  have 3 or 5 seeds.
* Spread over runs is the sample standard deviation (``ddof=1``); ``None`` for a single run.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["iqm", "bootstrap_ci", "stratified_bootstrap_ci", "summarize", "DEFAULT_RESAMPLES", "DEFAULT_SEED"]

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0


def _as_1d(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        x = x.reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"values must be finite, got {x.tolist()}")
    return x


def iqm(values, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean with fractional weights at the quartiles (module docstring).

    ``values``: an array; the IQM is taken along ``axis`` (a float for 1-d input). Raises
    ``ValueError`` on an empty axis.
    """
    x = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    if n == 0:
        raise ValueError("iqm of no values")
    lo = np.arange(n) / n
    hi = (np.arange(n) + 1) / n
    w = np.clip(np.minimum(hi, 0.75) - np.maximum(lo, 0.25), 0.0, None) / 0.5
    x = np.moveaxis(x, axis, -1)
    out = x @ w
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


def iqm_over_tasks(per_task: dict[str, Sequence[float]], **ci_kw) -> dict:
    """The IQM of all runs pooled over ``per_task`` ({task: runs}) with its stratified-bootstrap CI
    (strata: the tasks) and the pooled runs' ``n`` and ``mean``: an agent's headline number."""
    pooled = [float(v) for values in per_task.values() for v in values]
    low, high = stratified_bootstrap_ci(list(per_task.values()), "iqm", **ci_kw)
    return {"iqm": iqm(pooled), "ci_low": low, "ci_high": high, "n": len(pooled),
            "mean": sum(pooled) / len(pooled)}


def summarize(values: Sequence[float], confidence: float = 0.95,
              n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict:
    """``n``, ``mean``, ``std`` (ddof=1; None for one run), ``ci_low``/``ci_high`` (bootstrap of
    the mean), ``iqm`` and ``values`` of a set of per-run scores."""
    x = _as_1d(values)
    if x.size == 0:
        raise ValueError("summarize of no values")
    low, high = bootstrap_ci(x, "mean", confidence, n_resamples, seed)
    return {"n": int(x.size), "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if x.size > 1 else None,
            "ci_low": low, "ci_high": high, "confidence": confidence, "iqm": iqm(x),
            "values": x.tolist()}
