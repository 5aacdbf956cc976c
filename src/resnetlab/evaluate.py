"""Inference over a split, and metrics as pure functions of (logits, labels)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.data.augment import normalize
from resnetlab.runtime import autocast


@dataclass
class Inference:
    logits: torch.Tensor  # (N, K) float32, on the CPU
    labels: torch.Tensor  # (N,) int64, on the CPU
    seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.labels) / max(self.seconds, 1e-9)


@torch.no_grad()
def infer(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    precision: str,
    channels_last: bool,
) -> Inference:
    """Logits for every batch of uint8 images, in eval mode and the training precision."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    start = time.perf_counter()
    with autocast(device, precision):
        for x, y in batches:
            if len(y) == 0:  # this rank's share of a batch smaller than the rank count
                continue
            out = model(normalize(x.to(device), mean, std, channels_last=channels_last))
            logits.append(out.float().cpu())
            labels.append(y.cpu())
    model.train(was_training)
    k = getattr(model, "fc", None)
    empty = torch.empty(0, k.out_features if isinstance(k, nn.Linear) else 0)
    return Inference(
        torch.cat(logits) if logits else empty,
        torch.cat(labels) if labels else torch.empty(0, dtype=torch.long),
        time.perf_counter() - start,
    )


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    hit = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return hit.float().mean().item()


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    flat = labels * num_classes + pred
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Top-1/5, loss, balanced accuracy, macro-F1, per-class precision/recall/F1/support, and the
    confusion matrix raw and row-normalised. Every figure comes with its count n."""
    k = len(classes)
    cm = confusion_matrix(logits.argmax(1), labels, k).double()
    support, predicted, hits = cm.sum(1), cm.sum(0), cm.diag()
    precision = torch.where(predicted > 0, hits / predicted.clamp_min(1), torch.nan)
    recall = torch.where(support > 0, hits / support.clamp_min(1), torch.nan)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = torch.where(support > 0, f1, torch.nan)

    def value(t: torch.Tensor, i: int):
        return None if torch.isnan(t[i]) else round(t[i].item(), 6)

    per_class = {
        name: {"accuracy": value(recall, i), "precision": value(precision, i), "recall": value(recall, i),
               "f1": value(f1, i), "n": int(support[i]), "predicted": int(predicted[i])}
        for i, name in enumerate(classes)
    }
    present = support > 0  # classes absent from this split do not count in the averages
    return {
        "n": len(labels),
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "loss": F.cross_entropy(logits, labels).item() if len(labels) else float("nan"),
        "balanced_accuracy": recall[present].mean().item() if present.any() else float("nan"),
        "macro_f1": f1[present].nan_to_num(0.0).mean().item() if present.any() else float("nan"),
        "classes_present": int(present.sum()),
        "per_class": per_class,
        "confusion": cm.long().tolist(),
        "confusion_normalized": [[round(v, 6) for v in row] for row in (cm / support.clamp_min(1)[:, None]).tolist()],
    }


def format_table(result: dict, classes: list[str], *, limit: int = 50) -> str:
    """A plain-text report: headline metrics, then per-class accuracy with counts."""
    lines = [
        f"images {result['n']}   top-1 {100 * result['top1']:.2f}%   top-5 {100 * result['top5']:.2f}%   "
        f"loss {result['loss']:.4f}   balanced accuracy {100 * result['balanced_accuracy']:.2f}%   "
        f"macro-F1 {100 * result['macro_f1']:.2f}%"
    ]
    width = max(len(c) for c in classes[:limit]) if classes else 5
    lines.append(f"{'class':<{width}}  precision    recall        F1      n")

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    for name in classes[:limit]:
        row = result["per_class"][name]
        lines.append(f"{name:<{width}}  {pct(row['precision']):>9}  {pct(row['recall']):>8}  {pct(row['f1']):>8}  "
                     f"{row['n']:>5}")
    if len(classes) > limit:
        lines.append(f"... {len(classes) - limit} more classes in the JSON")
    return "\n".join(lines)


@torch.no_grad()
def infer_tta(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, views: int, reduce: str,
              augment, mean: torch.Tensor, std: torch.Tensor, device: torch.device, precision: str,
              batch_size: int = 256, seed: int = 0) -> Inference:
    """TTA over a model; returned as log-probabilities in ``logits`` (softmax gives them back)."""
    model.eval()

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(normalize(x.to(device), mean, std, channels_last=True)).float().softmax(1).cpu()

    start = time.perf_counter()
    combined = combine_views(probabilities, images, views=views, reduce=reduce, augment=augment,
                             batch_size=batch_size, seed=seed)
    return Inference(combined.clamp_min(1e-12).log(), labels.cpu(), time.perf_counter() - start)


def combine_views(probabilities, images: torch.Tensor, *, views: int, reduce: str, augment, batch_size: int = 256,
                  seed: int = 0) -> torch.Tensor:
    """Class probabilities over ``views`` versions of each image: the image itself, then views drawn
    with the training augmentation (so flips only where training flipped), one generator per view
    and batch. ``probabilities`` maps uint8 (B, C, H, W) to (B, K); each view streams the images once."""
    from resnetlab.data.augment import augment_batch, make_generator

    total = None
    for v in range(views):
        parts = []
        for i, x in enumerate(images.split(batch_size)):
            if v:
                x = augment_batch(x, augment, make_generator(seed, 0x77A, v, i))
            parts.append(probabilities(x))
        probs = torch.cat(parts)
        total = probs if total is None else (total + probs if reduce == "mean" else torch.maximum(total, probs))
    return total / views if reduce == "mean" else total / total.sum(1, keepdim=True)
