"""rlmin.stats: the IQM on hand-computed examples, and the bootstrap CI's basic properties."""
from __future__ import annotations

import numpy as np
import pytest

from rlmin import stats


@pytest.mark.parametrize("values, expected", [
    ([1, 2, 3, 4], 2.5),              # n=4: the middle two, whole
    ([4, 1, 3, 2], 2.5),              # order does not matter
    ([0, 1, 10], 28 / 12),            # n=3: weights 1/6, 2/3, 1/6 -> (0 + 2/3 + 10/6)
    ([0, 1, 2, 4, 100], 2.3),         # n=5: weights 0, .3, .4, .3, 0 -> .3 + .8 + 1.2
    ([7.0], 7.0),                     # one run: itself
    ([1, 9], 5.0),                    # two runs: half of each
    ([1, 2, 3, 4, 5, 6, 7, 1000], 4.5),  # n=8: runs 3..6, the outlier drops out
])
def test_iqm_hand_computed(values, expected):
    assert stats.iqm(values) == pytest.approx(expected)


def test_iqm_along_axis_and_empty():
    x = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(stats.iqm(x, axis=-1), [1.5, 5.5, 9.5])
    np.testing.assert_allclose(stats.iqm(x.T, axis=0), [1.5, 5.5, 9.5])
    with pytest.raises(ValueError):
        stats.iqm([])


def test_iqm_matches_trim_mean_for_multiples_of_four_only():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (4, 8, 12, 20):
        x = rng.normal(size=n)
        assert stats.iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25))
    x = [0, 1, 2, 4, 100]  # n=5: trim_mean drops one whole run per side, we weight fractionally
    assert scipy_stats.trim_mean(x, 0.25) == pytest.approx(7 / 3)
    assert stats.iqm(x) == pytest.approx(2.3)


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
    assert one["std"] is None and one["ci_low"] == one["ci_high"] == 5.0


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
