"""FedProx's proximal term acts on the shared parameters only."""

import torch

from pedseg_core.config import build_config
from pedseg_core.losses.proximal import ProximalTerm
from pedseg_core.model.partition import split_state_dict
from pedseg_core.model.unet import MultiDomainUNet


def test_zero_at_the_global_weights_and_quadratic_away_from_them():
    model = MultiDomainUNet([3], build_config("tiny").model)
    shared, _ = split_state_dict(model)
    term = ProximalTerm(model, shared, mu=0.5)
    assert float(term(model)) == 0.0
    key = "encoder.conv1.weight"
    with torch.no_grad():
        dict(model.named_parameters())[key].add_(0.1)
    expected = 0.5 * 0.5 * (0.1**2) * shared[key].numel()
    assert abs(float(term(model)) - expected) < 1e-6 * expected


def test_private_layers_are_not_pulled():
    model = MultiDomainUNet([3], build_config("tiny").model)
    shared, _ = split_state_dict(model)
    term = ProximalTerm(model, shared, mu=1.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    term(model).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None for n, g in grads.items() if n.startswith("heads.") or ".norms." in n)
    assert all(g is not None and torch.all(g != 0) for n, g in grads.items() if n in shared)
