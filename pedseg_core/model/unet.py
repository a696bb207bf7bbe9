"""The multi-domain 2D U-Net: shared ResNet encoder/decoder convolutions, domain-specific norms and heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import FlexibleUNet
from torch import Tensor, nn

from pedseg_core.config import ContrastiveConfig, ModelConfig
from pedseg_core.model.domain_norm import DomainModule, replace_norms
from pedseg_core.model.encoder import BOTTLENECK_CHANNELS, TorchvisionLayoutResNetEncoder
from pedseg_core.model.heads import DomainHeads
from pedseg_core.model.projection import ProjectionHeads


class MultiDomainUNet(nn.Module):
    """[B, 1, H, W] slices of ONE domain -> [B, num_classes[domain], H, W] logits (H, W multiples of 32).

    Built from MONAI's FlexibleUNet (decoder, skip layout) with a torchvision-layout ResNet encoder; every
    BatchNorm2d of encoder and decoder becomes a `DomainNorm`, and the head is a `DomainHeads`.
    With one domain and the union of classes this is the plain "shared" network.
    """

    def __init__(self, num_classes: Sequence[int], cfg: ModelConfig, in_channels: int = 1,
                 projection: ContrastiveConfig | None = None) -> None:
        super().__init__()
        unet = FlexibleUNet(
            in_channels=in_channels,
            out_channels=1,  # replaced by the domain heads below
            backbone=cfg.backbone,
            decoder_channels=tuple(cfg.decoder_channels),
            spatial_dims=2,
            act=("relu", {"inplace": False}),
        )
        self.encoder = TorchvisionLayoutResNetEncoder(cfg.backbone, in_channels)
        self.decoder = unet.decoder
        self.skip_connect = unet.skip_connect
        self.heads = DomainHeads(cfg.decoder_channels[-1], num_classes)
        self.scales: tuple[int, ...] = tuple(projection.scales) if projection else ()
        if self.scales:
            widths = (BOTTLENECK_CHANNELS, *cfg.decoder_channels)
            self.projections = ProjectionHeads([widths[s] for s in self.scales], projection.hidden, projection.dim)
        replace_norms(self, len(num_classes), cfg.norm, cfg.group_norm_groups)
        self._domain_modules = [m for m in self.modules() if isinstance(m, DomainModule)]

    @property
    def num_domains(self) -> int:
        return self.heads.num_domains

    def set_domain(self, domain: int) -> None:
        if not 0 <= domain < self.num_domains:
            raise IndexError(f"domain {domain} out of range (model has {self.num_domains})")
        for m in self._domain_modules:
            m.domain = domain

    def forward(self, x: Tensor, domain: int = 0) -> Tensor:
        return self.forward_with_embeddings(x, domain)[0]

    def forward_with_embeddings(self, x: Tensor, domain: int = 0) -> tuple[Tensor, list[Tensor]]:
        """logits [B, C_d, H, W] and one embedding [B, dim] per contrastive scale (none without projections).

        Scale 0 is the bottleneck (the encoder's last map), scales 1..5 the decoder stages, coarse to fine.
        """
        self.set_domain(domain)
        features = self.encoder(x)
        skips = features[:-1][::-1]
        y = features[-1]
        taps = [y]
        for i, block in enumerate(self.decoder.blocks):
            y = block(y, skips[i] if i < self.skip_connect else None)
            taps.append(y)
        embeddings = self.projections([taps[s] for s in self.scales]) if self.scales else []
        return self.heads(y), embeddings


def build_model(num_classes: Sequence[int], cfg: ModelConfig,
                projection: ContrastiveConfig | None = None) -> MultiDomainUNet:
    """The model of a run, with its encoder initialized as `cfg.encoder_weights` asks."""
    from pedseg_core.model.imagenet import init_encoder

    model = MultiDomainUNet(num_classes, cfg, projection=projection)
    init_encoder(model.encoder, cfg.encoder_weights)
    return model


def domain_slices(domains: torch.Tensor) -> list[tuple[int, torch.Tensor | slice]]:
    """Group a batch by domain: [B] domain indices -> [(domain, [b] positions or a full slice), ...]."""
    first = int(domains[0])
    if bool((domains == first).all()):
        return [(first, slice(None))]  # one domain: no copy of the batch
    return [(int(d), torch.nonzero(domains == d).flatten()) for d in torch.unique(domains)]
