"""rlmin.stats: the IQM on hand-computed examples, the bootstrap CI's basic properties, and both
checked against rliable (Agarwal et al. 2021), whose method rlmin.stats reproduces."""
from __future__ import annotations

import os

import numpy as np
import pytest

from rlmin import stats


# rliable's IQM is scipy.stats.trim_mean(x, 0.25): it drops int(n / 4) whole runs from each end
# (none of 3, one of 5-7 per side), where rlmin once weighted the runs across the quartiles.
@pytest.mark.parametrize("values, expected", [
    ([1, 2, 3, 4], 2.5),              # n=4: the middle two
    ([4, 1, 3, 2], 2.5),              # order does not matter
    ([0, 1, 10], 11 / 3),             # n=3: nothing dropped, the plain mean (fractional: 28/12)
    ([0, 1, 2, 4, 100], 7 / 3),       # n=5: one dropped per side -> (1 + 2 + 4) / 3 (fractional: 2.3)
    ([7.0], 7.0),                     # one run: itself
    ([1, 9], 5.0),                    # two runs: their mean
    ([1, 2, 3, 4, 5, 6, 7, 1000], 4.5),  # n=8: runs 3..6, the outlier drops out
    ([5, 1, 9, 3, 7, 100], 6.0),      # n=6: one per side dropped -> (3 + 5 + 7 + 9) / 4
])
def test_iqm_hand_computed(values, expected):
    assert stats.iqm(values) == pytest.approx(expected)


def test_iqm_along_axis_and_empty():
    x = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(stats.iqm(x, axis=-1), [1.5, 5.5, 9.5])
    np.testing.assert_allclose(stats.iqm(x.T, axis=0), [1.5, 5.5, 9.5])
    with pytest.raises(ValueError):
        stats.iqm([])


def test_iqm_is_trim_mean_for_every_n():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in range(1, 41):
        x = rng.normal(size=n)
        assert stats.iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25), rel=1e-12, abs=1e-12)
    m = rng.normal(size=(5, 3))  # axis=None: over every value, as rliable over runs x tasks
    assert stats.iqm(m, axis=None) == pytest.approx(scipy_stats.trim_mean(m, 0.25, axis=None))


def test_ci_covers_the_mean_and_is_deterministic():
    x = [10.0, 12.0, 9.0, 15.0, 11.0]
    lo, hi = stats.bootstrap_ci(x, seed=3)
    assert lo < np.mean(x) < hi
    assert min(x) <= lo and hi <= max(x)
    assert stats.bootstrap_ci(x, seed=3) == (lo, hi)
    y = np.random.default_rng(0).normal(size=7)  # continuous: another seed moves the quantiles
    assert stats.bootstrap_ci(y, seed=3) == stats.bootstrap_ci(y, seed=3)
    assert stats.bootstrap_ci(y, seed=3) != stats.bootstrap_ci(y, seed=4)


def test_ci_shrinks_with_more_data():
    rng = np.random.default_rng(1)
    widths = []
    for n in (5, 50, 500):
        lo, hi = stats.bootstrap_ci(rng.normal(size=n), n_resamples=2000)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # roughly 1/sqrt(n): 2 * 1.96 / sqrt(500) ~ 0.18
    assert 0.1 < widths[2] < 0.26


def test_ci_edge_cases():
    assert stats.bootstrap_ci([3.0]) == (3.0, 3.0)
    assert stats.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError):
        stats.bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError):
        stats.bootstrap_ci([1.0, 2.0], confidence=1.0)
    lo, hi = stats.bootstrap_ci([1.0, 2.0, 3.0, 10.0], statistic="iqm")
    assert 1.0 <= lo <= hi <= 10.0


def test_ci_agrees_with_scipy_percentile_bootstrap():
    scipy_stats = pytest.importorskip("scipy.stats")
    x = np.array([3.1, 4.7, 2.2, 5.9, 4.0, 3.3])
    ours = stats.bootstrap_ci(x, n_resamples=4000, seed=0)
    theirs = scipy_stats.bootstrap((x,), np.mean, method="percentile", n_resamples=4000,
                                   confidence_level=0.95, rng=np.random.default_rng(7))
    ci = theirs.confidence_interval
    assert ours[0] == pytest.approx(ci.low, abs=0.15)
    assert ours[1] == pytest.approx(ci.high, abs=0.15)


def test_summarize():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0], n_resamples=500)
    assert s["n"] == 4 and s["mean"] == 2.5 and s["iqm"] == 2.5
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert s["ci_low"] < 2.5 < s["ci_high"]
    one = stats.summarize([5.0])
    assert one["std"] is None and one["ci_low"] is None and one["ci_high"] is None


