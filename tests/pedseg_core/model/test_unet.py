"""The multi-domain U-Net: shapes, domain routing, the shared/private split."""

import pytest
import torch
from torch import nn

from pedseg_core.config import build_config
from pedseg_core.model.domain_norm import DomainNorm
from pedseg_core.model.heads import DomainHeads
from pedseg_core.model.partition import load_partial_state, split_state_dict
from pedseg_core.model.unet import MultiDomainUNet


@pytest.fixture(params=["batch", "group"])
def model(request):
    cfg = build_config("tiny", overrides={"model": {"norm": request.param}})
    torch.manual_seed(0)
    return MultiDomainUNet([4, 4, 3], cfg.model)


def test_each_domain_has_its_own_classes(model):
    x = torch.randn(2, 1, 64, 64)
    assert [tuple(model(x, d).shape) for d in range(3)] == [(2, 4, 64, 64), (2, 4, 64, 64), (2, 3, 64, 64)]
    with pytest.raises(IndexError):
        model(x, 3)


def test_no_plain_norm_layer_is_left_shared(model):
    plain = [n for n, m in model.named_modules()
             if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and ".norms." not in f".{n}."]
    assert plain == []
    assert sum(isinstance(m, DomainNorm) for m in model.modules()) > 20


def test_state_split_is_exact(model):
    shared, private = split_state_dict(model)
    full = model.state_dict()
    assert set(shared).isdisjoint(private)
    assert set(shared) | set(private) == set(full)
    assert all(".norms." in k or k.startswith("heads.") for k in private)
    # every shared tensor belongs to a convolution: no norm statistic, no head weight
    modules = dict(model.named_modules())
    assert all(isinstance(modules[k.rpartition(".")[0]], nn.Conv2d) for k in shared)
    assert not any(k.startswith("heads.") for k in shared)
    domain_modules = {n for n, m in model.named_modules() if isinstance(m, (DomainNorm, DomainHeads))}
    assert all(any(k.startswith(f"{n}.") for n in domain_modules) for k in private)


def test_domains_do_not_leak_into_each_other(model):
    """Training domain 0 changes neither domain 1's norms nor its head."""
    _, before = split_state_dict(model)
    before = {k: v.clone() for k, v in before.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(torch.randn(4, 1, 64, 64), 0).mean().backward()
    opt.step()
    _, after = split_state_dict(model)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(".norms.0." in k or k.startswith("heads.heads.0.") for k in changed)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_partial_load_round_trip_and_refusals(norm):
    cfg = build_config("tiny", overrides={"model": {"norm": norm}}).model
    model, other = MultiDomainUNet([4, 4, 3], cfg), MultiDomainUNet([4, 4, 3], cfg)
    shared, private = split_state_dict(model)
    load_partial_state(other, shared)
    load_partial_state(other, private)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(KeyError):
        load_partial_state(other, {"not.a.key": torch.zeros(1)})
    key = next(iter(shared))
    with pytest.raises(ValueError):
        load_partial_state(other, {key: torch.zeros(1)})
