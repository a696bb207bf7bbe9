"""`pedseg evaluate`'s folders: labels from a dataset.json, predictions paired with references by case id."""

import json

import pytest

from pedseg_core.errors import PedsegError
from pedseg_core.evaluate.folders import labels_for, pair_files


def test_labels_come_from_the_dataset_json_next_to_the_references_or_the_given_file(tmp_path):
    (tmp_path / "labelsTs").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "femur": 1}}), encoding="utf-8")
    given = tmp_path / "knee-labels.json"
    given.write_text(json.dumps({"labels": {"background": 0, "tibia": "2"}}), encoding="utf-8")
    assert labels_for(tmp_path / "labelsTs", None) == {"femur": 1}
    assert labels_for(tmp_path / "labelsTs", given) == {"tibia": 2}


@pytest.mark.parametrize("content, message", [
    (None, "no dataset.json to name the labels (pass --labels DATASET_JSON)"),
    ("{broken", "not valid JSON"),
    ('{"name": "knee"}', "cannot read the 'labels' of dataset.json (missing or not an object)"),
    ('{"labels": {"femur": "one"}}', "cannot read the 'labels' of dataset.json (invalid literal"),
])
def test_unusable_labels_are_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "dataset.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(PedsegError) as error:
        labels_for(tmp_path / "labelsTs", None)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value) and "\n" not in str(error.value)


def test_predictions_pair_with_references_by_case_id(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    for folder, names in ((pred, ["knee_001.nii.gz", "knee_002_0000.nii", "notes.txt"]),
                          (ref, ["knee_001.nii.gz", "knee_002.nii.gz"])):
        folder.mkdir()
        for name in names:
            (folder / name).touch()
    assert pair_files(pred, ref) == [("knee_001", pred / "knee_001.nii.gz", ref / "knee_001.nii.gz"),
                                     ("knee_002", pred / "knee_002_0000.nii", ref / "knee_002.nii.gz")]
    (ref / "knee_003.nii.gz").touch()
    with pytest.raises(PedsegError, match="no prediction for 1 reference case"):
        pair_files(pred, ref)
