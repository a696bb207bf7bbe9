"""BatchNorm statistics re-estimated for new weights, for one domain only."""

import torch

from pedseg_core.config import build_config
from pedseg_core.model.partition import split_state_dict
from pedseg_core.model.unet import MultiDomainUNet
from pedseg_core.train.norm_stats import recalibrate_batch_norm


def test_recalibration_matches_the_batch_statistics_of_the_data():
    torch.manual_seed(0)
    model = MultiDomainUNet([3, 3], build_config("tiny").model)
    images = torch.rand(12, 1, 64, 64) * 5 + 2
    before = {k: v.clone() for k, v in split_state_dict(model)[1].items()}
    assert recalibrate_batch_norm(model, 1, images, batch_size=12) > 20
    after = split_state_dict(model)[1]
    # the stem's BN of domain 1 now holds the exact statistics of its input over all slices
    with torch.no_grad():
        stem = model.encoder.conv1(images)
    torch.testing.assert_close(after["encoder.bn1.norms.1.running_mean"], stem.mean((0, 2, 3)))
    torch.testing.assert_close(after["encoder.bn1.norms.1.running_var"], stem.var((0, 2, 3)), rtol=1e-4,
                               atol=1e-4)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(".norms.1.running_" in k for k in changed)  # no weight, no other domain
    assert model.encoder.bn1.norms[1].momentum == 0.1


def test_group_norm_has_nothing_to_recalibrate():
    model = MultiDomainUNet([3], build_config("tiny", overrides={"model": {"norm": "group"}}).model)
    assert recalibrate_batch_norm(model, 0, torch.rand(4, 1, 64, 64), 4) == 0
