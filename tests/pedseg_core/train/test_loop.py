"""The one training loop: the loss falls on real data, domains route to their own layers."""

import torch

from pedseg_core.config import build_config
from pedseg_core.data.loading import load_slice_set
from pedseg_core.data.nnunet import read_dataset
from pedseg_core.data.sampling import SliceSet, domain_balanced_batches
from pedseg_core.model.unet import MultiDomainUNet
from pedseg_core.train.loop import StepPlan, train_steps
from pedseg_core.train.schedule import make_optimizer, poly_lr


def test_batches_hold_every_domain_equally():
    sets = [SliceSet(torch.full((n, 1, 4, 4), float(d)), torch.full((n, 4, 4), d, dtype=torch.uint8))
            for d, n in enumerate((5, 50, 9))]
    batch = next(domain_balanced_batches(sets, 4, torch.Generator().manual_seed(0)))
    assert batch.images.shape == (12, 1, 4, 4) and batch.domains.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(batch.images[:, 0, 0, 0], batch.domains.float())  # slices come from their own domain
    assert torch.equal(batch.labels[:, 0, 0], batch.domains)


def test_foreground_sampling_shows_rare_bones():
    labels = torch.zeros(100, 4, 4, dtype=torch.uint8)
    labels[7, 0, 0] = 2  # a bone on one slice of a hundred
    labels[10:60, 1, 1] = 1
    slices = SliceSet(torch.zeros(100, 1, 4, 4), labels)
    assert [t.tolist() for t in slices.class_slices] == [list(range(10, 60)), [7]]
    g = torch.Generator().manual_seed(0)
    uniform = slices.sample(2000, 0.0, g)
    balanced = slices.sample(2000, 0.5, g)
    assert (uniform == 7).float().mean() < 0.03
    assert 0.2 < (balanced == 7).float().mean() < 0.3  # half the picks, half of those for bone 2


def test_poly_lr_decays_to_zero():
    assert poly_lr(1e-3, 0, 100, 0.9) == 1e-3
    assert 0 < poly_lr(1e-3, 50, 100, 0.9) < 1e-3
    assert poly_lr(1e-3, 100, 100, 0.9) == 0.0


def test_tiny_training_reduces_the_loss(write_dataset):
    cfg = build_config("tiny", overrides={"data": {"augment": False}})
    torch.manual_seed(0)
    roots = [write_dataset(shape=(40, 44, 6), seed=s, n_train=2, n_test=0) for s in (0, 1)]
    sets = [load_slice_set(read_dataset(r).train, cfg.data) for r in roots]
    assert sets[0].images.shape[1:] == (1, 64, 64)
    model = MultiDomainUNet([3, 3], cfg.model)
    optimizer = make_optimizer(model, cfg.train.learning_rate, cfg.train.weight_decay)
    batches = domain_balanced_batches(sets, cfg.train.batch_size, torch.Generator().manual_seed(0))
    first = train_steps(model, batches, optimizer, cfg.train, StepPlan(3, 0, 40))
    for start in range(3, 37, 3):
        last = train_steps(model, batches, optimizer, cfg.train, StepPlan(3, start, 40))
    assert last["loss"] < 0.6 * first["loss"]
    assert last["slices"] == 3 * 2 * cfg.train.batch_size
