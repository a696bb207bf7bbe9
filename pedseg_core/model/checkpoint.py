"""Model checkpoints: weights plus everything needed to rebuild and use the model (config, domains)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pedseg_core.config import CONTRASTIVE_SCHEMES, PedsegConfig, config_from_dict
from pedseg_core.device import to_cpu
from pedseg_core.errors import PedsegError
from pedseg_core.model.unet import MultiDomainUNet
from pedseg_core.torch_files import load_torch_file, save_atomically

FORMAT = "pedseg-checkpoint/1"
SHARED_FORMAT = "pedseg-shared-weights/1"


@dataclass(frozen=True)
class DomainSpec:
    """One domain of a model: its name (a joint, or a site), its joint, and dataset.json-style labels."""

    name: str
    joint: str
    labels: dict[str, int]

    @property
    def bones(self) -> dict[str, int]:
        return {k: v for k, v in self.labels.items() if v != 0}


def save_checkpoint(path: Path, model: MultiDomainUNet, cfg: PedsegConfig, domains: list[DomainSpec],
                    **extra) -> None:
    """A complete model (all domains' private layers included), usable by `pedseg predict`."""
    save_atomically(path, {"format": FORMAT, "config": cfg.to_dict(), "domains": [asdict(d) for d in domains],
                            "state_dict": to_cpu(model.state_dict()), **extra})


def save_shared_checkpoint(path: Path, shared: dict, cfg: PedsegConfig, server_round: int,
                           joint_heads: dict | None = None) -> None:
    """The global shared weights of a federation (no norm layer: those exist only at the sites), and the
    heads pooled per joint over the sites that share it (domain-wise aggregation), if any."""
    heads = {j: {k: torch.as_tensor(v) for k, v in h.items()} for j, h in (joint_heads or {}).items()}
    save_atomically(path, {"format": SHARED_FORMAT, "config": cfg.to_dict(), "round": server_round,
                            "shared_state_dict": shared, "joint_heads": heads})


def load_checkpoint(path: Path) -> tuple[MultiDomainUNet, PedsegConfig, list[DomainSpec]]:
    """Rebuild the model in eval mode; PedsegError for a missing, unreadable or foreign file."""
    payload = load_torch_file(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PedsegError(f"{path}: not a pedseg checkpoint (expected format {FORMAT})")
    cfg = config_from_dict(payload["config"])
    domains = [DomainSpec(**d) for d in payload["domains"]]
    projection = cfg.contrastive if cfg.scheme in CONTRASTIVE_SCHEMES else None
    model = MultiDomainUNet([len(d.labels) for d in domains], cfg.model, projection=projection)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, cfg, domains


def find_domain(domains: list[DomainSpec], name: str, source: Path) -> int:
    """Index of the domain called `name` (or, failing that, the only domain of joint `name`)."""
    for i, d in enumerate(domains):
        if d.name == name:
            return i
    by_joint = [i for i, d in enumerate(domains) if d.joint == name]
    if len(by_joint) == 1:
        return by_joint[0]
    known = ", ".join(d.name for d in domains)
    raise PedsegError(f"{source}: the model has no domain '{name}' (it has: {known})")
