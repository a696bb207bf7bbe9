"""The anatomical prior loss: zero for a perfect prediction, growing with a shape error."""

import torch

from pedseg_core.config import PriorConfig
from pedseg_core.data.union_labels import union_label_space
from pedseg_core.model.shape_prior import ShapeAutoEncoder, ShapePriorLoss, to_union
from pedseg_core.train.shape_prior import train_shape_autoencoder


def disc_masks(n=24, size=32):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    for i in range(n):
        r = 5 + i % 6
        masks[i][(yy - 16) ** 2 + (xx - 12) ** 2 <= r * r] = 1
        masks[i][(yy - 16) ** 2 + (xx - 24) ** 2 <= (r // 2) ** 2] = 2
    return masks


def test_union_label_space_places_each_joints_bones():
    union, offsets = union_label_space([{"background": 0, "a": 1, "b": 2}, {"background": 0, "c": 1}], ["j1", "j2"])
    assert union == {"background": 0, "j1/a": 1, "j1/b": 2, "j2/c": 3} and offsets == [0, 2]
    probs = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    assert to_union(probs, 2, 4).flatten().tolist() == [0.5, 0.0, 0.0, 0.5]


def test_prior_loss_is_zero_for_the_truth_and_grows_with_shape_error():
    torch.manual_seed(0)
    masks = disc_masks()
    autoencoder = ShapeAutoEncoder(3, (8, 16, 16))
    stats = train_shape_autoencoder(autoencoder, [masks], [0], PriorConfig(batch_size=8, learning_rate=3e-3),
                                    seed=0, steps=60)
    assert stats["prior_recon_last"] < stats["prior_recon_first"]
    prior = ShapePriorLoss(autoencoder, [0], weight=1.0)
    labels = masks[:4].long()

    def logits_of(label_map):
        return torch.nn.functional.one_hot(label_map, 3).permute(0, 3, 1, 2).float() * 20

    perfect = float(prior(logits_of(labels), labels, 0))
    shifted = float(prior(logits_of(torch.roll(labels, 3, dims=2)), labels, 0))
    erased = float(prior(logits_of(torch.zeros_like(labels)), labels, 0))
    assert perfect < 1e-6 < shifted < erased
    assert not any(p.requires_grad for p in autoencoder.parameters())  # frozen


def test_prior_gradient_reaches_the_logits_only():
    autoencoder = ShapeAutoEncoder(3, (8, 16))
    prior = ShapePriorLoss(autoencoder, [0], weight=1.0)
    logits = torch.randn(2, 3, 32, 32, requires_grad=True)
    prior(logits, disc_masks(2).long(), 0).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in autoencoder.parameters())
