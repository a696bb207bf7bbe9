"""Surface meshes of predicted bones: one binary STL per bone, in millimetres, aligned with the image in 3D Slicer.

Each bone's binary mask, cropped to its bounding box and padded by one background voxel (so that a bone touching
the edge of the volume still gets a closed surface), goes through marching cubes (scikit-image) at level 0.5,
then a light Taubin smoothing (trimesh; lambda 0.5, nu 0.53, 20 passes). Taubin alternates a shrinking and an
inflating Laplacian step, so it removes the voxel staircase without the shrinkage of Laplacian or Gaussian
smoothing. Measured against voxel count x voxel volume: spheres, ellipsoids and boxes of 400-7000 voxels
-0.1 to -1.1% (raw marching cubes, which cuts the staircase corners: -0.4 to -2.5%), whereas a Gaussian of the
mask cut at 0.5 loses 2.5-4.4% (sigma 0.5 voxel) or 5-9% (sigma 0.7). Parts one or two voxels thick lose more
(a 12x12x2 plate -4%, a 2x2x2 blob about half), with any of these methods.

Coordinates: vertices go from voxel indices (voxel centres at integer indices) to scanner millimetres with the
NIfTI affine, which maps to RAS (+x towards the patient's right, +y anterior, +z superior). 3D Slicer reads STL
files as LPS unless their 80-byte header says "SPACE=RAS" (it looks for "SPACE=RAS" or "SPACE=LPS" there, the
tag of the files it writes itself), so the files hold LPS coordinates (x and y of RAS negated) and their header
starts with "SPACE=LPS": loaded into Slicer next to the image, each mesh lies on its bone. Other readers (trimesh,
MeshLab) see the same LPS millimetres. Faces are wound so that normals point outward (positive enclosed volume),
also when the affine mirrors (negative determinant).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import trimesh
from nibabel.affines import apply_affine
from skimage.measure import marching_cubes
from trimesh.exchange.stl import export_stl

from pedseg_core.atomic_files import write_atomically
from pedseg_core.errors import PedsegError

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])  # multiply RAS points by this to get LPS (and back)
STL_SPACE = "SPACE=LPS"
TAUBIN_LAMBDA, TAUBIN_NU, TAUBIN_ITERATIONS = 0.5, 0.53, 20


def bone_mesh(mask: np.ndarray, affine: np.ndarray, iterations: int = TAUBIN_ITERATIONS) -> trimesh.Trimesh:
    """mask [X, Y, Z] (bool or 0/1, not empty), affine [4, 4] voxel -> RAS mm -> closed, smoothed surface with
    vertices [V, 3] in LPS mm and faces [F, 3] wound outward. `iterations` Taubin passes (0: raw marching cubes).

    Smoothing happens in voxel space: Taubin's equal-weight Laplacian commutes with the affine map."""
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {mask.shape}")
    where = np.nonzero(mask)
    if not where[0].size:
        raise ValueError("empty mask: no surface")
    low = np.array([w.min() for w in where])
    high = np.array([w.max() + 1 for w in where])
    crop = mask[tuple(slice(a, b) for a, b in zip(low, high))]
    verts, faces, _, _ = marching_cubes(np.pad(crop, 1).astype(np.float32), level=0.5)
    mesh = trimesh.Trimesh(verts + (low - 1), faces, process=False)
    if iterations:
        trimesh.smoothing.filter_taubin(mesh, lamb=TAUBIN_LAMBDA, nu=TAUBIN_NU, iterations=iterations)
    mesh.vertices = apply_affine(np.asarray(affine, dtype=np.float64), mesh.vertices) * RAS_TO_LPS
    if mesh.volume < 0:  # marching cubes' winding, possibly mirrored by the affine: make the normals point out
        mesh.invert()
    return mesh


def mesh_paths(out_dir: Path, case_id: str, bones: Mapping[str, int]) -> dict[str, Path]:
    """{bone: out_dir/<case_id>_<bone>.stl} for every bone (present in a case or not)."""
    return {name: Path(out_dir) / f"{case_id}_{name}.stl" for name in bones}


def stl_bytes(mesh: trimesh.Trimesh, title: str = "") -> bytes:
    """Binary STL of `mesh` whose 80-byte header reads "SPACE=LPS <title>" (ASCII, space padded, cut at 80)."""
    data = bytearray(export_stl(mesh))
    header = f"{STL_SPACE} {title}".strip().encode("ascii", "replace")[:80]
    data[:80] = header.ljust(80, b" ")
    return bytes(data)


def write_meshes(labels: np.ndarray, affine: np.ndarray, bones: Mapping[str, int], out_dir: Path, case_id: str,
                 overwrite: bool = False) -> list[Path]:
    """labels [X, Y, Z] integer volume, affine [4, 4] (the NIfTI's, voxel -> RAS mm), bones {name: label} ->
    one binary STL (LPS mm, "SPACE=LPS" header) per bone present, `out_dir/<case_id>_<bone>.stl`; returns the
    paths written, in `bones` order. Absent bones get no file. Refuses (PedsegError, before writing anything) to
    replace an existing file unless `overwrite`."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise PedsegError(f"{case_id}: expected a 3D label volume, got shape {labels.shape}")
    if np.shape(affine) != (4, 4):
        raise PedsegError(f"{case_id}: expected a 4x4 affine, got shape {np.shape(affine)}")
    paths = mesh_paths(out_dir, case_id, bones)
    present = [name for name, value in bones.items() if (labels == value).any()]
    existing = [paths[name] for name in present if paths[name].exists()]
    if existing and not overwrite:
        raise PedsegError(f"{existing[0]}: already exists ({len(existing)} meshes would be overwritten; "
                          "pass --overwrite or choose another --out)")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for name in present:
        mesh = bone_mesh(labels == bones[name], affine)
        data = stl_bytes(mesh, f"pedseg {case_id} {name}")
        write_atomically(paths[name], lambda tmp, data=data: tmp.write_bytes(data))
    return [paths[name] for name in present]