def test_no_ci_where_a_dataset_has_one_run():
    """One seed per dataset: the stratified bootstrap has nothing to resample and would give a
    zero-width interval that reads as certainty ("above" DT by 0.1). Reported CIs are None
    there, and where any dataset has one run (it would be too narrow)."""
    one_seed = [[40.0], [60.0], [80.0]]
    assert stats.stratified_bootstrap_ci(one_seed) == (60.0, 60.0)  # rliable's own answer
    assert stats.seed_spread_ci(one_seed) == (None, None)
    assert stats.seed_spread_ci([[40.0, 45.0], [60.0]]) == (None, None)
    both = [[40.0, 45.0, 50.0], [60.0, 70.0]]
    assert stats.seed_spread_ci(both, seed=3) == stats.stratified_bootstrap_ci(both, seed=3)
    no_ci = stats.iqm_over_tasks({"a": [40.0], "b": [60.0]})
    assert no_ci["iqm"] == 50.0 and no_ci["ci_low"] is None
    assert stats.ci_text(None, None) == "no CI (1 run)"
    assert stats.ci_text(-1.25, 2.0, signed=True) == "[-1.2, +2.0]"


def test_stratified_ci_resamples_within_each_group():
    # each resample keeps 3 zeros and 3 hundreds: the pooled IQM is always 50
    assert stats.stratified_bootstrap_ci([[0.0, 0.0, 0.0], [100.0, 100.0, 100.0]]) == (50.0, 50.0)
    lo, hi = stats.bootstrap_ci([0.0, 0.0, 0.0, 100.0, 100.0, 100.0], "iqm", n_resamples=2000)
    assert lo < 50.0 < hi  # pooled without strata, the mix of the two varies
    # the extremes of a stratified draw: all 10s with all 50s (IQM 30), all 30s with all 70s (50)
    lo, hi = stats.stratified_bootstrap_ci([[10.0, 20.0, 30.0], [50.0, 60.0, 70.0]], n_resamples=2000)
    assert stats.iqm([10, 20, 30, 50, 60, 70]) == pytest.approx(40.0)
    assert 30.0 - 1e-9 <= lo < 40.0 < hi <= 50.0 + 1e-9
    assert stats.stratified_bootstrap_ci([[1.0, 2.0], [3.0]], seed=1) == \
        stats.stratified_bootstrap_ci([[1.0, 2.0], [3.0]], seed=1)


def test_one_group_is_the_plain_bootstrap():
    x = np.random.default_rng(2).normal(size=9)
    assert stats.stratified_bootstrap_ci([x], "mean", seed=5) == stats.bootstrap_ci(x, seed=5)
    assert stats.stratified_bootstrap_ci([[4.0], [6.0]]) == (5.0, 5.0)  # nothing to resample
    with pytest.raises(ValueError, match="every group"):
        stats.stratified_bootstrap_ci([[1.0], []])
    with pytest.raises(ValueError, match="every group"):
        stats.stratified_bootstrap_ci([])


# ----------------------------------------------------------------------------- against rliable
def _rliable():
    """rliable's ``library`` and ``metrics``. It is in the dev extra, so CI (CI=true) imports it and
    never skips these tests; elsewhere they are skipped without it."""
    if os.environ.get("CI"):
        from rliable import library, metrics
    else:
        library = pytest.importorskip("rliable.library")
        metrics = pytest.importorskip("rliable.metrics")
    return library, metrics


def _fractional_iqm(x, axis=-1):
    """The IQM rlmin.stats used to compute (runs across the quartiles weighted by the fraction
    inside): kept here only to show that the rliable comparison below would catch it."""
    x = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    w = np.clip(np.minimum(np.arange(1, n + 1) / n, 0.75) - np.maximum(np.arange(n) / n, 0.25),
                0.0, None) / 0.5
    return np.moveaxis(x, axis, -1) @ w


@pytest.fixture
def global_numpy_seed():
    """rliable draws its bootstrap indices from numpy's global stream (np.random.choice), not from
    the random_state it is given: seed that stream, and put it back as it was afterwards."""
    state = np.random.get_state()
    yield np.random.seed
    np.random.set_state(state)


def _rliable_ci(library, metrics, groups, reps):
    """rliable's stratified-bootstrap percentile CI of the IQM over ``groups`` (a list of one array
    of runs per task: StratifiedIndependentBootstrap)."""
    _, ci = library.get_interval_estimates(
        {"agent": [np.asarray(g, dtype=np.float64) for g in groups]},
        lambda *tasks: np.array([metrics.aggregate_iqm(np.concatenate(tasks))]),
        method="percentile", reps=reps, confidence_interval_size=0.95)
    return tuple(float(v) for v in ci["agent"].ravel())


