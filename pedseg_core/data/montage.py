"""Quality-control montage: one row per dataset, the middle thick slice of its first training case."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pedseg_core.data.geometry import through_plane_axis, voxel_spacing
from pedseg_core.data.nifti import read_nifti
from pedseg_core.data.nnunet import FILE_ENDING, case_id_of_image, image_file, label_file, read_dataset_json
from pedseg_core.errors import PedsegError

LABEL_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
OVERLAY_ALPHA = 0.45
WINDOW_PERCENTILES = (1.0, 99.5)
ROW_HEIGHT_INCHES = 4.0


def _first_training_case(dataset_dir: Path) -> tuple[dict, Path, Path]:
    """(dataset.json contents, image path, label path) of the dataset's first training case."""
    metadata = read_dataset_json(dataset_dir)
    ending = metadata.get("file_ending", FILE_ENDING)
    images = sorted((dataset_dir / "imagesTr").glob(image_file("*", ending)))
    if not images:
        raise PedsegError(f"{dataset_dir}: no training images in imagesTr/")
    label = dataset_dir / "labelsTr" / label_file(case_id_of_image(images[0], ending), ending)
    if not label.is_file():
        raise PedsegError(f"{dataset_dir}: training image {images[0].name} has no label {label.name}")
    return metadata, images[0], label


def _through_plane_slice(image_path: Path, label_path: Path):
    """Middle slice along the axis with the largest voxel spacing.

    Returns (image (H, W) float, label (H, W) int, row/column aspect ratio, axis, slice index, spacing).
    """
    (image, nii), (label, _) = read_nifti(image_path), read_nifti(label_path)
    spacing = np.asarray(voxel_spacing(nii.affine))
    axis = through_plane_axis(spacing)
    index = image.shape[axis] // 2
    if label.shape != image.shape:
        raise PedsegError(f"{label_path}: shape {label.shape} differs from its image's {image.shape}")
    image_slice = np.take(image, index, axis=axis).astype(np.float32)
    label_slice = np.take(label, index, axis=axis).astype(np.int64)
    if image_slice.shape != label_slice.shape:
        raise PedsegError(f"{label_path.name}: shape {label.shape} differs from its image {image.shape}")
    in_plane = np.delete(spacing, axis)
    return image_slice, label_slice, in_plane[0] / in_plane[1], axis, index, spacing


def save_montage(dataset_dirs: Sequence[Path], out_png: Path) -> None:
    """One row per dataset: the middle through-plane slice (the axis with the largest voxel spacing from the
    header) of the first training case, with its label overlaid in colour and the joint/bone names in a
    legend. matplotlib with the Agg backend.

    Each row shows the slice alone (left) and overlaid (right). Raises PedsegError for unreadable input.
    """
    dataset_dirs = [Path(d) for d in dataset_dirs]
    if not dataset_dirs:
        raise PedsegError("save_montage needs at least one dataset folder")
    size = (2 * ROW_HEIGHT_INCHES, ROW_HEIGHT_INCHES * len(dataset_dirs))
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(dataset_dirs), 2, squeeze=False)
    for (raw_axis, overlay_axis), dataset_dir in zip(axes, dataset_dirs):
        metadata, image_path, label_path = _first_training_case(dataset_dir)
        image, label, aspect, axis, index, spacing = _through_plane_slice(image_path, label_path)
        low, high = np.percentile(image, WINDOW_PERCENTILES)
        for ax in (raw_axis, overlay_axis):
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
            ax.set_axis_off()
        bones = {value: name for name, value in metadata.get("labels", {}).items() if value != 0}
        if bones:
            top = max(bones)
            colours = ListedColormap([LABEL_COLOURS[(v - 1) % len(LABEL_COLOURS)] for v in range(1, top + 1)])
            overlay = np.ma.masked_where(label == 0, label)
            overlay_axis.imshow(
                overlay, cmap=colours, vmin=0.5, vmax=top + 0.5, alpha=OVERLAY_ALPHA, aspect=aspect,
                interpolation="nearest",
            )
            handles = [Patch(color=colours.colors[v - 1], label=name) for v, name in sorted(bones.items())]
            overlay_axis.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.7)
        joint = metadata.get("joint", metadata.get("name", dataset_dir.name))
        zooms = " x ".join(f"{s:.2g}" for s in spacing)
        raw_axis.set_title(f"{joint}: {image_path.name}", fontsize=9)
        overlay_axis.set_title(f"slice {index} of axis {axis} ({zooms} mm)", fontsize=9)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)
