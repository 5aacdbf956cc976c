"""Metrics as pure functions of (logits, labels), computed by scikit-learn where it has them.

Top-k accuracy and the loss come from the logits; precision, recall, F1, balanced
accuracy and the confusion matrix from scikit-learn, so the averages follow its
well-known conventions: macro-F1 averages over every class that is present in the
labels *or* the predictions (a class predicted but absent scores F1 0), balanced
accuracy over the classes present in the labels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from resnetlab.io import atomic_write_text, csv_text


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    hit = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return hit.float().mean().item()


def metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Top-1/5, loss, balanced accuracy, macro-F1, per-class precision/recall/F1/support, and the
    confusion matrix raw and row-normalised. Every figure comes with its count n."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    k = len(classes)
    y, pred = labels.numpy(), logits.argmax(1).numpy() if len(labels) else labels.numpy()
    every = list(range(k))
    cm = torch.from_numpy(confusion_matrix(y, pred, labels=every)) if len(y) else torch.zeros(k, k, dtype=torch.long)
    support, predicted = cm.sum(1), cm.sum(0)
    with warnings.catch_warnings():  # undefined precision/recall: reported as null below, not warned about
        warnings.simplefilter("ignore")
        precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=every, zero_division=0) \
            if len(y) else ([0.0] * k,) * 3 + (None,)
        macro_f1 = float(f1_score(y, pred, average="macro", zero_division=0)) if len(y) else float("nan")
        balanced = float(balanced_accuracy_score(y, pred)) if len(y) else float("nan")

    def value(v: float, defined: bool):
        return round(float(v), 6) if defined else None

    per_class = {
        name: {"accuracy": value(recall[i], support[i] > 0), "precision": value(precision[i], predicted[i] > 0),
               "recall": value(recall[i], support[i] > 0),
               "f1": value(f1[i], support[i] > 0 or predicted[i] > 0),
               "n": int(support[i]), "predicted": int(predicted[i])}
        for i, name in enumerate(classes)
    }
    rows = cm.double() / support.clamp_min(1)[:, None].double()
    return {
        "n": len(labels),
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "loss": F.cross_entropy(logits, labels).item() if len(labels) else float("nan"),
        "balanced_accuracy": balanced,
        "macro_f1": macro_f1,
        "classes_present": int((support > 0).sum()),
        "per_class": per_class,
        "confusion": cm.long().tolist(),
        "confusion_normalized": [[round(v, 6) for v in row] for row in rows.tolist()],
    }


def format_table(result: dict, classes: list[str], *, limit: int = 50) -> str:
    """A plain-text report: headline metrics, then per-class precision, recall and F1 with counts."""
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


def write_confusion_csv(path: Path, confusion: list[list], classes: list[str]) -> None:
    rows = [["true \\ predicted", *classes]] + [[name, *row] for name, row in zip(classes, confusion)]
    atomic_write_text(path, csv_text(rows))
