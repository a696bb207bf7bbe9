"""Post-processing: stray islands of a bone go, its main pieces stay whole."""

import numpy as np
import pytest

from pedseg_core.config import build_config, parse_overrides
from pedseg_core.errors import PedsegError
from pedseg_core.evaluate.metrics import case_metrics
from pedseg_core.evaluate.postprocess import keep_largest_components


def two_bones_with_islands() -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) [40, 40, 20]: bone 1 and bone 2 as blocks; the prediction adds a 4x4x4 island of
    bone 1 far away (0.064 of the bone) and a diagonal-touching voxel of bone 2 (26-connected: part of the bone)."""
    ref = np.zeros((40, 40, 20), np.uint8)
    ref[5:15, 5:15, 5:15] = 1
    ref[20:30, 20:30, 5:15] = 2
    pred = ref.copy()
    pred[33:37, 33:37, 15:19] = 1
    pred[30, 30, 15] = 2
    return pred, ref


def test_islands_are_removed_and_the_bones_kept():
    pred, ref = two_bones_with_islands()
    cleaned = keep_largest_components(pred, [1, 2, 3])
    assert cleaned.dtype == pred.dtype and cleaned.shape == pred.shape
    assert (cleaned[33:37, 33:37, 15:19] == 0).all()
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


def test_a_bone_split_in_two_large_fragments_keeps_both():
    """The scapula's blade: the network splits it into two large pieces; both are bone, only the speck goes."""
    pred = np.zeros((40, 40, 20), np.uint8)
    pred[2:20, 2:20, 2:10] = 2  # 2592 voxels
    pred[25:35, 25:35, 2:10] = 2  # 800 voxels: 0.31 of the largest, kept
    pred[37:39, 37:39, 15:17] = 2  # 8 voxels: an island, removed
    cleaned = keep_largest_components(pred, [2])
    assert (cleaned[25:35, 25:35, 2:10] == 2).all() and (cleaned[2:20, 2:20, 2:10] == 2).all()
    assert (cleaned[37:39, 37:39, 15:17] == 0).all()
    largest_only = keep_largest_components(pred, [2], min_fraction=1.0)
    assert (largest_only[25:35, 25:35, 2:10] == 0).all() and (largest_only[2:20, 2:20, 2:10] == 2).all()


def test_a_fraction_outside_0_1_is_refused_in_one_line():
    with pytest.raises(PedsegError, match=r"eval.component_min_fraction must be in \(0, 1\]"):
        build_config("tiny", overrides=parse_overrides(["eval.component_min_fraction=0"]))
