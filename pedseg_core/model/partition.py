"""THE one place that decides what is shared between sites and what stays private to a domain/site.

Decided by module type: every parameter and buffer inside a `DomainModule` (domain norms with their running
statistics, segmentation heads) is private; everything else (all convolution filters) is shared. The exception
is the `shared` scheme, which has nothing domain-specific: there everything is shared.
"""

from __future__ import annotations

from torch import Tensor, nn

from pedseg_core.model.domain_norm import DomainModule
from pedseg_core.model.heads import DomainHeads


def private_prefixes(model: nn.Module) -> list[str]:
    """Module-name prefixes ("encoder.bn1.", "heads.", ...) of the model's domain-specific modules."""
    return [f"{name}." for name, m in model.named_modules() if isinstance(m, DomainModule)]


def is_private(key: str, prefixes: list[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


def split_state_dict(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(shared, private) parts of `model.state_dict()`: disjoint, and together exactly the state dict."""
    prefixes = private_prefixes(model)
    shared, private = {}, {}
    for key, value in model.state_dict().items():
        (private if is_private(key, prefixes) else shared)[key] = value
    return shared, private


def split_for_scheme(model: nn.Module, scheme: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(shared, private) parts in a federation of `scheme`: `shared` averages the whole model (its one norm set
    and its one union head included); every other scheme keeps the domain modules private."""
    if scheme == "shared":
        return dict(model.state_dict()), {}
    return split_state_dict(model)


def load_partial_state(model: nn.Module, part: dict[str, Tensor]) -> None:
    """Load a shared or private part into `model`; refuses keys the model does not have or wrong shapes."""
    own = model.state_dict()
    unknown = sorted(set(part) - set(own))
    if unknown:
        raise KeyError(f"{len(unknown)} unknown keys, e.g. {unknown[:3]}")
    bad = [k for k, v in part.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"shape mismatch for {bad[:3]}")
    model.load_state_dict(part, strict=False)


def head_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The segmentation heads' part of the private state: what sites of the same joint may pool among
    themselves (domain-wise aggregation) while their norms stay their own."""
    prefixes = [f"{name}." for name, m in model.named_modules() if isinstance(m, DomainHeads)]
    return {k: v for k, v in model.state_dict().items() if is_private(k, prefixes)}
