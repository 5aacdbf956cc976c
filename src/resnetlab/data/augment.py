"""Augmentation of whole uint8 batches on the training device, and normalisation.

Per-image torchvision transforms cost ~50 us an image in Python; at 32 px a
ResNet step costs less than that on a GPU and not much more on a CPU core, so
the crop and flip are done here for the whole batch with one gather, and
rotation, zoom and random resized crops with one affine_grid + grid_sample.
Cached and streamed batches both go through ``BatchAugment``: one augmentation
path, so a streamed run trains as a cached one. On top of the geometry: an
augmentation policy (TrivialAugmentWide, RandAugment: data/policy.py), random erasing,
and mixup/CutMix, which turn the labels into soft targets (N, k).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from resnetlab.config import AugmentConfig
from resnetlab.device import to_device


def make_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, step...): well mixed, so nearby keys differ fully.
    The key count goes in first: SeedSequence reads its words as one number, so (seed, epoch) and
    (seed, epoch, 0) were one stream, and an epoch's order drew what its first step's augmentation did."""
    state = np.random.SeedSequence([len(keys), *(int(k) for k in keys)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def reflect_index(index: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect indices in [-size+1, 2*size-2] into [0, size) ('reflect' padding: edge not repeated)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def crop_flip(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
              flip: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop from a reflect-padded image, random horizontal flip and, with ``vflip``, random
    vertical flip, per image (``flip``, a (N,) bool mask on the CPU, decides the horizontal flips
    instead: the generator's draws stay the same).

    images: (N, C, H, W) uint8 on any device. Padding is never materialised: the
    crop offsets and the flip become row and column index maps, one gather does all.
    """
    n, c, h, w = images.shape
    pad = cfg.crop_padding
    if pad == 0 and not cfg.hflip and not cfg.vflip:
        return images
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) - pad  # offsets in px
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) - pad
    rows = reflect_index(dy + torch.arange(h), h)  # (N, H)
    cols = reflect_index(dx + torch.arange(w), w)  # (N, W)
    if cfg.hflip:
        drawn = torch.rand(n, generator=generator) < 0.5
        cols = torch.where((drawn if flip is None else flip)[:, None], cols.flip(1), cols)
    if cfg.vflip:  # drawn after the others, so runs without it draw as before
        rows = torch.where((torch.rand(n, generator=generator) < 0.5)[:, None], rows.flip(1), rows)
    dev = images.device
    maps = to_device(torch.cat([rows, cols], 1), dev)  # (N, H + W): one copy a batch, not two
    rows, cols = maps[:, :h], maps[:, h:]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return images[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
                  flip: torch.Tensor | None = None) -> torch.Tensor:
    """All training augmentation of a uint8 (N, C, H, W) batch: geometry, crop/flip, lighting."""
    images = affine(images, cfg, generator)
    images = crop_flip(images, cfg, generator, flip)
    return lighting(images, cfg, generator)


def flip_sides(count: int, seed: int) -> torch.Tensor:
    """augment.hflip_alternate: each of ``count`` images' flip in even epochs, a random half (bool
    (count,)); odd epochs show each the other side. Random flips show an image the same side in
    consecutive epochs half the time; alternating never does, which airbench (Jordan 2024) found
    trains as if on more distinct images, most in short runs."""
    return torch.randint(0, 2, (count,), generator=make_generator(seed, FLIP_KEY)).bool()


FLIP_KEY = 0xF11B  # flip_sides' stream: apart from the (seed, epoch) orders and (seed, epoch, step) draws


def affine(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, zoom, resized crop, shift and shear as one affine map per image, filled beyond
    the edge by reflection or by the nearest edge pixel (``fill``).

    theta maps output to input coordinates in [-1, 1] units, as F.affine_grid wants:
    a zoom of s samples a window 1/s wide; a resized crop samples a (w, h) window. The Keras keys
    (zoom_out, shift, shear) draw after the others, so a config without them draws as it always did.
    """
    rrc = cfg.resized_crop
    if not cfg.rotation and cfg.zoom == 1 and not rrc and cfg.zoom_out == 1 and not cfg.shift and not cfg.shear:
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
    if cfg.zoom_out > 1:  # window side uniform in [1 / zoom, zoom_out], both sides alike (Keras' zoom_range)
        side = 1 / cfg.zoom + torch.rand(n, generator=generator) * (cfg.zoom_out - 1 / cfg.zoom)
        sx, sy = sx * side / scale, sy * side / scale
        cx, cy = cx.clamp(-(sx - 1).abs(), (sx - 1).abs()), cy.clamp(-(sy - 1).abs(), (sy - 1).abs())
    if cfg.shift:  # a share f of the size is 2f in [-1, 1] units
        cx = cx + (torch.rand(n, generator=generator) * 2 - 1) * 2 * cfg.shift
        cy = cy + (torch.rand(n, generator=generator) * 2 - 1) * 2 * cfg.shift
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([sx * cos, -sx * sin, cx], 1), torch.stack([sy * sin, sy * cos, cy], 1)], 1)
    if cfg.shear:  # rotation and scale after a shear of x along y: [[1, -sin s], [0, cos s]] (Keras')
        s = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(cfg.shear)
        shear = torch.stack([torch.stack([torch.ones(n), -s.sin()], 1), torch.stack([torch.zeros(n), s.cos()], 1)], 1)
        theta = torch.cat([theta[:, :, :2] @ shear, theta[:, :, 2:]], 2)
    theta = to_device(theta, images.device)
    grid = F.affine_grid(theta, [n, images.shape[1], h, w], align_corners=False)
    fill = "reflection" if cfg.fill == "reflect" else "border"
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode=fill, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def lighting(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness and contrast, each a factor in [1 - l, 1 + l] per image; contrast about the image mean.
    Then fastai 0.7's RandomLighting(b, c) where ``fastai_lighting`` is [b, c]: b uniform in [-b, b]
    added on the [0, 1] scale, contrast c uniform in [-c, c] made a factor 1 + c (c >= 0) or
    1 / (1 - c) (c < 0), about the image mean, clipped to [0, 1]."""
    if not cfg.lighting and not cfg.fastai_lighting:
        return images
    n = images.shape[0]
    x = images.float()
    if cfg.lighting:
        factors = 1 + (torch.rand(2, n, 1, 1, 1, generator=generator) * 2 - 1) * cfg.lighting
        brightness, contrast = to_device(factors, images.device)
        mean = x.mean((1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean).mul_(brightness).round_().clamp_(0, 255)
    if cfg.fastai_lighting:
        b, c = (torch.rand(2, n, 1, 1, 1, generator=generator) * 2 - 1) * torch.tensor(
            cfg.fastai_lighting).view(2, 1, 1, 1, 1)
        c = torch.where(c < 0, 1 / (1 - c), c + 1)
        b, c = to_device(b, images.device), to_device(c, images.device)
        mean = x.mean((1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean + 255 * b).round_().clamp_(0, 255)
    return x.to(torch.uint8)


ERASE_AREA = (0.02, 0.33)  # share of the image; torchvision's RandomErasing defaults (Zhong et al. 2017)
ERASE_RATIO = (0.3, 3.3)  # box height / width, drawn log-uniform
ERASE_TRIES = 10  # torchvision draws up to 10 boxes and keeps the first that fits inside


def erase(images: torch.Tensor, p: float, fill: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomErasing, for a batch: each image, with probability p, gets a box of
    ERASE_AREA x ERASE_RATIO set to ``fill`` ((C,) uint8: the data set's mean, which is what
    erasing to 0 after normalisation gives); the first of ERASE_TRIES draws that fits is used."""
    n, _, h, w = images.shape
    hit = torch.rand(n, generator=generator) < p
    area = h * w * (ERASE_AREA[0] + torch.rand(n, ERASE_TRIES, generator=generator) * (ERASE_AREA[1] - ERASE_AREA[0]))
    lo, hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    ratio = torch.exp(lo + torch.rand(n, ERASE_TRIES, generator=generator) * (hi - lo))
    eh, ew = (area * ratio).sqrt().round().long(), (area / ratio).sqrt().round().long()
    fits = (eh < h) & (ew < w)
    first = fits.float().argmax(1)  # index of the first fitting draw (0 when none fits: hit is cleared)
    hit &= fits.any(1)
    eh, ew = eh.gather(1, first[:, None])[:, 0], ew.gather(1, first[:, None])[:, 0]
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]) & hit[:, None, None])
    return torch.where(to_device(inside[:, None], images.device), to_device(fill.view(1, -1, 1, 1), images.device),
                       images)


