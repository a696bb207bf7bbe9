"""3D prediction: slice a volume, run its domain's network, rebuild labels in the input's own geometry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from pedseg_core.config import DataConfig
from pedseg_core.data.geometry import voxel_spacing
from pedseg_core.data.nifti import read_nifti
from pedseg_core.data.nnunet import FILE_ENDING, NIFTI_ENDINGS, case_id_of_file, case_id_of_label, label_file
from pedseg_core.data.preprocess import logits_to_volume, prepare_image
from pedseg_core.device import device_of
from pedseg_core.errors import PedsegError
from pedseg_core.evaluate.meshes import mesh_paths, write_meshes
from pedseg_core.evaluate.postprocess import MIN_FRACTION, keep_largest_components
from pedseg_core.model.unet import MultiDomainUNet
from pedseg_core.progress import progress_bar

MESHES_FOLDER = "meshes"  # `pedseg predict --meshes`: OUT/meshes/<case>_<bone>.stl


@torch.no_grad()
def predict_volume(model: MultiDomainUNet, domain: int, volume: np.ndarray, spacing: Sequence[float],
                   cfg: DataConfig, batch_size: int, largest_component: bool = True,
                   min_fraction: float = MIN_FRACTION) -> np.ndarray:
    """volume [X, Y, Z] -> uint8 labels [X, Y, Z] (same shape), slicing along the largest spacing; with
    `largest_component`, each class keeps its largest 3D connected component and those of at least
    `min_fraction` of its size (`evaluate.postprocess`)."""
    model.eval()
    slices, geometry = prepare_image(volume, tuple(spacing), cfg)
    device = device_of(model)
    logits = torch.cat([model(slices[i:i + batch_size].to(device), domain).cpu()
                        for i in range(0, len(slices), batch_size)])
    labels = logits_to_volume(logits, geometry)
    return keep_largest_components(labels, range(1, logits.shape[1]), min_fraction) if largest_component else labels


def read_image(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A 3D (or 4D with one trailing channel) NIfTI image -> (image, [X, Y, Z] float32); PedsegError else."""
    data, img = read_nifti(path)
    data = data.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        raise PedsegError(f"{path}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
    return img, data


def list_images(source: Path) -> list[Path]:
    """A NIfTI file, or every .nii/.nii.gz file in a folder (sorted)."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise PedsegError(f"{source}: no such file or folder")
    images = sorted(p for p in source.iterdir() if p.name.endswith(NIFTI_ENDINGS))
    if not images:
        raise PedsegError(f"{source}: no .nii or .nii.gz images in this folder")
    return images


def output_paths(images: Sequence[Path], out_dir: Path, overwrite: bool) -> list[Path]:
    """`out_dir/<case>.nii.gz` per image; refuses to overwrite existing files unless asked."""
    outputs = [out_dir / label_file(case_id_of_file(p), FILE_ENDING) for p in images]
    if len(set(outputs)) != len(outputs):
        raise PedsegError(f"{out_dir}: two inputs would write the same output name")
    existing = [p for p in outputs if p.exists()]
    if existing and not overwrite:
        raise PedsegError(f"{existing[0]}: already exists ({len(existing)} outputs would be overwritten; "
                          "pass --overwrite or choose another --out)")
    return outputs


def predict_files(model: MultiDomainUNet, domain: int, images: Sequence[Path], out_dir: Path,
                  cfg: DataConfig, batch_size: int, overwrite: bool = False, progress: bool = True,
                  largest_component: bool = True, mesh_bones: Mapping[str, int] | None = None,
                  min_fraction: float = MIN_FRACTION) -> tuple[list[Path], list[Path]]:
    """Write one uint8 label NIfTI per image, with the image's shape, affine and header geometry; with
    `mesh_bones` (bone -> label value), also one STL surface per bone predicted in a case, in `out_dir/meshes/`
    (`evaluate.meshes`: scanner coordinates, mm). Returns (label volumes, meshes) written."""
    outputs = output_paths(images, out_dir, overwrite)
    meshes_dir = out_dir / MESHES_FOLDER
    if mesh_bones and not overwrite:  # every mesh a case could get, checked before any prediction
        existing = [p for out in outputs for p in mesh_paths(meshes_dir, case_id_of_label(out), mesh_bones).values()
                    if p.exists()]
        if existing:
            raise PedsegError(f"{existing[0]}: already exists ({len(existing)} meshes would be overwritten; "
                              "pass --overwrite or choose another --out)")
    out_dir.mkdir(parents=True, exist_ok=True)
    meshes: list[Path] = []
    for image_path, out_path in progress_bar(list(zip(images, outputs)), "predict", progress, unit="case"):
        img, volume = read_image(image_path)
        labels = predict_volume(model, domain, volume, voxel_spacing(img.affine), cfg, batch_size, largest_component,
                                min_fraction)
        header = img.header.copy()
        header.set_data_dtype(np.uint8)
        header["scl_slope"], header["scl_inter"] = 1.0, 0.0
        nib.save(nib.Nifti1Image(labels.reshape(img.shape), img.affine, header), str(out_path))
        if mesh_bones:
            meshes += write_meshes(labels.reshape(img.shape), img.affine, mesh_bones, meshes_dir,
                                   case_id_of_label(out_path), overwrite)
    return outputs, meshes
