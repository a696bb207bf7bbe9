"""Shared-weight aggregation arithmetic."""

import numpy as np

from server.strategy import weighted_mean


def test_weighted_mean_by_examples():
    a, b = np.array([1.0, 2.0], np.float32), np.array([4.0, 8.0], np.float32)
    out = weighted_mean([a, b], [1, 2])
    np.testing.assert_allclose(out, [3.0, 6.0])
    assert out.dtype == np.float32


def test_integer_arrays_stay_integers():
    out = weighted_mean([np.array(3, np.int64), np.array(6, np.int64)], [1, 1])
    assert out.dtype == np.int64 and out.shape == () and int(out) == 4  # 4.5 rounds to even
