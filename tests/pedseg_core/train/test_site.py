"""The framework-neutral site trainer: one round, prototypes that describe no single image."""

import pytest
import torch

from pedseg_core.config import build_config
from pedseg_core.errors import PedsegError
from pedseg_core.train.site import SiteTrainer, seeded_subset


@pytest.fixture
def site(write_dataset):
    cfg = build_config("tiny", overrides={"scheme": "contrastive", "train": {"steps_per_epoch": 2},
                                          "contrastive": {"min_prototype_slices": 10}})
    return SiteTrainer("h1", "knee", write_dataset(n_train=3, shape=(40, 40, 6)), cfg)


def test_prototypes_are_means_over_all_training_slices(site):
    shared, n, stats = site.train_round(site.shared_state(), 1, 2)
    assert n == 2 * site.cfg.train.batch_size and stats["contrastive_loss"] > 0
    means, count = site.prototypes()
    assert count == len(site.training_slices()) == 18 >= site.cfg.contrastive.min_prototype_slices
    site.model.eval()
    with torch.no_grad():
        _, embeddings = site.model.forward_with_embeddings(site.training_slices().images, 0)
    assert len(means) == 3 and all(m.shape == (site.cfg.contrastive.dim,) for m in means)
    for mean, e in zip(means, embeddings):
        torch.testing.assert_close(mean, e.mean(0), rtol=1e-4, atol=1e-5)


def test_prototypes_of_many_slices_are_means_over_a_subset_drawn_per_round(site):
    site.cfg.contrastive.max_prototype_slices = 12
    (first, *_), count = site.prototypes(server_round=1)
    assert count == 12
    subset = seeded_subset(site.training_slices().images, 12, site.cfg.train.seed + 1)
    site.model.eval()
    with torch.no_grad():
        _, (embedding, *_) = site.model.forward_with_embeddings(subset, 0)
    torch.testing.assert_close(first, embedding.mean(0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(site.prototypes(server_round=2)[0][0], first)


def test_a_site_with_a_secret_draws_its_prototype_subset_from_it_not_from_the_servers_seed_and_round(site):
    """A server that knows the subset's seed could ask twice and difference two means into one slice's embedding."""
    site.cfg.contrastive.max_prototype_slices = 12
    images = site.training_slices().images
    server_known = site.prototypes(server_round=1)[0][0]
    site.secret = 12345
    (own, *_), _ = site.prototypes(server_round=1)
    assert not torch.allclose(own, server_known)
    subset = seeded_subset(images, 12, site.round_seed("prototypes", 1, site.cfg.train.seed + 1))
    site.model.eval()
    with torch.no_grad():
        _, (embedding, *_) = site.model.forward_with_embeddings(subset, 0)
    torch.testing.assert_close(own, embedding.mean(0), rtol=1e-4, atol=1e-5)

def test_no_prototype_below_the_minimum_number_of_slices(site):
    site.cfg.contrastive.min_prototype_slices = 19
    site.train_round(site.shared_state(), 1, 2)
    assert site.prototypes() is None


def test_other_domains_prototypes_enter_the_loss(write_dataset):
    """The same round from the same weights, seeds and batches, with and without the other joints' prototypes:
    only they differ, and the contrastive loss differs with them (without them, twice, it is identical)."""
    root = write_dataset(n_train=3, shape=(40, 40, 6))
    cfg = build_config("tiny", overrides={"scheme": "contrastive", "train": {"steps_per_epoch": 2}})
    alone, again, negatives = (SiteTrainer("h1", "knee", root, cfg) for _ in range(3))
    torch.manual_seed(0)
    others = [torch.randn(2, cfg.contrastive.dim) for _ in alone.model.scales]
    without = [s.train_round(s.shared_state(), 1, 2)[2]["contrastive_loss"] for s in (alone, again)]
    with_them = negatives.train_round(negatives.shared_state(), 1, 2, other_prototypes=others)[2]["contrastive_loss"]
    assert without[0] == without[1]
    assert with_them != without[0]


def test_shared_scheme_shares_everything_and_learns_union_labels(write_dataset):
    cfg = build_config("tiny", overrides={"scheme": "shared", "train": {"steps_per_epoch": 1}})
    root = write_dataset(n_train=2, shape=(40, 40, 6))
    with pytest.raises(PedsegError, match="union label space"):
        SiteTrainer("h1", "knee", root, cfg)
    site = SiteTrainer("h1", "knee", root, cfg, union=(7, 4))  # this joint's bones are union labels 5 and 6
    assert site.private_state() == {} and set(site.shared_state()) == set(site.model.state_dict())
    assert site.model.heads.heads[0].out_channels == 7
    assert set(torch.unique(site.training_slices().labels).tolist()) == {0, 5, 6}
    result = site.evaluate(site.shared_state())
    assert set(result["dice"]) == {"a", "b"}  # union predictions mapped back to the joint's own bones


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the device tool's machines have one)")
def test_a_round_on_the_gpu_returns_cpu_weights(write_dataset):
    cfg = build_config("tiny", overrides={"scheme": "full", "train": {"steps_per_epoch": 2, "device": "cuda",
                                                                     "precision": "bf16"}})
    site = SiteTrainer("h1", "knee", write_dataset(n_train=2, shape=(40, 40, 6)), cfg)
    shared, _, stats = site.train_round(site.shared_state(), 1, 2, proximal_mu=0.01,
                                        other_prototypes=[torch.randn(1, cfg.contrastive.dim) for _ in range(3)])
    assert all(v.device.type == "cpu" for v in shared.values()) and stats["loss"] > 0
    assert site.evaluate(shared)["cases"] == 1


@pytest.mark.parametrize("part", ["norm", "head"])
def test_a_server_cannot_overwrite_the_private_layers(site, part):
    """Arrays the server sends are loaded only where they are shared weights (or the pooled head): a private
    norm or head key among them is refused, and the site's private layers stay as they were."""
    private = site.private_state()
    key = next(k for k in private if ("head" in k) == (part == "head"))
    hostile = {**site.shared_state(), key: torch.full_like(private[key], 7.0)}
    with pytest.raises(PedsegError, match=f"not shared weights of this model, e.g. {key}"):
        site.train_round(hostile, 1, 2)
    with pytest.raises(PedsegError, match="not shared weights"):
        site.evaluate(hostile)
    torch.testing.assert_close(site.private_state()[key], private[key])
