"""One DP accountant per site and dataset (`<state_dir>/privacy/<dataset hash>.pt`): every run and round of the
site spends from it, whatever `federation-run` or `num-rounds` a server names, and a spent budget is refused."""

from __future__ import annotations

import os
import shutil

import pytest

from pedseg_core.config import build_config
from pedseg_core.data.nnunet import Case
from pedseg_core.policy import DPBudget, SitePolicy
from pedseg_core.train.privacy_ledger import PrivacyLedger, dataset_hash, steps_by_noise
from pedseg_core.train.private_training import PrivacyBudgetSpent, planned_noise_multiplier
from pedseg_core.train.site_algorithm import SiteAlgorithm
from pedseg_core.train.site_requests import SiteSettings, TrainRequest

STEPS = 2


def cases(root) -> list[Case]:
    images = sorted((root / "imagesTr").iterdir())
    return [Case(p.name, p, root / "labelsTr" / p.name.replace("_0000", "")) for p in images]


def test_the_dataset_hash_follows_the_files_contents_not_their_folder_or_times(write_dataset, tmp_path):
    data = write_dataset(n_train=2, shape=(20, 24, 4))
    copy = shutil.copytree(data, tmp_path / "copy")
    first = cases(copy)[0].image
    os.utime(first, (1, 1))
    assert dataset_hash(cases(data)) == dataset_hash(cases(copy))  # moved, copied, touched: one budget
    first.write_bytes(first.read_bytes() + b"\0")
    assert dataset_hash(cases(data)) != dataset_hash(cases(copy))
    assert dataset_hash(cases(data)[:1]) != dataset_hash(cases(data))


def accountant(*history: tuple[float, float, int]) -> dict:
    return {"accountant": {"history": list(history), "mechanism": "rdp"}, "noise_multiplier": 1.0, "delta": 1e-5}


def test_two_runs_training_at_once_add_their_spending_not_overwrite_it(tmp_path):
    ledger = PrivacyLedger(tmp_path / "state", "abc")
    ledger.save(accountant((1.0, 0.5, 2)), None)  # run 7 and run 8 both loaded nothing, then trained 2 steps
    ledger.save(accountant((1.0, 0.5, 2)), None)
    loaded = ledger.load()
    ledger.save(accountant((1.0, 0.5, 4), (2.0, 0.5, 3)), loaded)  # run 9 went on from both: 3 more steps
    assert steps_by_noise(ledger.load()) == {(1.0, 0.5): 4, (2.0, 0.5): 3}


@pytest.fixture
def site(write_dataset, tmp_path):
    data = write_dataset(n_train=2, shape=(40, 40, 6))

    def open_run(run: str, planned_steps: int = 100) -> SiteAlgorithm:
        cfg = build_config("tiny", overrides={"scheme": "multi-domain", "model": {"norm": "group"},
                                              "train": {"steps_per_epoch": STEPS, "batch_size": 2}})
        policy = SitePolicy(dp=DPBudget(epsilon=8.0, planned_steps=planned_steps), min_batch_size=2)
        return SiteAlgorithm(SiteSettings("h1", "knee", data, tmp_path / "state", policy=policy), cfg, run=run)

    return open_run


def test_runs_of_one_site_spend_one_accountant(site, tmp_path):
    """A new federation-run each round does not reset the accountant, nor does a cached algorithm of an earlier
    run train on the epsilon it knew before."""
    first, second = site("7"), site("8")
    spent = []
    for algorithm, server_round in ((first, 1), (second, 1), (first, 2), (site("9"), 1)):
        result = algorithm.train(TrainRequest(algorithm.trainer.shared_state(), server_round, 1))
        spent.append(result.metrics["epsilon"])
    assert spent == sorted(spent) and len(set(spent)) == 4, spent
    assert [p.name for p in (tmp_path / "state" / "privacy").glob("*.pt")] == [first.ledger.path.name]
    assert first.ledger.path == second.ledger.path
    assert not list((tmp_path / "state").glob("run-*/privacy*"))


def test_the_noise_does_not_depend_on_the_runs_number_of_rounds(site):
    noise = []
    for run, num_rounds in (("7", 1), ("8", 1000)):
        algorithm = site(run)
        algorithm.train(TrainRequest(algorithm.trainer.shared_state(), 1, num_rounds))
        noise.append(algorithm.trainer.private.noise_multiplier)
    assert noise[0] == noise[1] == planned_noise_multiplier(DPBudget(epsilon=8.0, planned_steps=100), 1.0)


def test_a_spent_budget_is_refused_in_every_later_run(site):
    algorithm = site("7", planned_steps=STEPS)
    algorithm.train(TrainRequest(algorithm.trainer.shared_state(), 1, 1))
    later = site("8", planned_steps=STEPS)  # a new run folder, a fresh message: the same spent budget
    with pytest.raises(PrivacyBudgetSpent, match=r"policy item dp.planned_steps"):
        later.train(TrainRequest(later.trainer.shared_state(), 1, 100))