def mix(images: torch.Tensor, targets: torch.Tensor, cfg: AugmentConfig,
        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix of a batch with itself rolled by one (torchvision's v2.MixUp / v2.CutMix):
    one lam ~ Beta(alpha, alpha) a batch; targets (N, k) float are mixed by the same share
    (for CutMix, the share of pixels the box really took). With probability 1 - mix_prob the
    batch is left as it is; with both alphas set, each batch picks one of the two at 1/2."""
    u = torch.rand(2, generator=generator).tolist()
    if u[0] >= cfg.mix_prob:
        return images, targets
    cut = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha == 0 or u[1] < 0.5)
    alpha = cfg.cutmix_alpha if cut else cfg.mixup_alpha
    lam = float(np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator))).beta(alpha, alpha))
    other = images.roll(1, 0)
    if cut:
        n, _, h, w = images.shape
        cy, cx = (int(torch.randint(size, (1,), generator=generator)) for size in (h, w))
        half_h, half_w = int(0.5 * math.sqrt(1 - lam) * h), int(0.5 * math.sqrt(1 - lam) * w)
        y0, y1, x0, x1 = max(cy - half_h, 0), min(cy + half_h, h), max(cx - half_w, 0), min(cx + half_w, w)
        images = images.clone()
        images[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:  # on uint8: rounding moves a pixel by at most 1/2 of a level
        images = images.float().mul_(lam).add_(other.float(), alpha=1 - lam).round_().to(torch.uint8)
    return images, targets.mul(lam).add_(targets.roll(1, 0), alpha=1 - lam)


def one_hot(labels: torch.Tensor, k: int) -> torch.Tensor:
    """int64 (N,) -> float32 (N, k), 1 at each label, on the labels' device; reads nothing back."""
    return torch.zeros(len(labels), k, device=labels.device).scatter_(1, labels[:, None], 1.0)


class BatchAugment:
    """All training augmentation of a global uint8 batch: geometry, crop/flip and lighting
    (augment_batch), then the policy, erasing, and mixing. Labels come back as int64 (N,), or as
    soft targets (N, k) float32 when mixup or CutMix is on (every batch then, mixed or not);
    multi-label targets (N, k) stay (N, k)."""

    def __init__(self, cfg: AugmentConfig, *, num_classes: int, fill: tuple[int, ...] = (),
                 sides: torch.Tensor | None = None):
        self.cfg, self.num_classes = cfg, num_classes
        self.fill = torch.tensor(fill or (0,), dtype=torch.uint8)
        self.mixing = cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0
        self.sides = sides  # flip_sides() of the split's images: flips alternate by epoch; None: random

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, *,
                 index: torch.Tensor | None = None, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``index``: the images' positions in the split (a CPU tensor, as the loaders give it: one on a
        GPU would be copied back, a sync), which with ``sides`` pick this epoch's flips."""
        cfg = self.cfg
        flip = None
        if self.sides is not None and index is not None:
            flip = self.sides[index] ^ bool(epoch % 2)
        images = augment_batch(images, cfg, generator, flip)
        if cfg.policy != "none":  # imported here: data/policy.py imports torchvision, which other runs skip
            from resnetlab.data.policy import apply_policy

            images = apply_policy(images, cfg.policy, cfg.policy_ops, cfg.policy_magnitude, generator)
        if cfg.erasing:
            images = erase(images, cfg.erasing, self.fill, generator)
        return self.mix(images, labels, generator)

    def mix(self, images: torch.Tensor, labels: torch.Tensor,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.mixing:
            return images, labels
        # multi-label targets are (N, k) multi-hot already: mixing two gives each label its share
        # not F.one_hot: it reads the labels' range back to check it (on the CPU and others; not on CUDA)
        targets = labels if labels.ndim == 2 else one_hot(labels, self.num_classes)
        return mix(images, targets, self.cfg, generator)


def normalize(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *, channels_last: bool
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, (x / 255 - mean) / std; std is (C,), mean (C,) or a mean image
    (C, H', W') (data.normalize=mean_image), resized to the batch's size where it differs (progressive
    resizing), all in [0, 1] units."""
    std = std.view(1, -1, 1, 1)
    scale = 1.0 / (255.0 * std)
    shift = mean.view(1, -1, 1, 1) / std if mean.dim() == 1 else image_shift(mean, std, images.shape[-2:])
    x = images.to(torch.float32).mul_(scale).sub_(shift)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def image_shift(mean: torch.Tensor, std: torch.Tensor, size) -> torch.Tensor:
    """A mean image (C, H, W) over std (1, C, 1, 1) as (1, C, H, W), bilinearly resized to ``size``."""
    mean = mean.unsqueeze(0).float()
    if tuple(mean.shape[-2:]) != tuple(size):
        mean = F.interpolate(mean, size=tuple(size), mode="bilinear", align_corners=False)
    return mean / std
