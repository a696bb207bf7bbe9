"""The site algorithm without Flower: two hospitals federated by hand with plain tensors (a mean of their shared
weights, their prototypes handed over), what leaves each of them, and what each keeps on its disk."""

from __future__ import annotations

import pytest
import torch

from pedseg_core.config import build_config
from pedseg_core.model.shape_prior import ShapeAutoEncoder
from pedseg_core.policy import DPBudget, SitePolicy
from pedseg_core.train.private_store import PrivateStore, RunFolderClosed
from pedseg_core.train.request_bounds import SiteOwnValues
from pedseg_core.train.site_algorithm import SiteAlgorithm
from pedseg_core.train.site_requests import (
    EvaluateRequest,
    PriorRequest,
    SiteSettings,
    TrainRequest,
    UnionLabels,
)

ROUNDS = 2
LABELS = {"background": 0, "a": 1, "b": 2}  # each joint's two bones; the union holds four
SHARING = SitePolicy(min_prototype_slices=4, min_batch_size=2)  # a tiny site's prototypes may leave, batches of 2


def sites(write_dataset, tmp_path, scheme: str = "full", policy: SitePolicy = SHARING) -> list[SiteAlgorithm]:
    cfg = build_config("tiny", overrides={"scheme": scheme, "model": {"norm": "group"},
                                          "train": {"steps_per_epoch": 2, "batch_size": 2},
                                          "prior": {"epochs": 1, "steps_per_epoch": 2},
                                          "contrastive": {"min_prototype_slices": 4}})
    return [SiteAlgorithm(SiteSettings(joint, joint, write_dataset(n_train=2, shape=(40, 40, 6), labels=LABELS,
                                                                   seed=i),
                                       tmp_path / joint, policy=policy, keep_sent=True), cfg, run="7")
            for i, joint in enumerate(("ankle", "knee"))]


