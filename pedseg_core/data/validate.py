"""Dataset validation: collect every problem of an nnU-Net raw dataset, read-only, never raising."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pedseg_core.data.geometry import through_plane_axis, voxel_spacing
from pedseg_core.data.nifti import load_volume
from pedseg_core.data.nnunet import DATASET_JSON, Case, RawDataset, read_dataset, scan_dataset
from pedseg_core.errors import DatasetError


@dataclass(frozen=True)
class VolumeInfo:
    """Geometry and intensities of one readable image, for the summary."""

    case_id: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]  # mm per voxel along each array axis
    intensity: tuple[float, float] | None  # min and max finite intensity; None when no voxel is finite


@dataclass
class DatasetReport:
    """Outcome of check_dataset: the problems (one "<file>: <what is wrong>" line each) and statistics."""

    root: Path
    problems: list[str] = field(default_factory=list)
    n_train: int = 0
    n_test: int = 0
    name: str = ""
    labels: dict[str, int] = field(default_factory=dict)
    volumes: list[VolumeInfo] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """Human summary: name, labels, cases, shape/spacing ranges, through-plane axes, intensities."""
        labels = ", ".join(f"{name}={value}" for name, value in self.labels.items())
        lines = [
            f"dataset: {self.name} ({self.root})",
            f"labels: {labels}",
            f"cases: {self.n_train} training, {self.n_test} test",
        ]
        if self.volumes:
            shapes = np.array([volume.shape for volume in self.volumes])
            spacings = np.array([volume.spacing for volume in self.volumes])
            lines.append("shape: " + " x ".join(_span(column, "{:d}") for column in shapes.T) + " voxels")
            lines.append("spacing: " + " x ".join(_span(column, "{:.2f}") for column in spacings.T) + " mm")
            lines.append(_through_plane_line(self.volumes))
            lines.append(_intensity_line(self.volumes))
        lines.append("status: OK" if self.ok else f"status: {len(self.problems)} problem(s)")
        return "\n".join(lines)


def folder_hint(root: Path) -> str | None:
    """Where the dataset is when `root`, which has no dataset.json, is next to one: a folder of datasets (what
    `pedseg data synth` writes) or a folder inside a dataset (imagesTr/, labelsTs/, ...)."""
    if not root.is_dir() or (root / DATASET_JSON).is_file():
        return None
    inside = sorted(p for p in root.iterdir() if (p / DATASET_JSON).is_file())
    if inside:
        return (f"{root}: a folder of datasets, not a dataset: give each of "
                f"{', '.join(str(p) for p in inside)}")
    if (root.parent / DATASET_JSON).is_file():
        return f"{root}: a folder inside the dataset {root.parent}: give {root.parent}"
    return None


def check_dataset(root: Path) -> DatasetReport:
    """Run every check and collect all problems; never raises for data problems, never writes anything."""
    root = Path(root)
    dataset, problems = scan_dataset(root)
    hint = folder_hint(root) if dataset is None else None
    report = DatasetReport(root=root, problems=[hint] if hint else problems)
    if dataset is None:
        return report
    report.name, report.labels = dataset.name, dataset.labels
    report.n_train, report.n_test = len(dataset.train), len(dataset.test)
    for case in dataset.train + dataset.test:
        _check_case(case, dataset.labels, report)
    return report


def require_valid_dataset(root: Path) -> RawDataset:
    """check_dataset, then raise DatasetError listing every problem, else return read_dataset(root)."""
    report = check_dataset(root)
    if not report.ok:
        raise DatasetError(root, report.problems)
    return read_dataset(root)


def _check_case(case: Case, declared: dict[str, int], report: DatasetReport) -> None:
    """Check one case's image and label (each read once) and their alignment."""
    image = _check_image(case, report)
    if case.label is None:
        return
    label = _check_label(case.label, declared, report.problems)
    if image is None or label is None:
        return
    (image_shape, image_affine), (label_shape, label_affine) = image, label
    if image_shape != label_shape:
        report.problems.append(
            f"{case.label}: shape {label_shape} does not match image shape {image_shape} ({case.image.name})"
        )
    difference = float(np.abs(image_affine - label_affine).max())
    tolerance = 1e-3 * max(voxel_spacing(image_affine)) + 1e-4
    if not difference <= tolerance:  # also catches NaN in a header
        report.problems.append(
            f"{case.label}: affine differs from image {case.image.name} by up to {difference:.4g} mm "
            f"(tolerance {tolerance:.2g} mm)"
        )


