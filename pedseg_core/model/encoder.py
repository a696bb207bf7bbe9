"""A MONAI ResNet encoder laid out like torchvision's ResNet, so ImageNet checkpoints map onto it key by key.

MONAI's own FlexibleUNet encoders use parameter-free "A" shortcuts for resnet18/34; torchvision's ImageNet
ResNets use 1x1 conv + BN ("B") shortcuts. This class is MONAI's `ResNetFeatures` with "B" shortcuts.
"""

from __future__ import annotations

import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetFeatures, get_inplanes
from torch import nn

BOTTLENECK_CHANNELS = 512  # channels of the last (stride 32) map of resnet10/18/34
RESNET_LAYERS = {"resnet10": [1, 1, 1, 1], "resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}


class OutOfPlaceResNetBlock(ResNetBlock):
    """MONAI's basic ResNet block computed out of place (same parameters and keys): Opacus' per-sample gradient
    hooks refuse in-place operations on the outputs of the layers they watch (DP-SGD at a site)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + residual)


class TorchvisionLayoutResNetEncoder(ResNetFeatures):
    """2D ResNet feature extractor: [B, C_in, H, W] -> 5 maps with (64, 64, 128, 256, 512) channels at
    strides (2, 4, 8, 16, 32); state-dict keys as torchvision's (conv1, bn1, layerN.i.*, downsample.0/1)."""

    def __init__(self, backbone: str, in_channels: int = 1) -> None:
        ResNet.__init__(
            self,
            block=OutOfPlaceResNetBlock,
            layers=RESNET_LAYERS[backbone],
            block_inplanes=get_inplanes(),
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_stride=2,
            shortcut_type="B",
            bias_downsample=False,
            feed_forward=False,
            act=("relu", {"inplace": False}),
        )
