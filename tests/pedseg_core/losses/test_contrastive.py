"""The supervised contrastive loss on hand-built embeddings with known answers."""

import math

import pytest
import torch

from pedseg_core.losses.contrastive import supervised_contrastive_loss


def test_two_pairs_known_value():
    """Two domains, two orthogonal clusters: each anchor has 1 positive (cos 1) and 2 negatives (cos 0)."""
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * math.exp(0.0)))
    assert float(supervised_contrastive_loss(z, labels, t)) == pytest.approx(expected, rel=1e-6)


def test_falls_when_same_domain_embeddings_move_together():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    centers = torch.eye(3)[labels] * 3
    noise = torch.randn(9, 3)
    losses = [float(supervised_contrastive_loss(centers * a + noise, labels, 0.2)) for a in (0.0, 0.5, 1.0, 3.0)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.5 * losses[0]


def test_prototypes_supply_negatives_for_a_single_domain_batch():
    """A site's batch holds one domain: without prototypes the loss cannot separate domains; with other
    domains' prototypes it is lower when the batch points away from them."""
    batch = torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.9, 0.0]])
    labels = torch.zeros(3, dtype=torch.long)
    protos, proto_labels = torch.tensor([[0.0, 1.0], [-1.0, 0.0]]), torch.tensor([1, 2])
    near = supervised_contrastive_loss(batch, labels, 0.2, protos, proto_labels)
    far = supervised_contrastive_loss(batch, labels, 0.2, -protos, proto_labels)
    assert float(far) > float(near) > 0


def test_gradient_flows_and_no_positive_gives_zero():
    z = torch.randn(4, 8, requires_grad=True)
    supervised_contrastive_loss(z, torch.tensor([0, 0, 1, 1])).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert float(supervised_contrastive_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]))) == 0.0
