"""The held-out phantom generator writes datasets that pedseg accepts as they are, sliced along other axes."""

import subprocess
import sys

import pytest

from pedseg_core.data.geometry import through_plane_axis, voxel_spacing
from pedseg_core.data.loading import read_case
from pedseg_core.data.nnunet import read_dataset
from pedseg_core.data.validate import check_dataset


@pytest.mark.slow  # about 30 s of phantom rendering; make test stays under 10 minutes
def test_heldout_datasets_pass_the_checks_and_slice_along_different_axes(tmp_path):
    subprocess.run([sys.executable, "-m", "simulations.heldout_phantoms", str(tmp_path), "--train", "1",
                    "--test", "0"], check=True, capture_output=True)
    axes = {}
    for joint in ("ankle", "knee", "shoulder"):
        report = check_dataset(tmp_path / joint)
        assert report.ok, report.problems
        dataset = read_dataset(tmp_path / joint)
        assert len(dataset.train) == 1
        image, label, spacing, affine = read_case(dataset.train[0])
        assert set(range(len(dataset.labels))) <= set(label.ravel().tolist())  # every bone is drawn
        axes[joint] = through_plane_axis(voxel_spacing(affine))
    assert len(set(axes.values())) == 3
