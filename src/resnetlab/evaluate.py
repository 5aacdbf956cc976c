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
    """Top-1, top-5, loss, per-class accuracy and the confusion matrix, each with its count n."""
    k = len(classes)
    cm = confusion_matrix(logits.argmax(1), labels, k)
    support = cm.sum(1)
    per_class = {
        name: {
            "accuracy": (cm[i, i] / support[i]).item() if support[i] else None,
            "n": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    return {
        "n": len(labels),
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "loss": F.cross_entropy(logits, labels).item() if len(labels) else float("nan"),
        "per_class": per_class,
        "confusion": cm.tolist(),
    }


def format_table(result: dict, classes: list[str], *, limit: int = 50) -> str:
    """A plain-text report: headline metrics, then per-class accuracy with counts."""
    lines = [
        f"images {result['n']}   top-1 {100 * result['top1']:.2f}%   top-5 {100 * result['top5']:.2f}%   "
        f"loss {result['loss']:.4f}"
    ]
    width = max(len(c) for c in classes[:limit]) if classes else 5
    lines.append(f"{'class':<{width}}  accuracy      n")
    for name in classes[:limit]:
        row = result["per_class"][name]
        acc = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f}%"
        lines.append(f"{name:<{width}}  {acc:>8}  {row['n']:>5}")
    if len(classes) > limit:
        lines.append(f"... {len(classes) - limit} more classes in the JSON")
    return "\n".join(lines)