def mean(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    return {k: sum(w * s[k] for s, w in zip(states, weights)) / sum(weights) for k in states[0]}


def test_two_hospitals_federate_by_hand(write_dataset, tmp_path):
    ankle, knee = hospitals = sites(write_dataset, tmp_path)
    unions = [UnionLabels(5, 0), UnionLabels(5, 2)]
    autoencoder = ShapeAutoEncoder(5, ankle.trainer.cfg.prior.channels).state_dict()
    stage1 = [h.train_prior(PriorRequest(autoencoder, 1, u)) for h, u in zip(hospitals, unions)]
    assert all(r.num_examples > 0 and r.metrics["prior-recon-last"] > 0 for r in stage1)
    autoencoder = mean([r.autoencoder for r in stage1], [r.num_examples for r in stage1])

    shared, prototypes = ankle.trainer.shared_state(), {}
    for server_round in range(1, ROUNDS + 1):
        results = [h.train(TrainRequest(shared, server_round, ROUNDS, prototypes=prototypes, prior=autoencoder,
                                        union=u, evaluate_first=server_round > 1))
                   for h, u in zip(hospitals, unions)]
        for result in results:
            assert set(result.shared) == set(shared) and result.head is None
            assert {"train-loss", "prior-loss", "contrastive-loss", "prototype-slices", "lr"} <= set(result.metrics)
            assert (result.evaluation is not None) == (server_round > 1)
        assert [sorted(r.prototypes) for r in results] == [[f"{j}|{s}" for s in range(3)] for j in ("ankle", "knee")]
        prototypes = {k: v for r in results for k, v in r.prototypes.items()}
        shared = mean([r.shared for r in results], [r.num_examples for r in results])
    # a restarted site continues with its private layers
    again = SiteAlgorithm(knee.settings, knee.trainer.cfg, run="7")
    torch.testing.assert_close(again.private_state(), knee.private_state())
    evaluation = knee.evaluate(EvaluateRequest(shared, ROUNDS))
    assert evaluation.num_examples == 1 and 0 <= evaluation.mean_dice <= 1
    # each site keeps its private layers, its Adam state, its last model and a copy of what it sent
    store = PrivateStore(tmp_path / "knee", "7")
    torch.testing.assert_close(store.load(), knee.private_state())
    assert store.optimizer_path.is_file() and (store.path.parent / "model.pt").is_file()
    sent = torch.load(store.sent_dir / f"round-{ROUNDS:03d}.pt", weights_only=True)
    assert set(sent) == {"arrays", "prototypes", "num_examples"} and sent["num_examples"] == results[1].num_examples
    with pytest.raises(RunFolderClosed, match="federation-run 7: that run has finished"):  # closed by the last eval
        SiteAlgorithm(knee.settings, knee.trainer.cfg, run="7")


def test_the_head_leaves_only_when_asked(write_dataset, tmp_path):
    (site, _) = sites(write_dataset, tmp_path, scheme="multi-domain")
    assert site.train(TrainRequest(site.trainer.shared_state(), 1, ROUNDS)).head is None
    result = site.train(TrainRequest(site.trainer.shared_state(), 2, ROUNDS, share_head=True))
    assert result.head is not None and set(result.head) == set(site.trainer.head_state())
    assert result.prototypes is None  # no projection heads in this scheme


def test_the_sites_policy_keeps_what_it_refuses_at_the_site_without_any_mod(write_dataset, tmp_path):
    """Prototypes over fewer slices than the policy's minimum, a head it does not pool, per-case metrics: none
    leaves, and none is in the copy of what was sent."""
    policy = SitePolicy(min_prototype_slices=13, share_head=False, min_batch_size=2)  # 2 cases hold 12 slices
    (site, _) = sites(write_dataset, tmp_path, scheme="contrastive", policy=policy)
    site.trainer.cfg.federation.per_case_metrics = True  # asked by the run, not allowed by the policy
    result = site.train(TrainRequest(site.trainer.shared_state(), 2, ROUNDS, share_head=True, evaluate_first=True))
    assert result.prototypes is None and result.head is None and "prototype-slices" not in result.metrics
    assert "per_case" not in result.evaluation.entry and result.evaluation.num_examples == 1
    sent = torch.load(site.store.sent_dir / "round-002.pt", weights_only=True)
    assert set(sent) == {"arrays", "num_examples"}


def test_a_dp_site_sends_neither_losses_nor_prototypes(write_dataset, tmp_path):
    policy = SitePolicy(dp=DPBudget(epsilon=8.0), min_prototype_slices=4, min_batch_size=2)
    (site, _) = sites(write_dataset, tmp_path, scheme="contrastive", policy=policy)
    result = site.train(TrainRequest(site.trainer.shared_state(), 1, ROUNDS))
    assert result.prototypes is None and 0 < result.metrics["epsilon"] <= 8.0
    assert not [k for k in result.metrics if k.endswith("loss")]
    assert site.ledger.path.is_file()


def test_no_metric_leaves_over_fewer_evaluation_cases_than_the_policy_admits(write_dataset, tmp_path, capsys):
    policy = SitePolicy(min_prototype_slices=4, min_batch_size=2, min_eval_cases=2)  # each site has 1 test case
    (site, _) = sites(write_dataset, tmp_path, scheme="multi-domain", policy=policy)
    result = site.evaluate(EvaluateRequest(site.trainer.shared_state(), 1))
    assert result.entry is None and "min_eval_cases (2)" in result.withheld and "1" not in result.withheld
    assert "1 evaluation case(s)" in capsys.readouterr().err  # the count stays in the site's log
    train = site.train(TrainRequest(site.trainer.shared_state(), 2, ROUNDS, evaluate_first=True))
    assert train.evaluation.entry is None and train.shared  # the training reply still goes


def test_the_evaluation_split_is_the_sites_own_whatever_the_run_config_says(write_dataset, tmp_path):
    """A run asking for as many folds as training cases would make each evaluation one patient's."""
    cfg = build_config("tiny", overrides={"data": {"folds": 3, "fold": 0}})
    data = write_dataset(n_train=3, n_test=2, shape=(40, 40, 6))
    site = SiteAlgorithm(SiteSettings("h", "knee", data, tmp_path / "s"), cfg, run="1")
    assert [c.case_id for c in site.trainer.eval_cases] == ["test_000", "test_001"]  # its labelsTs
    own = SiteSettings("h", "knee", data, tmp_path / "t", own=SiteOwnValues(folds=3, fold=1))
    assert len(SiteAlgorithm(own, cfg, run="1").trainer.eval_cases) == 1  # folds only from the site's settings


def test_training_batches_and_prototype_subsets_come_from_the_sites_own_entropy(write_dataset, tmp_path):
    (site, other) = sites(write_dataset, tmp_path, scheme="contrastive")
    assert site.trainer.secret is not None and site.trainer.secret != other.trainer.secret
    seeds = {site.trainer.round_seed(purpose, 1, 0) for purpose in ("batches", "augment", "prototypes")}
    assert len(seeds) == 3 and 0 not in seeds  # none of them the server's train.seed and round
