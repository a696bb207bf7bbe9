"""Shared fixtures: tiny synthetic nnU-Net v2 raw datasets."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

DEFAULT_LABELS = {"background": 0, "a": 1, "b": 2}


def _affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel-to-world affine: the given voxel size, rotated 20 degrees about z, with a non-zero origin."""
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = (-40.0, 25.0, 12.5)
    return affine


def _label_volume(shape: tuple[int, int, int], values: list[int], rng: np.random.Generator) -> np.ndarray:
    """One shape per label value along the first axis: boxes for odd values, ellipsoids for even ones."""
    label = np.zeros(shape, dtype=np.uint8)
    grid = np.indices(shape)
    size = np.array(shape, dtype=float)
    for index, value in enumerate(values):
        center = size * rng.uniform(0.4, 0.6, size=3)
        center[0] = size[0] * (index + 1) / (len(values) + 1)
        radius = np.maximum(size * [0.5 / (len(values) + 1), 0.25, 0.3], 1.0)
        offsets = np.abs(grid - center.reshape(3, 1, 1, 1)) / radius.reshape(3, 1, 1, 1)
        inside = offsets.max(axis=0) <= 1 if value % 2 else (offsets**2).sum(axis=0) <= 1
        label[inside] = value
    return label


@pytest.fixture
def write_dataset(tmp_path_factory):
    """Factory writing a valid tiny nnU-Net v2 dataset (cases "case_000"..., "test_000"...); returns its root.

    ``root`` defaults to a fresh temporary folder; ``test_labels=False`` leaves out labelsTs.
    """

    def write(
        root: Path | None = None,
        n_train: int = 2,
        n_test: int = 1,
        shape: tuple[int, int, int] = (20, 24, 6),
        spacing: tuple[float, float, float] = (0.8, 0.8, 3.0),
        labels: dict[str, int] | None = None,
        seed: int = 0,
        test_labels: bool = True,
    ) -> Path:
        root = Path(root) if root is not None else tmp_path_factory.mktemp("Dataset001_Test")
        labels = dict(DEFAULT_LABELS if labels is None else labels)
        rng = np.random.default_rng(seed)
        affine = _affine(spacing)
        foreground = sorted(value for value in labels.values() if value != 0)
        cases = [("imagesTr", "labelsTr", f"case_{i:03d}") for i in range(n_train)]
        cases += [("imagesTs", "labelsTs" if test_labels else None, f"test_{i:03d}") for i in range(n_test)]
        for images_dir, labels_dir, case_id in cases:
            label = _label_volume(shape, foreground, rng)
            image = (100.0 + 150.0 * label + rng.normal(0.0, 10.0, shape)).astype(np.float32)
            (root / images_dir).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(image, affine), root / images_dir / f"{case_id}_0000.nii.gz")
            if labels_dir is not None:
                (root / labels_dir).mkdir(exist_ok=True)
                nib.save(nib.Nifti1Image(label, affine), root / labels_dir / f"{case_id}.nii.gz")
        metadata = {
            "name": root.name,
            "channel_names": {"0": "MRI"},
            "labels": labels,
            "numTraining": n_train,
            "file_ending": ".nii.gz",
        }
        (root / "dataset.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        return root

    return write
