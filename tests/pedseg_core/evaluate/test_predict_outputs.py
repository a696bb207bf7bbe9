"""`pedseg predict`'s inputs and output names: one `<case>.nii.gz` label per image, named by its case id."""

import pytest

from pedseg_core.errors import PedsegError
from pedseg_core.evaluate.predict import list_images, output_paths


def test_each_image_gets_its_cases_label_name(tmp_path):
    images = tmp_path / "imagesTs"
    images.mkdir()
    for name in ("knee_003_0000.nii.gz", "scan.nii", "readme.txt"):
        (images / name).touch()
    found = list_images(images)
    assert [path.name for path in found] == ["knee_003_0000.nii.gz", "scan.nii"]
    assert output_paths(found, tmp_path / "out", overwrite=False) == [tmp_path / "out" / "knee_003.nii.gz",
                                                                     tmp_path / "out" / "scan.nii.gz"]


def test_two_images_of_one_case_are_refused(tmp_path):
    with pytest.raises(PedsegError, match="two inputs would write the same output name"):
        output_paths([tmp_path / "knee_003_0000.nii.gz", tmp_path / "knee_003.nii"], tmp_path / "out", False)
