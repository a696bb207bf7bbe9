"""Dice, HD95 and ASSD per bone against hand-computed values."""

import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from pedseg_core.evaluate.metrics import case_metrics, summarize

BONES = {"a": 1, "b": 2}


def volumes():
    ref = np.zeros((10, 12, 8), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = 1  # 64 voxels
    pred[3:7, 2:6, 2:6] = 1  # shifted by one voxel along axis 0: overlap 48
    ref[7:9, 8:11, 1:3] = 2  # 12 voxels
    pred[7:9, 8:11, 1:3] = 2  # identical
    return pred, ref


def test_dice_matches_hand_computed_values():
    pred, ref = volumes()
    m = case_metrics(pred, ref, BONES, (1.0, 1.0, 1.0))
    assert m["dice"]["a"] == pytest.approx(2 * 48 / (64 + 64))
    assert m["dice"]["b"] == pytest.approx(1.0)
    assert m["hd95"]["b"] == 0.0 and m["assd"]["b"] == 0.0


def brute_force_distances(pred, ref, spacing):
    """Independent HD95/ASSD: surfaces as mask minus its erosion, all pairwise distances in mm."""
    surfaces = [np.argwhere(m & ~binary_erosion(m)) * np.asarray(spacing) for m in (pred, ref)]
    d = cdist(*surfaces)
    to_ref, to_pred = d.min(1), d.min(0)
    hd95 = max(np.percentile(to_ref, 95), np.percentile(to_pred, 95))
    return hd95, (to_ref.sum() + to_pred.sum()) / (len(to_ref) + len(to_pred))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 1.0, 1.0), (0.5, 0.7, 3.0)])
def test_distances_match_a_brute_force_computation_in_mm(spacing):
    pred, ref = volumes()
    m = case_metrics(pred, ref, BONES, spacing)
    hd95, assd = brute_force_distances(pred == 1, ref == 1, spacing)
    assert m["hd95"]["a"] == pytest.approx(hd95, rel=1e-5)
    assert m["assd"]["a"] == pytest.approx(assd, rel=1e-5)
    assert m["hd95"]["a"] == pytest.approx(spacing[0])  # the one-voxel shift is along axis 0


def test_missing_and_absent_bones():
    pred, ref = volumes()
    pred[pred == 2] = 0  # bone b missed entirely
    m = case_metrics(pred, ref, {"a": 1, "b": 2, "c": 3}, (1.0, 1.0, 1.0))
    assert m["dice"]["b"] == 0.0 and m["hd95"]["b"] is None and m["assd"]["b"] is None
    assert m["dice"]["c"] is None  # absent from both: not scored


def test_summary_means_skip_unscored_values():
    cases = {"x": {"dice": {"a": 0.5, "b": None}, "hd95": {"a": 1.0, "b": None}, "assd": {"a": 0.5, "b": None}},
             "y": {"dice": {"a": 1.0, "b": 0.8}, "hd95": {"a": 3.0, "b": 2.0}, "assd": {"a": 1.5, "b": 1.0}}}
    s = summarize(cases, ["a", "b"])
    assert s["dice"] == {"a": 0.75, "b": 0.8}
    assert s["hd95"] == {"a": 2.0, "b": 2.0}
    assert s["mean_dice"] == pytest.approx(0.775)
