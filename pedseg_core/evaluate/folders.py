"""`pedseg evaluate`: score a folder of predicted label volumes against a folder of references."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pedseg_core.data.geometry import voxel_spacing
from pedseg_core.data.nifti import read_nifti
from pedseg_core.data.nnunet import DATASET_JSON, NIFTI_ENDINGS, case_id_of_file, read_dataset_json
from pedseg_core.errors import PedsegError
from pedseg_core.evaluate.metrics import case_metrics, summarize
from pedseg_core.progress import progress_bar


def read_labels(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """An integer label volume and its image; PedsegError for unreadable or non-integer files."""
    data, img = read_nifti(path)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.isfinite(data).all() or not np.all(data == np.round(data)):
            raise PedsegError(f"{path}: label values are not integers")
        data = data.astype(np.int32)
    return data, img


def check_reference_folder(ref_dir: Path) -> None:
    """PedsegError with the folder to give when `ref_dir` is a dataset (or a folder of datasets), not its
    folder of reference labels."""
    datasets = [ref_dir] if (ref_dir / DATASET_JSON).is_file() else \
        sorted(p for p in ref_dir.iterdir() if (p / DATASET_JSON).is_file()) if ref_dir.is_dir() else []
    if datasets:
        kind = "a dataset" if datasets == [ref_dir] else "a folder of datasets"
        options = " or ".join(f"--ref {p / 'labelsTs'}" for p in datasets)
        raise PedsegError(f"{ref_dir}: {kind}, not a folder of reference label volumes: give {options}")


def labels_for(ref_dir: Path, labels_json: Path | None) -> dict[str, int]:
    """Bone names -> values from dataset.json (given, or next to the reference folder)."""
    path = labels_json or ref_dir.parent / DATASET_JSON
    if not path.is_file():
        raise PedsegError(f"{path}: no dataset.json to name the labels (pass --labels DATASET_JSON)")
    labels = read_dataset_json(path).get("labels")
    if not isinstance(labels, dict):
        raise PedsegError(f"{path}: cannot read the 'labels' of dataset.json (missing or not an object)")
    try:
        return {str(k): int(v) for k, v in labels.items() if int(v) != 0}
    except (ValueError, TypeError) as err:
        raise PedsegError(f"{path}: cannot read the 'labels' of dataset.json ({err})") from None


def pair_files(pred_dir: Path, ref_dir: Path) -> list[tuple[str, Path, Path]]:
    """(case, prediction, reference) for every reference; PedsegError if a prediction is missing."""
    for folder in (pred_dir, ref_dir):
        if not folder.is_dir():
            raise PedsegError(f"{folder}: no such folder")
    preds = {case_id_of_file(p): p for p in pred_dir.iterdir() if p.name.endswith(NIFTI_ENDINGS)}
    refs = {case_id_of_file(p): p for p in ref_dir.iterdir() if p.name.endswith(NIFTI_ENDINGS)}
    if not refs:
        raise PedsegError(f"{ref_dir}: no reference label files")
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise PedsegError(f"{pred_dir}: no prediction for {len(missing)} reference case(s): "
                          f"{', '.join(missing[:5])}")
    return [(c, preds[c], refs[c]) for c in sorted(refs)]


def evaluate_pair(pred_path: Path, ref_path: Path, bones: dict[str, int]) -> dict:
    pred, _ = read_labels(pred_path)
    ref, ref_img = read_labels(ref_path)
    if pred.shape != ref.shape:
        raise PedsegError(f"{pred_path}: shape {pred.shape} differs from the reference's {ref.shape}")
    spacing = voxel_spacing(ref_img.affine)
    return case_metrics(pred, ref, bones, spacing)


def evaluate_folders(pred_dir: Path, ref_dir: Path, labels_json: Path | None = None,
                     progress: bool = True) -> dict:
    """{"labels": {bone: value}, "cases": {case: {metric: {bone: v}}}, "mean": {metric: {bone: v}},
    "mean_dice": v} with distances in mm."""
    check_reference_folder(ref_dir)
    bones = labels_for(ref_dir, labels_json)
    cases = {case: evaluate_pair(p, r, bones)
             for case, p, r in progress_bar(pair_files(pred_dir, ref_dir), "evaluate", progress)}
    summary = summarize(cases, bones)
    mean_dice = summary.pop("mean_dice")
    return {"labels": bones, "cases": cases, "mean": summary, "mean_dice": mean_dice}
