"""ResNets for small images (28-64 px), where an ImageNet stem would throw away 4x of the pixels.

- ``cifar_resnet18..152``: torchvision's BasicBlock/Bottleneck ResNet with a 3x3
  stride-1 stem and no max-pool (as in most CIFAR-10 ResNet code); shortcuts
  are torchvision's 1x1 conv + BN projections where the shape changes.
- ``resnet9``: the DAWNBench ResNet-9 (Page, 2018): few, wide layers with
  max-pool downsampling, which makes it the fastest to train per accuracy point.
- ``resnet9_pool_first``: the same convolutions and parameters, each downsampling layer pooling
  before its BatchNorm and ReLU (airbench's order), so those run on a quarter of the pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from resnetlab.errors import UserError
from resnetlab.models.registry import register_model

_LAYERS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}  # blocks


def _cifar_resnet(depth: int, num_classes: int, in_chans: int, zero_init_residual: bool) -> nn.Module:
    # imported here, not at the top: a ResNet-9 or airnet run never loads torchvision (~0.1 s of start-up
    # beyond torch on a 2-core CPU)
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    block = Bottleneck if depth >= 50 else BasicBlock
    model = ResNet(block, _LAYERS[depth], num_classes=num_classes, zero_init_residual=zero_init_residual)
    # 3x3 stride-1 stem, no max-pool: a 32 px image reaches layer4 at 4x4 instead of 1x1
    model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def _make(depth: int):
    def builder(*, num_classes: int, in_chans: int = 3, zero_init_residual: bool = True) -> nn.Module:
        return _cifar_resnet(depth, num_classes, in_chans, zero_init_residual)

    builder.__name__ = f"cifar_resnet{depth}"
    kind = "BasicBlock" if depth < 50 else "Bottleneck"
    builder.__doc__ = f"ResNet-{depth} ({kind}) with a 3x3 stem and no max-pool, for 32-64 px images"
    return register_model(family="cifar", default_size=32, min_size=8)(builder)


cifar_resnet18 = _make(18)
cifar_resnet34 = _make(34)
cifar_resnet50 = _make(50)
cifar_resnet101 = _make(101)
cifar_resnet152 = _make(152)


class NarrowBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that, training on a CPU, normalises a channels-last input under 16 channels as an
    NCHW copy. PyTorch's channels-last BatchNorm backward on a CPU is ~10 ns an element at 8 channels
    against ~1.5 at 16 and in NCHW, on AVX2 and AVX-512 alike (benchmarks/batchnorm_widths.py), so an
    8-wide stem's BatchNorm at 28 px is over a quarter of a small fp32 step. The two copies cost less.
    The same parameters, buffers and eval path as nn.BatchNorm2d, so checkpoints and exports are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.device.type == "cpu" and x.dim() == 4 and x.shape[1] < 16
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
            return super().forward(x)
        return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), NarrowBatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


def _conv_pool_bn(c_in: int, c_out: int) -> nn.Sequential:
    # BN and ReLU after the 2x2 pool touch 4x fewer values. They are memory-bound: on a CPU BN, ReLU
    # and max-pool are a third or more of a ResNet-9 step (more in bf16, where the convolutions are
    # faster), so this order makes the step faster (benchmarks/step_peak.py). In eval mode, with BN's
    # weight >= 0, BN+ReLU is a non-decreasing map per channel and commutes with the max: the output
    # equals resnet9's for the same weights. Training differs only in BN's batch statistics, taken over
    # the pooled maxima.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), NarrowBatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, channels: int, zero_init: bool):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))
        if zero_init:  # the block starts as identity, as zero_init_residual does for torchvision
            nn.init.zeros_(self.body[1][1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class GlobalMaxPool(nn.Module):
    """(N, C, H, W) -> (N, C, 1, 1), as nn.AdaptiveMaxPool2d(1) but written as an amax: the same values
    (a max is exact), and an op every ONNX exporter knows (torch 2.11's dynamo exporter has no ONNX
    function for adaptive_max_pool2d). No parameters, so checkpoints are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3), keepdim=True)


class ResNet9(nn.Module):
    """prep -> (conv, pool, residual) -> (conv, pool) -> (conv, pool, residual) -> max-pool -> fc.
    ``pool_first``: each (conv, pool) pools before its BN and ReLU (``_conv_pool_bn``)."""

    def __init__(self, num_classes: int, in_chans: int, filters: list[int], zero_init_residual: bool,
                 pool_first: bool = False):
        super().__init__()
        w0, w1, w2, w3 = filters

        def down(c_in: int, c_out: int) -> list[nn.Module]:
            return [_conv_pool_bn(c_in, c_out)] if pool_first else [_conv_bn(c_in, c_out), nn.MaxPool2d(2)]

        self.features = nn.Sequential(
            _conv_bn(in_chans, w0),
            *down(w0, w1),
            _Residual(w1, zero_init_residual),
            *down(w1, w2),
            *down(w2, w3),
            _Residual(w3, zero_init_residual),
            GlobalMaxPool(),
            nn.Flatten(),
        )
        self.fc = nn.Linear(w3, num_classes)

    # Page's DAWNBench ResNet-9 multiplies its logits by 0.125. Its max-pooled features are large
    # (no average over positions), so unscaled logits start in the tens and SGD at lr 0.1 diverged
    # to chance (train loss 10-12 in epoch 1 on CIFAR); scaled, the defaults train.
    output_scale = 0.125

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)) * self.output_scale


@register_model(family="resnet9", default_size=32, min_size=8)
def resnet9(
    *,
    num_classes: int,
    in_chans: int = 3,
    filters: list[int] | None = None,
    zero_init_residual: bool = False,
) -> nn.Module:
    """DAWNBench ResNet-9 (8 convs, 2 residual blocks); `filters` sets the 4 widths (default 64,128,256,512)"""
    return ResNet9(num_classes, in_chans, _resnet9_filters(filters), zero_init_residual)


@register_model(family="resnet9", default_size=32, min_size=8)
def resnet9_pool_first(
    *,
    num_classes: int,
    in_chans: int = 3,
    filters: list[int] | None = None,
    zero_init_residual: bool = False,
) -> nn.Module:
    """resnet9 pooling before BN and ReLU in its 3 downsampling layers: faster steps on a CPU (BN and ReLU
    touch a quarter of the values)"""
    return ResNet9(num_classes, in_chans, _resnet9_filters(filters, "resnet9_pool_first"), zero_init_residual,
                   pool_first=True)


def _resnet9_filters(filters: list[int] | None, name: str = "resnet9") -> list[int]:
    filters = list(filters or [64, 128, 256, 512])
    if len(filters) != 4:
        raise UserError(f"{name} needs 4 filters (prep, layer1, layer2, layer3), got {filters}")
    return filters
