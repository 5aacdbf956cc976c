"""airbench's network (Jordan, arXiv 2404.00498) as a registered family.

- ``airnet94``: airbench94's network: whitening stem, three groups of (conv, pool, BN, GELU, conv, BN, GELU)
  at widths 64/256/256, a 3x3 max-pool, a bias-free linear head, logits x 1/9 (~0.71 GFLOP a training image
  at 32 px). The second conv of each group starts as an identity (Dirac init: airbench's implicit residual).
- ``airnet``: the same cost with an explicit residual connection over each group's second conv, as
  airbench96's groups have (``GELU(x + BN(conv(x)))``).

Both start with models/whitening.py's frozen patch-whitening stem, fitted on training images before the
first step.
"""

from __future__ import annotations

import torch
from torch import nn

from resnetlab.errors import UserError
from resnetlab.models.registry import register_model
from resnetlab.models.whitening import PatchWhitening


def _conv(c_in: int, c_out: int, dirac: bool = False) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    if dirac:  # the first c_in filters pass their input through: the group starts near an identity
        nn.init.dirac_(conv.weight.data[:c_in])
    return conv


class AirGroup(nn.Module):
    """conv, 2x2 max-pool, BN, GELU (pooling first: BN and GELU on a quarter of the values), then a second
    conv, BN, GELU: ``residual`` adds the group's input back before that GELU, else the second conv starts
    as an identity too (Dirac, as airbench initialises every conv)."""

    def __init__(self, c_in: int, c_out: int, residual: bool):
        super().__init__()
        self.conv1, self.pool, self.norm1 = _conv(c_in, c_out, dirac=True), nn.MaxPool2d(2), nn.BatchNorm2d(c_out)
        self.conv2, self.norm2 = _conv(c_out, c_out, dirac=not residual), nn.BatchNorm2d(c_out)
        self.act, self.residual = nn.GELU(), residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        y = self.norm2(self.conv2(x))
        return self.act(x + y if self.residual else y)


class AirNet(nn.Module):
    output_scale = 1 / 9  # airbench's logit scale: max-pooled features are large, unscaled logits start too sure

    def __init__(self, num_classes: int, in_chans: int, filters: list[int], residual: bool):
        super().__init__()
        self.whiten = PatchWhitening(in_chans)
        widths = [self.whiten.out_chans, *filters]
        self.act = nn.GELU()
        self.layers = nn.Sequential(*(AirGroup(a, b, residual) for a, b in zip(widths, widths[1:])))
        self.pool = _GlobalMax()
        self.fc = nn.Linear(widths[-1], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layers(self.act(self.whiten(x))))) * self.output_scale


class _GlobalMax(nn.Module):
    """(N, C, H, W) -> (N, C): airbench's final 3x3 max-pool of a 3x3 map, for any input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


def _filters(filters: list[int] | None, name: str) -> list[int]:
    filters = list(filters or [64, 256, 256])
    if len(filters) != 3:
        raise UserError(f"{name} needs 3 filters (one a group), got {filters}")
    return filters


@register_model(family="airnet", default_size=32, min_size=16)
def airnet(*, num_classes: int, in_chans: int = 3, filters: list[int] | None = None) -> nn.Module:
    """airbench94's network with a residual connection in each group (~0.71 GFLOP a 32 px training image)"""
    return AirNet(num_classes, in_chans, _filters(filters, "airnet"), residual=True)


@register_model(family="airnet", default_size=32, min_size=16)
def airnet94(*, num_classes: int, in_chans: int = 3, filters: list[int] | None = None) -> nn.Module:
    """airbench94's network: whitening stem, 3 conv groups (Dirac-initialised), GELU, logits x 1/9"""
    return AirNet(num_classes, in_chans, _filters(filters, "airnet94"), residual=False)
