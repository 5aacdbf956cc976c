"""What evaluation scores: a Classifier (a model with the preprocessing it was trained with), and
inference over batches, plain or with test-time augmentation.

A Classifier is loaded from a run's checkpoint (evaluate/trained.py ``run_model``; deploy's
Predictor is the same with ``Predictor.load``); evaluation needs nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from resnetlab.config import AugmentConfig
from resnetlab.data.augment import augment_batch, make_generator, normalize, reflect_index
from resnetlab.data.decode import decode_for_model
from resnetlab.device import autocast
from resnetlab.errors import UserError
from resnetlab.evaluate.task import SingleLabel, Tasked


@dataclass
class Classifier(Tasked):
    model: nn.Module
    classes: list[str]
    image_size: int  # px, side of the square input
    channels: int
    resize: str  # how files are brought to image_size: squash or crop
    mean: torch.Tensor  # (C,) on the device, [0, 1] units
    std: torch.Tensor
    device: torch.device
    precision: str  # of inference on this device: fp32 or bf16 (CPU), bf16 or fp16 (GPU)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # the training augmentation, for TTA
    temperature: float = 1.0  # fitted on val by evaluation; 1 = raw softmax
    calibration: dict | None = None  # temperature and rejection thresholds, once fitted
    task: SingleLabel = field(default_factory=SingleLabel)  # what its outputs mean and how it decides
    thresholds: torch.Tensor | None = None  # (K,) multi-label decision thresholds on probabilities; None: 0.5
    threshold_source: str = ""  # multi-label: where the thresholds came from, one line
    source: str = ""  # the checkpoint file it came from (and whether its EMA weights), for reports
    checkpoint: Path | None = None  # that file's path
    model_name: str = ""  # the model and its options, as the checkpoint names them (exports record them)
    model_options: dict | None = None

    def load_images(self, paths: list[str]) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
        """uint8 (N, C, S, S) for the readable files, their paths, and (path, reason) for the rest."""
        return decode_for_model(paths, self.image_size, self.resize, self.channels)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 (N, C, S, S) -> (N, K) float32 logits on the CPU (no temperature)."""
        self.model.eval()
        out = []
        with autocast(self.device, self.precision):
            for part in images.split(batch_size):
                x = normalize(part.to(self.device), self.mean, self.std, channels_last=True)
                out.append(self.model(x).float().cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def probabilities(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 (N, C, S, S) -> (N, K) float32 class probabilities, temperature-scaled if calibrated;
        multi-label: each class's own sigmoid probability (the rows do not sum to 1)."""
        return self.task.probabilities(self.logits(images, batch_size), self.temperature)


@dataclass
class Inference:
    logits: torch.Tensor  # (N, K) float32, on the CPU
    labels: torch.Tensor  # (N,) int64, on the CPU
    seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.labels) / max(self.seconds, 1e-9)


@torch.no_grad()
def infer(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, mean: torch.Tensor,
          std: torch.Tensor, device: torch.device, precision: str, channels_last: bool,
          num_classes: int) -> Inference:
    """Logits for every batch of uint8 images, in eval mode; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    logits, labels, pending = [], [], []
    start = time.perf_counter()
    with autocast(device, precision):
        for x, y in batches:
            if len(y) == 0:  # this rank's share of a batch smaller than the rank count
                continue
            out = model(normalize(x.to(device), mean, std, channels_last=channels_last))
            # kept on the device and copied back HOST_EVERY batches at a time: a copy to the host waits
            # for the GPU, so one a batch would stall every batch
            pending.append((out.float(), y))
            if len(pending) == HOST_EVERY:
                _to_host(pending, logits, labels)
    _to_host(pending, logits, labels)
    model.train(was_training)
    return Inference(
        torch.cat(logits) if logits else torch.empty(0, num_classes),
        torch.cat(labels) if labels else torch.empty(0, dtype=torch.long),
        time.perf_counter() - start,
    )


HOST_EVERY = 32  # batches of logits held on the device between copies to the host


@torch.no_grad()
def infer_sums(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
               score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, mean: torch.Tensor,
               std: torch.Tensor, device: torch.device, precision: str, channels_last: bool,
               num_classes: int) -> torch.Tensor:
    """``score(logits, labels)`` of every batch (float32 logits), summed on the device, with the images
    scored as a last entry: no copy to the host and no sync; the caller reads the sums once (a rank
    with no images gives zeros of the same length). The model's mode is restored after."""
    was_training = model.training
    model.eval()
    total, n = None, 0
    for x, y in batches:
        if len(y) == 0:  # this rank's share of a batch smaller than the rank count
            continue
        with autocast(device, precision):
            out = model(normalize(x.to(device), mean, std, channels_last=channels_last))
        part = score(out.float(), y.to(device, non_blocking=True))
        total = part if total is None else total + part
        n += len(y)
    model.train(was_training)
    if total is None:
        total = score(torch.zeros(0, num_classes, device=device), torch.zeros(0, dtype=torch.long, device=device))
    return torch.cat([total, total.new_tensor([n])])


def _to_host(pending: list, logits: list, labels: list) -> None:
    if pending:
        logits.append(torch.cat([out for out, _ in pending]).cpu())
        labels.append(torch.cat([y.to(logits[-1].device) for _, y in pending]))
        pending.clear()


def infer_images(c: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Inference:
    """Plain inference of a Classifier over uint8 images held in memory."""
    batches = zip(images.split(batch_size), labels.split(batch_size))
    return infer(c.model, batches, mean=c.mean, std=c.std, device=c.device, precision=c.precision,
                 channels_last=True, num_classes=len(c.classes))


def infer_tta(c: Classifier, images: torch.Tensor, labels: torch.Tensor, *, views: int, reduce: str,
              batch_size: int = 256, seed: int = 0) -> Inference:
    """TTA over a Classifier; returned as log-probabilities in ``logits`` (softmax gives them back)."""
    start = time.perf_counter()
    combined = combine_views(lambda x: c.logits(x, batch_size).softmax(1), images, views=views, reduce=reduce,
                             augment=c.augment, batch_size=batch_size, seed=seed)
    return Inference(combined.clamp_min(1e-12).log(), labels.cpu(), time.perf_counter() - start)


def infer_fixed_tta(c: Classifier, images: torch.Tensor, labels: torch.Tensor, *, views: int,
                    batch_size: int = 256) -> Inference:
    """airbench's fixed TTA (train.final_tta_views=fixed): logits averaged over the image and, with 3 or 6
    views, its 1 px diagonal shifts up-left and down-right (reflected at the edge), each with its mirror
    where training flipped (2 or 6 views); the unshifted views weigh half. Returned as log-probabilities."""
    if views not in (2, 3, 6):
        raise UserError(f"fixed TTA has 2 views (the image and its mirror), 3 (and its diagonal shifts) or 6 (each "
                        f"with its mirror), not {views}")
    start = time.perf_counter()
    shifts, weights = ([0], [1.0]) if views <= 2 else ([0, -1, 1], [0.5, 0.25, 0.25])
    mirrors = [False, True] if views in (2, 6) else [False]
    total = torch.zeros(len(labels), len(c.classes))
    for d, w in zip(shifts, weights):
        shifted = shift_diagonal(images, d)
        for mirror in mirrors:
            total += w / len(mirrors) * c.logits(shifted.flip(-1) if mirror else shifted, batch_size)
    return Inference(total.log_softmax(1), labels.cpu(), time.perf_counter() - start)


def shift_diagonal(images: torch.Tensor, d: int) -> torch.Tensor:
    """(N, C, H, W) with pixel (y, x) taken from (y + d, x + d), reflected at the edges (airbench's
    reflect-pad by 1 and crop: d = -1 is the crop at (0, 0), d = 1 at (2, 2))."""
    if d == 0:
        return images
    h, w = images.shape[-2:]
    rows, cols = reflect_index(torch.arange(h) + d, h), reflect_index(torch.arange(w) + d, w)
    return images[..., rows, :][..., cols]


def combine_views(probabilities, images: torch.Tensor, *, views: int, reduce: str, augment: AugmentConfig,
                  batch_size: int = 256, seed: int = 0, normalise: bool = True) -> torch.Tensor:
    """Class probabilities over ``views`` versions of each image: the image itself, its mirror where
    training flipped (the one view every image gets; airbench's TTA starts there too), then views drawn
    with the training augmentation (so flips only where training flipped), one generator per view
    and batch. ``probabilities`` maps uint8 (B, C, H, W) to (B, K); each view streams the images once.
    ``reduce="max"`` rescales rows to sum 1 (softmax); ``normalise=False`` keeps the max as it is
    (multi-label sigmoids, one probability a class)."""
    total = None
    for v in range(views):
        parts = []
        for i, x in enumerate(images.split(batch_size)):
            if v == 1 and augment.hflip:
                x = x.flip(-1)
            elif v:
                x = augment_batch(x, augment, make_generator(seed, 0x77A, v, i))
            parts.append(probabilities(x))
        probs = torch.cat(parts)
        total = probs if total is None else (total + probs if reduce == "mean" else torch.maximum(total, probs))
    if reduce == "mean":
        return total / views
    return total / total.sum(1, keepdim=True) if normalise else total