def _check_image(case: Case, report: DatasetReport) -> tuple[tuple[int, ...], np.ndarray] | None:
    """Check intensities are finite and record the image statistics; returns (shape, affine) when readable."""
    loaded = _load(case.image, report.problems)
    if loaded is None:
        return None
    data, affine = loaded
    finite = np.isfinite(data)
    n_bad = data.size - int(np.count_nonzero(finite))
    if n_bad:
        report.problems.append(f"{case.image}: {n_bad} voxels are NaN or infinite")
    values = data[finite] if n_bad else data
    intensity = (float(values.min()), float(values.max())) if values.size else None
    report.volumes.append(VolumeInfo(case.case_id, data.shape, voxel_spacing(affine), intensity))
    return data.shape, affine


def _check_label(
    path: Path, declared: dict[str, int], problems: list[str]
) -> tuple[tuple[int, ...], np.ndarray] | None:
    """Check label values are integers declared in dataset.json; returns (shape, affine) when readable."""
    loaded = _load(path, problems)
    if loaded is None:
        return None
    data, affine = loaded
    if not np.issubdtype(data.dtype, np.integer):
        not_integer = ~np.isfinite(data) | (data != np.round(data))
        if not_integer.any():
            example = float(data[not_integer][0])
            problems.append(
                f"{path}: label values must be integers, {np.count_nonzero(not_integer)} voxels are not "
                f"(e.g. {example:g})"
            )
            return data.shape, affine
    undeclared = sorted(set(np.unique(data).astype(np.int64).tolist()) - set(declared.values()))
    if declared and undeclared:  # empty declared: the dataset.json labels problem is already reported
        problems.append(
            f"{path}: label value(s) {', '.join(map(str, undeclared))} not declared in dataset.json labels "
            f"(declared: {', '.join(map(str, declared.values()))})"
        )
    return data.shape, affine


def _load(path: Path, problems: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """load_volume, reporting its problem instead of raising."""
    try:
        return load_volume(path)
    except DatasetError as error:
        problems.extend(error.problems)
        return None


def _span(values: np.ndarray, fmt: str) -> str:
    """ "a" when all values are equal, else "a-b"."""
    low, high = fmt.format(values.min()), fmt.format(values.max())
    return low if low == high else f"{low}-{high}"


def _through_plane_line(volumes: list[VolumeInfo]) -> str:
    """The axis of largest spacing per case, naming the cases that differ from the most common axis."""
    by_axis: dict[int, list[str]] = {}
    for volume in volumes:
        axis = through_plane_axis(volume.spacing)
        by_axis.setdefault(axis, []).append(volume.case_id)
    common = max(by_axis, key=lambda axis: len(by_axis[axis]))
    parts = []
    for axis, ids in sorted(by_axis.items()):
        listed = "" if axis == common else f" ({', '.join(ids)})"
        parts.append(f"axis {axis} in {len(ids)} case(s){listed}")
    return "through-plane axis (largest spacing): " + "; ".join(parts)


def _intensity_line(volumes: list[VolumeInfo]) -> str:
    ranges = [volume.intensity for volume in volumes if volume.intensity is not None]
    if not ranges:
        return "intensity: no finite voxels"
    lows, highs = zip(*ranges)
    return (
        f"intensity: {min(lows):.4g} to {max(highs):.4g} "
        f"(per-case maximum {min(highs):.4g} to {max(highs):.4g})"
    )
