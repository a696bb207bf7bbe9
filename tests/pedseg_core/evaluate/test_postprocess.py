"""Largest-component post-processing: stray islands of a bone go, each bone's main piece stays whole."""

import numpy as np

from pedseg_core.evaluate.metrics import case_metrics
from pedseg_core.evaluate.postprocess import keep_largest_components


def two_bones_with_islands() -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) [40, 40, 20]: bone 1 and bone 2 as blocks; the prediction adds a 5x5x4 island of
    bone 1 far away and a diagonal-touching voxel of bone 2 (26-connected: part of the bone)."""
    ref = np.zeros((40, 40, 20), np.uint8)
    ref[5:15, 5:15, 5:15] = 1
    ref[20:30, 20:30, 5:15] = 2
    pred = ref.copy()
    pred[33:38, 33:38, 15:19] = 1
    pred[30, 30, 15] = 2
    return pred, ref


def test_islands_are_removed_and_the_bones_kept():
    pred, ref = two_bones_with_islands()
    cleaned = keep_largest_components(pred, [1, 2, 3])
    assert cleaned.dtype == pred.dtype and cleaned.shape == pred.shape
    assert (cleaned[33:38, 33:38, 15:19] == 0).all()
    assert (cleaned[ref == 1] == 1).all() and (cleaned[ref == 2] == 2).all()
    assert cleaned[30, 30, 15] == 2  # touches bone 2 by a corner: the same component in 3D
    assert pred[35, 35, 16] == 1  # the input is not changed


def test_removing_an_island_lowers_hd95_and_keeps_dice():
    pred, ref = two_bones_with_islands()
    before = case_metrics(pred, ref, {"a": 1, "b": 2}, (1.0, 1.0, 2.0))
    after = case_metrics(keep_largest_components(pred, [1, 2]), ref, {"a": 1, "b": 2}, (1.0, 1.0, 2.0))
    assert after["hd95"]["a"] < before["hd95"]["a"] and after["assd"]["a"] < before["assd"]["a"]
    assert after["dice"]["a"] >= before["dice"]["a"]


def test_an_empty_prediction_is_returned_as_it_is():
    empty = np.zeros((8, 8, 8), np.uint8)
    assert (keep_largest_components(empty, [1, 2]) == 0).all()
