"""Train / evaluation splits: the labelsTs split, the seeded hold-out, and k-fold cross-validation."""

import pytest

from pedseg_core.config import DataConfig, build_config
from pedseg_core.data.loading import split_cases
from pedseg_core.data.nnunet import read_dataset
from pedseg_core.errors import PedsegError


def ids(cases):
    return sorted(c.case_id for c in cases)


def test_labeled_test_split_is_used_with_one_fold(write_dataset):
    dataset = read_dataset(write_dataset(n_train=3, n_test=2))
    train, held = split_cases(dataset, DataConfig(), seed=0)
    assert ids(train) == ids(dataset.train) and ids(held) == ids(dataset.test)


def test_without_labels_ts_a_seeded_fraction_is_held_out(write_dataset):
    dataset = read_dataset(write_dataset(n_train=5, n_test=1, test_labels=False))
    train, held = split_cases(dataset, DataConfig(validation_fraction=0.4), seed=3)
    assert len(held) == 2 and not set(ids(train)) & set(ids(held))
    assert ids(split_cases(dataset, DataConfig(validation_fraction=0.4), seed=3)[1]) == ids(held)


def test_k_folds_hold_out_every_training_case_exactly_once(write_dataset):
    dataset = read_dataset(write_dataset(n_train=7, n_test=2))
    held_out = []
    for fold in range(3):
        train, held = split_cases(dataset, DataConfig(folds=3, fold=fold), seed=1)
        assert not set(ids(train)) & set(ids(held))
        assert sorted(ids(train) + ids(held)) == ids(dataset.train)  # labelsTs is not part of the folds
        held_out += ids(held)
    assert sorted(held_out) == ids(dataset.train)
    assert [len(split_cases(dataset, DataConfig(folds=3, fold=f), seed=1)[1]) for f in range(3)] == [3, 2, 2]


def test_too_few_cases_for_the_folds_is_an_error_naming_the_dataset(write_dataset):
    root = write_dataset(n_train=2)
    with pytest.raises(PedsegError, match=f"{root}.*2 training cases cannot make 3 folds"):
        split_cases(read_dataset(root), DataConfig(folds=3), seed=0)


@pytest.mark.parametrize("folds, fold", [(3, 3), (0, 0), (2, -1)])
def test_a_fold_outside_the_folds_is_refused(folds, fold):
    with pytest.raises(PedsegError, match="data.fold"):
        build_config("tiny", overrides={"data": {"folds": folds, "fold": fold}})
