"""Bone meshes: closed, outward, volume-faithful surfaces where the voxels lie in the scanner, written as LPS STL."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import trimesh
from nibabel.affines import apply_affine

from pedseg_core.errors import PedsegError
from pedseg_core.evaluate.meshes import bone_mesh, write_meshes

SHAPE = (28, 24, 14)
SPACING = (0.6, 0.8, 2.0)  # mm, thick slices along z as in pediatric MRI
BONES = {"femur": 1, "tibia": 2, "patella": 3}  # patella: absent from the labels
LPS_RAS = np.array([-1.0, -1.0, 1.0])  # x and y negated: LPS <-> RAS, both ways


def make_affine(mirror: bool) -> np.ndarray:
    """[4, 4] voxel -> RAS mm: rotations about z (30 deg) and x (-20 deg), anisotropic spacing, a translation;
    `mirror` flips the first voxel axis (negative determinant, as in many DICOM conversions)."""
    a, b = np.radians(30.0), np.radians(-20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(SPACING)
    affine[:3, 3] = (-80.5, 42.0, 17.25)
    if mirror:
        affine[:3, 0] *= -1
    return affine


def make_labels() -> np.ndarray:
    """[28, 24, 14] uint8: an ellipsoid (label 1, radii 8 x 6 x 4.5 voxels) and an off-centre 9 x 8 x 6 box
    (label 2) touching the x = 0 face of the volume."""
    grid = np.indices(SHAPE, dtype=np.float64)
    centre, radii = (17.3, 11.6, 6.8), (8.0, 6.0, 4.5)
    labels = np.zeros(SHAPE, np.uint8)
    labels[sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1] = 1
    labels[0:9, 15:23, 1:7] = 2
    return labels


def nifti_case(tmp_path: Path, mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels [X, Y, Z], affine [4, 4]) as read back from a saved NIfTI label file (float32 sform and all)."""
    path = tmp_path / f"case_{int(mirror)}.nii.gz"
    nib.save(nib.Nifti1Image(make_labels(), make_affine(mirror)), str(path))
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


@pytest.mark.parametrize("mirror", [False, True], ids=["rotated", "mirrored"])
@pytest.mark.parametrize("label", [1, 2], ids=["ellipsoid", "edge-box"])
def test_mesh_is_closed_outward_and_where_the_voxels_are(tmp_path, mirror, label):
    labels, affine = nifti_case(tmp_path, mirror)
    assert (np.linalg.det(affine[:3, :3]) < 0) == mirror
    mask = labels == label
    mesh = bone_mesh(mask, affine)
    assert mesh.is_watertight and mesh.is_winding_consistent

    voxel_volume = abs(np.linalg.det(affine[:3, :3]))
    error = mesh.volume / (mask.sum() * voxel_volume) - 1
    assert mesh.volume > 0 and abs(error) < 0.03, f"volume error {error:+.2%}"

    # independently: the voxel centres in RAS mm, and the world extent of one voxel along each axis
    centres = apply_affine(affine, np.argwhere(mask))
    voxel_extent = np.abs(affine[:3, :3]).sum(axis=1)
    ras = mesh.vertices * LPS_RAS
    low, high = ras.min(axis=0), ras.max(axis=0)  # the surface passes about half a voxel outside the centres
    assert (low <= centres.min(axis=0)).all() and (low >= centres.min(axis=0) - voxel_extent).all()
    assert (high >= centres.max(axis=0)).all() and (high <= centres.max(axis=0) + voxel_extent).all()
    # the enclosed solid's centre of mass is the voxels' (measured: under 0.003 voxel; a shift would show here)
    assert (np.abs(mesh.center_mass * LPS_RAS - centres.mean(axis=0)) <= 0.02 * voxel_extent).all()

    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center - mesh.center_mass) > 0
    assert outward.mean() > 0.95


def test_smoothing_keeps_the_volume_and_tiny_bones_stay_closed():
    labels = make_labels()
    for label in (1, 2):
        mask = labels == label
        raw, smooth = bone_mesh(mask, np.eye(4), iterations=0), bone_mesh(mask, np.eye(4))
        # raw marching cubes cuts the staircase corners (-1.4% ellipsoid, -2.5% box); Taubin gives some back
        assert abs(smooth.volume - mask.sum()) < abs(raw.volume - mask.sum())
        assert np.abs(smooth.vertices - raw.vertices).max() < 0.5  # voxels; staircase corners move, nothing else
    tiny = np.zeros((4, 4, 4), bool)
    tiny[1, 1, 1] = tiny[2, 2, 2] = True  # two voxels touching by a corner
    mesh = bone_mesh(tiny, np.eye(4))
    assert mesh.is_watertight and mesh.volume > 0
    with pytest.raises(ValueError):
        bone_mesh(np.zeros((4, 4, 4), bool), np.eye(4))


def test_write_meshes_writes_present_bones_as_lps_stl(tmp_path):
    labels, affine = nifti_case(tmp_path, mirror=True)
    out = tmp_path / "meshes"
    written = write_meshes(labels, affine, BONES, out, "knee_003")
    assert written == [out / "knee_003_femur.stl", out / "knee_003_tibia.stl"]
    assert sorted(p.name for p in out.iterdir()) == ["knee_003_femur.stl", "knee_003_tibia.stl"]  # no temp files

    for path, label in zip(written, (1, 2)):
        header = path.read_bytes()[:80]
        assert header.startswith(b"SPACE=LPS") and b"SPACE=RAS" not in header
        loaded = trimesh.load(str(path), file_type="stl")
        assert "SPACE=LPS" in loaded.metadata["header"]
        expected = bone_mesh(labels == label, affine)
        assert loaded.is_watertight and loaded.volume > 0
        assert loaded.volume == pytest.approx(expected.volume, rel=1e-4)
        np.testing.assert_allclose(loaded.bounds, expected.bounds, atol=1e-3)  # float32 in the file


def test_existing_meshes_are_kept_unless_overwrite(tmp_path):
    labels, affine = make_labels(), make_affine(mirror=False)
    femur, tibia = write_meshes(labels, affine, BONES, tmp_path, "ankle_001")
    femur.write_bytes(b"old")
    tibia.unlink()

    with pytest.raises(PedsegError) as err:
        write_meshes(labels, affine, BONES, tmp_path, "ankle_001")
    assert str(femur) in str(err.value) and "\n" not in str(err.value)
    assert femur.read_bytes() == b"old" and not tibia.exists()  # nothing written: all targets checked first

    assert write_meshes(labels, affine, BONES, tmp_path, "ankle_001", overwrite=True) == [femur, tibia]
    assert trimesh.load(str(femur), file_type="stl").is_watertight and tibia.exists()

    # a stale file of a bone absent from this case is no target: it neither blocks nor gets written
    only_tibia = np.where(labels == 2, labels, 0).astype(np.uint8)
    femur.write_bytes(b"old")
    assert write_meshes(only_tibia, affine, BONES, tmp_path, "ankle_001", overwrite=True) == [tibia]
    assert femur.read_bytes() == b"old"
