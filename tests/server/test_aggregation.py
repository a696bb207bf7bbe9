"""Aggregation arithmetic: the example-weighted mean, and the robust coordinate-wise median and trimmed mean."""

import numpy as np
import pytest

from server.aggregation import aggregate, weighted_mean


def test_weighted_mean_by_examples():
    a, b = np.array([1.0, 2.0], np.float32), np.array([4.0, 8.0], np.float32)
    out = weighted_mean([a, b], [1, 2])
    np.testing.assert_allclose(out, [3.0, 6.0])
    assert out.dtype == np.float32


def test_integer_arrays_stay_integers():
    out = weighted_mean([np.array(3, np.int64), np.array(6, np.int64)], [1, 1])
    assert out.dtype == np.int64 and out.shape == () and int(out) == 4  # 4.5 rounds to even


SITES = [np.array([1.0, 10.0], np.float32), np.array([2.0, 20.0], np.float32), np.array([3.0, 30.0], np.float32),
         np.array([4.0, 40.0], np.float32), np.array([1000.0, -1000.0], np.float32)]  # the last one is an outlier


@pytest.mark.parametrize("method, expected", [("median", [3.0, 20.0]), ("trimmed-mean", [3.0, 20.0])])
def test_robust_aggregates_are_coordinate_wise_and_resist_one_outlier(method, expected):
    out = aggregate(SITES, [1, 1, 1, 1, 100], method, trim_fraction=0.2)  # weights do not count here
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32
    assert aggregate(SITES, [1] * 5, "mean", 0.2)[0] == pytest.approx(202.0)  # the mean is dragged away