def test_iqm_equals_rliables_to_the_digit():
    _, metrics = _rliable()
    rng = np.random.default_rng(42)
    checked = 0
    for n in range(3, 41):  # multiples of 4 and not, ties (rounded values) and outliers
        for i in range(6):
            x = rng.normal(rng.uniform(-50, 150), rng.uniform(0.1, 40), size=n)
            if i % 3 == 1:
                x = np.round(x)
            if i % 3 == 2:
                x[rng.integers(n)] *= 50
            assert abs(stats.iqm(x) - metrics.aggregate_iqm(x)) <= 1e-12 * max(1.0, np.abs(x).max())
            checked += 1
    scores = rng.normal(size=(5, 9))  # rliable's layout: runs x tasks, the IQM over all of it
    assert stats.iqm(scores, axis=None) == pytest.approx(metrics.aggregate_iqm(scores), rel=1e-12)
    assert stats.iqm(scores.T.reshape(-1)) == pytest.approx(metrics.aggregate_iqm(scores), rel=1e-12)
    assert checked == 38 * 6
    # the fractional IQM rlmin used before differs wherever n is not a multiple of 4
    assert abs(_fractional_iqm([0, 1, 2, 4, 100]) - metrics.aggregate_iqm(np.array([0, 1, 2, 4, 100]))) > 0.03


def test_stratified_ci_is_rliables_on_the_same_draws(monkeypatch):
    """rliable fed our very resampling indices gives our interval to the digit: the same strata, the
    same statistic of the pooled draw, the same percentile interpolation. (rliable asks
    np.random.choice(n_task, (n_task,)) once per resample and task, in that order; ours draws one
    (n_resamples, n_task) block per task from default_rng(seed): one block below 1e6 values.)"""
    library, metrics = _rliable()
    rng = np.random.default_rng(7)
    reps = 1000
    for case, sizes in enumerate([(5,), (3, 3, 3), (3, 5, 4), (7, 3), (4, 4, 4, 4)]):
        groups = [rng.normal(rng.uniform(0, 100), rng.uniform(2, 25), size=n) for n in sizes]
        ours = stats.stratified_bootstrap_ci(groups, "iqm", n_resamples=reps, seed=case)
        draw_rng = np.random.default_rng(case)
        draws = [draw_rng.integers(0, n, size=(reps, n)) for n in sizes]
        calls = iter([(t, r) for r in range(reps) for t in range(len(sizes))])

        def choice(n, size, replace=True, _draws=draws, _calls=calls, _sizes=sizes):
            t, r = next(_calls)
            assert replace and n == _sizes[t] and tuple(np.atleast_1d(size)) == (n,)
            return _draws[t][r]

        with monkeypatch.context() as m:
            m.setattr(np.random, "choice", choice)
            theirs = _rliable_ci(library, metrics, groups, reps)
        assert next(calls, None) is None  # rliable drew exactly reps x tasks times
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
        if sum(sizes) % 4:  # the fractional IQM on the same draws is not rliable's
            frac = stats.stratified_bootstrap_ci(groups, _fractional_iqm, n_resamples=reps, seed=case)
            assert np.abs(np.subtract(frac, theirs)).max() > 1e-6


def test_stratified_ci_agrees_with_rliable_on_its_own_random_stream(global_numpy_seed):
    """rliable with its own random draws (5,000 resamples) against ours (100,000): within 0.5% of
    the runs' range. The fractional IQM (rlmin's old one) and an unstratified bootstrap of the
    pooled runs, on the same data, miss by more than twice that."""
    library, metrics = _rliable()
    groups = [[12.0, 15.0, 31.0], [40.0, 44.0, 47.0, 70.0], [81.0, 83.0, 99.0]]  # 10 runs, 3 tasks
    tol = 0.005 * (99.0 - 12.0)
    global_numpy_seed(0)
    theirs = np.array(_rliable_ci(library, metrics, groups, reps=5000))
    ours = stats.stratified_bootstrap_ci(groups, "iqm", n_resamples=100_000)
    assert np.abs(np.subtract(ours, theirs)).max() < tol
    fractional = stats.stratified_bootstrap_ci(groups, _fractional_iqm, n_resamples=100_000)
    assert np.abs(np.subtract(fractional, theirs)).max() > 2 * tol
    unstratified = stats.bootstrap_ci(sum(groups, []), "iqm", n_resamples=100_000)
    assert np.abs(np.subtract(unstratified, theirs)).max() > 2 * tol
