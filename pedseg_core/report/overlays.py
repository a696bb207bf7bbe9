"""Predicted label volumes kept by a run (RUN/predictions/<joint>/<case>.nii.gz) on their test images: one
through-plane slice per case, with the reference label where the dataset has one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pedseg_core.data.geometry import through_plane_axis, voxel_spacing
from pedseg_core.data.nifti import load_volume
from pedseg_core.data.nnunet import Case, case_id_of_label, scan_dataset
from pedseg_core.errors import PedsegError
from pedseg_core.report.run_files import RunFiles


@dataclass(frozen=True)
class Overlay:
    """One slice of a test case: the image (None when the run records no data path to find it), its reference
    label (None when unlabeled or not found) and the prediction."""

    site: str
    case: str
    image: np.ndarray | None
    truth: np.ndarray | None
    prediction: np.ndarray
    aspect: float  # row / column spacing, for imshow
    where: str  # "slice 12 of axis 2"
    bones: dict[int, str]  # label value -> bone name


def _slice(image: np.ndarray | None, truth: np.ndarray | None, prediction: np.ndarray, affine: np.ndarray):
    """The through-plane slice with the most foreground (reference label, else prediction) -> 2D arrays."""
    spacing = voxel_spacing(affine)
    axis = through_plane_axis(spacing)
    shown = truth if truth is not None else prediction
    counts = np.count_nonzero(shown, axis=tuple(a for a in range(3) if a != axis))
    index = int(np.argmax(counts)) if counts.any() else prediction.shape[axis] // 2
    row, column = np.delete(np.asarray(spacing), axis)
    arrays = [None if a is None else np.take(a, index, axis=axis) for a in (image, truth, prediction)]
    return *arrays, row / column, f"slice {index} of axis {axis}"


def _cases(root: Path) -> tuple[dict[str, Case], dict[int, str]]:
    """A dataset's cases by id (training and test: with folds, test cases come from imagesTr) and its bones."""
    dataset, problems = scan_dataset(root)
    if dataset is None:
        raise PedsegError(problems[0] if problems else f"{root}: not a dataset")
    cases = {c.case_id: c for c in (*dataset.train, *dataset.test)}
    return cases, {v: name for name, v in dataset.labels.items() if v != 0}


def _dataset_of(run: RunFiles, site: str) -> Path | None:
    joint = ((run.results or {}).get("sites", {}).get(site) or {}).get("joint", site)
    return run.data.get(site) or run.data.get(joint)


def find_overlays(run: RunFiles, per_site: int) -> tuple[list[Overlay], list[str]]:
    """Up to `per_site` overlays per predicted site, and one note per site (or for the run) that has none."""
    if not run.predictions.is_dir():
        kept = "federated sites evaluate where their data is and send back metrics only" \
            if run.kind == "federated" else "the run wrote no predictions/ folder"
        return [], [f"No predictions were kept: {kept} ({run.predictions} does not exist)."]
    overlays, notes = [], []
    for folder in sorted(p for p in run.predictions.iterdir() if p.is_dir()):
        site, files = folder.name, sorted(folder.glob("*.nii*"))[:per_site]
        root = _dataset_of(run, site)
        if root is None:
            notes.append(f"{site}: the run records no data path to find the test images (no federation.json or "
                         f"reproduce.json with it; `data` names them): its predictions are shown alone")
            try:
                for file in files:
                    prediction, affine = load_volume(file)
                    overlays.append(Overlay(site, case_id_of_label(file),
                                            *_slice(None, None, prediction, affine), {}))
            except PedsegError as error:
                notes.append(f"{site}: {str(error).splitlines()[0]}")
            continue
        try:
            cases, bones = _cases(root)
            for file in files:
                case_id = case_id_of_label(file)
                if case_id not in cases:
                    notes.append(f"{site}: {case_id}: no image in {root}")
                    continue
                image, affine = load_volume(cases[case_id].image)
                prediction, _ = load_volume(file)
                truth = load_volume(cases[case_id].label)[0] if cases[case_id].label else None
                if prediction.shape != image.shape or (truth is not None and truth.shape != image.shape):
                    notes.append(f"{site}: {case_id}: prediction shape {prediction.shape} differs from its "
                                 f"image {image.shape}")
                    continue
                overlays.append(Overlay(site, case_id, *_slice(image, truth, prediction, affine), bones))
        except PedsegError as error:
            notes.append(f"{site}: {str(error).splitlines()[0]}")
    return overlays, notes
