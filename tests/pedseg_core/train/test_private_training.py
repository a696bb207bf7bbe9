"""DP-SGD at a site (Opacus): patient-level Poisson batches, epsilon that grows per round and stays within the
lifetime budget, the accountant kept between rounds, noise calibrated from the policy's planned steps, a spent
budget refused naming its policy item, noise the run's seeds do not fix, BatchNorm refused in one line."""

from __future__ import annotations

import pytest
import torch

from pedseg_core.config import build_config
from pedseg_core.errors import PedsegError
from pedseg_core.policy import DPBudget
from pedseg_core.train.private_training import PrivacyBudgetSpent, planned_noise_multiplier, spent_epsilon
from pedseg_core.train.site import SiteTrainer

ROUNDS, STEPS = 3, 2
BUDGET = DPBudget(epsilon=8.0, delta=1e-5, max_grad_norm=1.0, planned_steps=ROUNDS * STEPS)


def trainer(dataset, norm: str = "group", scheme: str = "full") -> SiteTrainer:
    cfg = build_config("tiny", overrides={"scheme": scheme, "model": {"norm": norm},
                                          "train": {"steps_per_epoch": STEPS, "batch_size": 2},
                                          "prior": {"epochs": 2, "steps_per_epoch": 3}})
    return SiteTrainer("h1", "knee", dataset, cfg)


@pytest.fixture
def dataset(write_dataset):
    return write_dataset(n_train=6, shape=(40, 40, 6))


def test_epsilon_grows_each_round_within_the_budget_then_the_site_stops(dataset, capsys):
    site = trainer(dataset, scheme="contrastive")  # no prior stage: every DP step is a segmentation step
    site.use_privacy(BUDGET)
    spent, shared = [], site.shared_state()
    for server_round in range(1, ROUNDS + 1):
        shared, slices, stats = site.train_round(shared, server_round, ROUNDS)
        assert slices == STEPS * 2 and "contrastive_loss" not in stats  # planned count; no in-batch coupling
        spent.append(stats["epsilon"])
        # the round's state goes to disk and comes back in a new trainer, as in a new ClientApp process
        state, optimizer = site.private.state_dict(), site.optimizer_state()
        site = trainer(dataset, scheme="contrastive")
        site.load_optimizer_state(optimizer)
        site.use_privacy(BUDGET, state)
    assert spent == sorted(spent) and 0 < spent[0] < spent[-1] <= BUDGET.epsilon
    assert spent[-1] == pytest.approx(BUDGET.epsilon, rel=0.05)  # calibrated to spend it over the planned steps
    assert all(torch.isfinite(v).all() for v in shared.values())
    with pytest.raises(PrivacyBudgetSpent, match=r"its privacy budget is spent \(the site's policy item "
                                                 r"dp.planned_steps\)"):
        site.train_round(shared, ROUNDS + 1, 1000)  # whatever number of rounds a server names
    log = [line for line in capsys.readouterr().err.splitlines() if "DP training refused" in line]
    assert len(log) == 1 and f"{ROUNDS * STEPS} of {ROUNDS * STEPS} planned steps" in log[0]  # the details


def test_a_spent_epsilon_is_refused_naming_the_policy_item(dataset, capsys):
    site = trainer(dataset, scheme="contrastive")
    site.use_privacy(BUDGET)
    site.train_round(site.shared_state(), 1, ROUNDS)
    state = site.private.state_dict()
    lower = DPBudget(epsilon=spent_epsilon(state) / 2, planned_steps=10_000)  # the site lowered its lifetime epsilon
    site = trainer(dataset, scheme="contrastive")
    site.use_privacy(lower, state)
    with pytest.raises(PrivacyBudgetSpent) as refused:
        site.train_round(site.shared_state(), 2, ROUNDS)
    assert str(refused.value) == "site h1: its privacy budget is spent (the site's policy item dp.epsilon): it " \
                                 "trains no more under DP"  # no path, no count
    assert "DP training refused" in capsys.readouterr().err


def test_the_noise_comes_from_the_policy_plan_not_the_runs_rounds(dataset):
    site = trainer(dataset, scheme="contrastive")
    site.use_privacy(BUDGET)
    expected = planned_noise_multiplier(BUDGET, site.cfg.train.batch_size / len(site.train_cases))
    assert site.private.noise_multiplier == expected
    longer = DPBudget(epsilon=8.0, planned_steps=100 * ROUNDS * STEPS)
    assert planned_noise_multiplier(longer, site.private.sample_rate) > expected  # more steps, more noise


def test_the_noise_is_not_fixed_by_the_run_seed(dataset):
    first, second = trainer(dataset), trainer(dataset)
    second.model.load_state_dict(first.model.state_dict())
    start = first.shared_state()
    for site in (first, second):
        site.use_privacy(BUDGET)
    a, _, _ = first.train_round(start, 1, ROUNDS)
    b, _, _ = second.train_round(start, 1, ROUNDS)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # same seeds, same data: different noise and batches


def test_batches_hold_one_slice_per_sampled_case(dataset):
    site = trainer(dataset)
    site.use_privacy(BUDGET)
    slices = site.training_slices()
    batch = next(site.private.batches(slices))
    picked = [int(torch.nonzero((slices.images == image).flatten(1).all(1))[0]) for image in batch.images]
    owners = slices.cases[picked]
    assert len(owners) == len(set(owners.tolist())) <= len(site.train_cases)


def test_dp_with_batch_norm_is_refused_in_one_line(dataset):
    with pytest.raises(PedsegError, match="needs group norms .* --set model.norm=group"):
        trainer(dataset, norm="batch").use_privacy(BUDGET)


def test_the_prior_stage_trains_privately_on_the_same_accountant(dataset):
    """`full`: the auto-encoder's DP rounds and the segmentation rounds share one noise multiplier, calibrated
    over the policy's planned steps, and one accountant; the prior's round sends no loss."""
    from pedseg_core.model.shape_prior import ShapeAutoEncoder

    site = trainer(dataset)
    prior_rounds, prior_steps = site.cfg.prior.epochs, site.cfg.prior.steps_per_epoch
    budget = DPBudget(epsilon=8.0, planned_steps=prior_rounds * prior_steps + ROUNDS * STEPS)
    autoencoder, state, spent = ShapeAutoEncoder(4, site.cfg.prior.channels), None, []
    before = {k: v.clone() for k, v in autoencoder.state_dict().items()}
    for server_round in range(1, prior_rounds + 1):
        slices, stats, state = site.train_prior_round(autoencoder, 0, server_round, budget, state)
        assert slices == prior_steps * 2 and set(stats) == {"epsilon"}
        spent.append(stats["epsilon"])
    assert any(not torch.equal(before[k], v) for k, v in autoencoder.state_dict().items())
    site.use_privacy(budget, state)
    assert site.private.noise_multiplier == state["noise_multiplier"]
    _, _, stats = site.train_round(site.shared_state(), 1, ROUNDS)
    assert spent == sorted(spent) and 0 < spent[0] < spent[-1] < stats["epsilon"] <= budget.epsilon
