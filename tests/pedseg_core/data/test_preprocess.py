"""Slicing along the thick-slice axis, resampling and the way back to the input geometry."""

import numpy as np
import pytest
import torch

from pedseg_core.config import DataConfig
from pedseg_core.data.geometry import through_plane_axis
from pedseg_core.data.preprocess import logits_to_volume, prepare_image, prepare_label


@pytest.mark.parametrize("spacing, axis", [((0.5, 0.5, 3.0), 2), ((4.0, 0.6, 0.6), 0), ((0.7, 3.5, 0.7), 1),
                                           ((1.0, 1.0, 1.0), 2)])
def test_through_plane_axis_is_the_largest_spacing(spacing, axis):
    assert through_plane_axis(spacing) == axis


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_and_back_keep_shape_and_labels(axis):
    cfg = DataConfig(image_size=64)
    shape = [40, 52, 36]
    shape[axis] = 7
    label = np.zeros(shape, np.uint8)
    index = [slice(10, 30), slice(12, 40), slice(8, 28)]
    index[axis] = slice(2, 5)
    label[tuple(index)] = 2
    image = np.random.default_rng(0).normal(100, 5, shape).astype(np.float32) + 300 * (label > 0)
    spacing = [0.6, 0.6, 0.6]
    spacing[axis] = 3.0
    slices, geometry = prepare_image(image, tuple(spacing), cfg)
    assert slices.shape == (7, 1, 64, 64) and geometry.axis == axis
    assert 0.0 <= float(slices.min()) and float(slices.max()) <= 1.0
    label_slices = prepare_label(label, geometry, cfg)
    assert label_slices.shape == (7, 64, 64) and set(label_slices.unique().tolist()) == {0, 2}
    # perfect logits for the label slices map back to the original labels (up to resampling at edges)
    logits = torch.nn.functional.one_hot(label_slices.long(), 3).permute(0, 3, 1, 2).float() * 10
    back = logits_to_volume(logits, geometry)
    assert back.shape == tuple(shape) and back.dtype == np.uint8
    agreement = (back == label).mean()
    assert agreement > 0.98
