"""Augmentation of whole uint8 batches on the training device, and normalisation.

Per-image torchvision transforms cost ~50 us an image in Python; at 32 px a
ResNet step costs less than that on a GPU and not much more on a CPU core, so
the crop and flip are done here for the whole batch with one gather.
"""

from __future__ import annotations

import numpy as np
import torch

from resnetlab.config import AugmentConfig


def make_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, step...): well mixed, so nearby keys differ fully."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect indices in [-size+1, 2*size-2] into [0, size) ('reflect' padding: edge not repeated)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def crop_flip(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random crop from a reflect-padded image and random horizontal flip, per image.

    images: (N, C, H, W) uint8 on any device. Padding is never materialised: the
    crop offsets and the flip become row and column index maps, one gather does all.
    """
    n, c, h, w = images.shape
    pad = cfg.crop_padding
    if pad == 0 and not cfg.hflip:
        return images
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) - pad  # offsets in px
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) - pad
    rows = _reflect(dy + torch.arange(h), h)  # (N, H)
    cols = _reflect(dx + torch.arange(w), w)  # (N, W)
    if cfg.hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    dev = images.device
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return images[batch, chan, rows.to(dev)[:, None, :, None], cols.to(dev)[:, None, None, :]]


def normalize(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *, channels_last: bool
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, (x / 255 - mean) / std; mean and std are (C,) in [0, 1] units."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    x = images.to(torch.float32).mul_(scale).sub_(shift)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
