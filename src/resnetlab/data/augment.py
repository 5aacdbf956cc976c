"""Augmentation of whole uint8 batches on the training device, and normalisation.

Per-image torchvision transforms cost ~50 us an image in Python; at 32 px a
ResNet step costs less than that on a GPU and not much more on a CPU core, so
the crop and flip are done here for the whole batch with one gather, and
rotation, zoom and random resized crops with one affine_grid + grid_sample.
Streaming uses torchvision's transforms v2 for the same operations
(``stream_transforms``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

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


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """All training augmentation of a uint8 (N, C, H, W) batch: geometry, crop/flip, lighting."""
    images = affine(images, cfg, generator)
    images = crop_flip(images, cfg, generator)
    return lighting(images, cfg, generator)


def affine(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, zoom-in and resized crop as one affine map per image (reflection padding).

    theta maps output to input coordinates in [-1, 1] units, as F.affine_grid wants:
    a zoom of s samples a window 1/s wide; a resized crop samples a (w, h) window.
    """
    rrc = cfg.resized_crop
    if not cfg.rotation and cfg.zoom == 1 and not rrc:
        return images
    n, _, h, w = images.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(cfg.rotation)
    scale = 1 / (1 + torch.rand(n, generator=generator) * (cfg.zoom - 1))  # window side, as a share
    sx, sy = scale.clone(), scale.clone()
    if rrc:
        area = rrc[0] + torch.rand(n, generator=generator) * (rrc[1] - rrc[0])
        # aspect ratio log-uniform in [3/4, 4/3], torchvision's RandomResizedCrop default
        ratio = torch.exp((torch.rand(n, generator=generator) * 2 - 1) * math.log(4 / 3))
        sx, sy = sx * (area * ratio).sqrt().clamp(max=1), sy * (area / ratio).sqrt().clamp(max=1)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sx)  # the window stays inside the image
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sy)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([sx * cos, -sx * sin, cx], 1), torch.stack([sy * sin, sy * cos, cy], 1)], 1)
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, [n, images.shape[1], h, w], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def lighting(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness and contrast, each a factor in [1 - l, 1 + l] per image; contrast about the image mean."""
    if not cfg.lighting:
        return images
    n = images.shape[0]
    factors = 1 + (torch.rand(2, n, 1, 1, 1, generator=generator) * 2 - 1) * cfg.lighting
    brightness, contrast = factors.to(images.device)
    x = images.float()
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean).mul_(brightness).round_().clamp_(0, 255).to(torch.uint8)


def stream_transforms(cfg: AugmentConfig, size: int) -> v2.Compose | None:
    """The same augmentation for streamed images, with torchvision's per-image transforms v2."""
    steps = []
    if cfg.resized_crop:
        steps.append(v2.RandomResizedCrop(size, scale=tuple(cfg.resized_crop), antialias=True))
    if cfg.rotation or cfg.zoom != 1:
        steps.append(v2.RandomAffine(degrees=cfg.rotation, scale=(1, cfg.zoom)))
    if cfg.crop_padding:
        steps.append(v2.RandomCrop(size, padding=cfg.crop_padding, padding_mode="reflect"))
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.lighting:
        steps.append(v2.ColorJitter(brightness=cfg.lighting, contrast=cfg.lighting))
    return v2.Compose(steps) if steps else None


def normalize(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *, channels_last: bool
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, (x / 255 - mean) / std; mean and std are (C,) in [0, 1] units."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    x = images.to(torch.float32).mul_(scale).sub_(shift)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
