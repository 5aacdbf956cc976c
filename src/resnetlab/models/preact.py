"""Pre-activation bottleneck ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks").

Each block is BN-ReLU-conv1x1(K/4), BN-ReLU-conv3x3(K/4, stride), BN-ReLU-conv1x1(K),
added to the input; where the shape changes the shortcut is a 1x1 strided conv
of the pre-activated input. ``stages`` gives blocks per stage, ``filters`` the
stem width then each stage's K. This is the network of the Keras "Deep Learning
for Computer Vision" tutorials (CIFAR-10: stages 9,9,9; Tiny ImageNet: 3,4,6).
Two options make it the tutorial's network as written: ``input_bn`` (BatchNorm on
the raw input, its first layer) and ``stage_shortcut`` (the first block of every
stage takes the 1x1 conv shortcut, Keras' ``red=True``, also where the shape stays).
"""

from __future__ import annotations

import torch
from torch import nn

from resnetlab.errors import UserError
from resnetlab.models.registry import register_model


class PreActBottleneck(nn.Module):
    def __init__(self, c_in: int, k: int, stride: int, conv_shortcut: bool = False):
        super().__init__()
        mid = k // 4
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(mid), nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(mid), nn.Conv2d(mid, k, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)  # the pre-activated input is reused by the shortcut
        self.shortcut = None
        if stride != 1 or c_in != k or conv_shortcut:
            self.shortcut = nn.Conv2d(c_in, k, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn1(x))
        identity = self.shortcut(a) if self.shortcut is not None else x
        y = self.conv1(a)
        y = self.conv2(self.relu(self.bn2(y)))
        y = self.conv3(self.relu(self.bn3(y)))
        return y + identity


class PreActResNet(nn.Module):
    def __init__(self, num_classes: int, in_chans: int, stages: list[int], filters: list[int], stem: str,
                 input_bn: bool = False, stage_shortcut: bool = False):
        super().__init__()
        if len(filters) != len(stages) + 1:
            raise UserError(
                f"pre-activation ResNet needs len(filters) = len(stages) + 1 (stem width first), "
                f"got stages {stages} and filters {filters}"
            )
        if any(k % 4 for k in filters[1:]):
            raise UserError(f"bottleneck widths must be multiples of 4 (K/4 inside), got {filters[1:]}")
        # before the stem, so layer_groups counts it in the stem group; Identity has no state: off, the
        # state dict is the variant's without it
        self.input_bn = nn.BatchNorm2d(in_chans) if input_bn else nn.Identity()
        if stem == "cifar":  # 32 px: 3x3 conv keeps the resolution
            self.stem = nn.Conv2d(in_chans, filters[0], 3, padding=1, bias=False)
        else:  # 64 px: 5x5 conv + BN + ReLU + max-pool halves it once (Tiny ImageNet)
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, filters[0], 5, padding=2, bias=False),
                nn.BatchNorm2d(filters[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        blocks, c_in = [], filters[0]
        for i, (n, k) in enumerate(zip(stages, filters[1:])):
            for j in range(n):
                blocks.append(PreActBottleneck(c_in, k, stride=2 if (i > 0 and j == 0) else 1,
                                               conv_shortcut=stage_shortcut and j == 0))
                c_in = k
        self.blocks = nn.Sequential(*blocks)
        self.final = nn.Sequential(  # the last pre-activation: BN and ReLU before pooling
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.final(self.blocks(self.stem(self.input_bn(x)))))


@register_model(family="preact", default_size=32, min_size=4)
def preact_resnet56(
    *,
    num_classes: int,
    in_chans: int = 3,
    stages: list[int] | None = None,
    filters: list[int] | None = None,
    input_bn: bool = False,
    stage_shortcut: bool = False,
) -> nn.Module:
    """Pre-activation bottleneck ResNet, 3x3 stem; default stages 9,9,9, filters 64,64,128,256 (CIFAR-10)"""
    return PreActResNet(num_classes, in_chans, stages or [9, 9, 9], filters or [64, 64, 128, 256], "cifar",
                        input_bn, stage_shortcut)


@register_model(family="preact", default_size=64, min_size=8)
def preact_resnet_tiny(
    *,
    num_classes: int,
    in_chans: int = 3,
    stages: list[int] | None = None,
    filters: list[int] | None = None,
    input_bn: bool = False,
    stage_shortcut: bool = False,
) -> nn.Module:
    """Pre-activation bottleneck ResNet, 5x5 stem + max-pool; default stages 3,4,6, filters 64,128,256,512"""
    return PreActResNet(num_classes, in_chans, stages or [3, 4, 6], filters or [64, 128, 256, 512], "tiny",
                        input_bn, stage_shortcut)
