"""Changes to a built model that are not its architecture, so checkpoints and exports are unchanged:
airbench's initialisation and BatchNorm settings, for any family (Jordan, arXiv 2404.00498)."""

from __future__ import annotations

import torch
from torch import nn

_BN = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def dirac_init(model: nn.Module) -> int:
    """Every stride-1, ungrouped conv with an odd square kernel (3x3) starts with its first min(in, out)
    filters passing their input channel through (torch.nn.init.dirac_), the rest as built: the network
    starts near an identity, the implicit residual airbench relies on. Returns how many convs changed."""
    changed = 0
    for m in model.modules():
        k = m.kernel_size if isinstance(m, nn.Conv2d) else (0, 0)
        if k[0] == k[1] and k[0] > 1 and k[0] % 2 and m.stride == (1, 1) and m.groups == 1:
            n = min(m.in_channels, m.out_channels)
            nn.init.dirac_(m.weight[:n])  # filter i reads channel i only
            changed += 1
    return changed


def set_batchnorm(model: nn.Module, *, momentum: float, freeze_weight: bool) -> None:
    """BatchNorm running statistics' momentum (PyTorch's convention), and weights fixed at 1 when frozen
    (only the biases train: airbench's, with the biases at a higher rate: optim.bn_bias_lr_scale)."""
    for m in model.modules():
        if isinstance(m, _BN):
            m.momentum = momentum
            if freeze_weight and m.weight is not None:
                nn.init.ones_(m.weight)
                m.weight.requires_grad_(False)


def bn_biases(model: nn.Module) -> set[int]:
    """ids of the BatchNorm bias parameters (airbench's group at a higher rate; its whitening bias is not one)."""
    return {id(m.bias) for m in model.modules() if isinstance(m, _BN) and m.bias is not None}
