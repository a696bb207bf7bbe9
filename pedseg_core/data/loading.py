"""Cases of a validated dataset -> in-memory 2D training slices; train / evaluation splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import partition_dataset

from pedseg_core.config import DataConfig
from pedseg_core.data.geometry import voxel_spacing
from pedseg_core.data.nifti import read_nifti
from pedseg_core.data.nnunet import Case, RawDataset
from pedseg_core.data.preprocess import prepare_image, prepare_label
from pedseg_core.data.sampling import SliceSet
from pedseg_core.errors import PedsegError
from pedseg_core.progress import progress_bar


def read_case(case: Case) -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...], np.ndarray]:
    """(image [X, Y, Z] float32, label [X, Y, Z] uint8 or None, spacing in mm, affine) of a validated case."""
    image, img = read_nifti(case.image)
    label = None if case.label is None else read_nifti(case.label)[0].astype(np.uint8)
    return image.astype(np.float32, copy=False), label, voxel_spacing(img.affine), img.affine


def load_slice_set(cases: Sequence[Case], cfg: DataConfig, desc: str | None = None) -> SliceSet:
    """Every slice of every labeled case: images [N, 1, S, S] float32, labels [N, S, S] uint8, and the index of
    the case each slice comes from [N]."""
    images, labels, owners = [], [], []
    for index, case in enumerate(progress_bar(cases, desc, desc is not None, leave=False, unit="case")):
        image, label, spacing, _ = read_case(case)
        slices, geometry = prepare_image(image, spacing, cfg)
        images.append(slices)
        labels.append(prepare_label(label, geometry, cfg))
        owners.append(torch.full((len(slices),), index, dtype=torch.long))
    return SliceSet(torch.cat(images), torch.cat(labels), torch.cat(owners))


def split_cases(dataset: RawDataset, cfg: DataConfig, seed: int) -> tuple[list[Case], list[Case]]:
    """(training cases, evaluation cases). With `cfg.folds` > 1: fold `cfg.fold` of a seeded k-fold
    cross-validation over the training cases. Otherwise the labeled test split when the dataset has one, else a
    seeded hold-out of `cfg.validation_fraction` of the training cases (at least one, never all)."""
    cases = list(dataset.train)
    if cfg.folds > 1:
        if len(cases) < cfg.folds:
            raise PedsegError(f"{dataset.root}: {len(cases)} training cases cannot make {cfg.folds} folds")
        folds = partition_dataset(list(range(len(cases))), num_partitions=cfg.folds, shuffle=True, seed=seed)
        held = set(folds[cfg.fold])
    else:
        labeled_test = [c for c in dataset.test if c.label is not None]
        if labeled_test:
            return cases, labeled_test
        if len(cases) < 2:
            return cases, cases
        n_eval = min(max(1, round(cfg.validation_fraction * len(cases))), len(cases) - 1)
        held = set(np.random.default_rng(seed).permutation(len(cases))[:n_eval].tolist())
    return ([c for i, c in enumerate(cases) if i not in held], [c for i, c in enumerate(cases) if i in held])
