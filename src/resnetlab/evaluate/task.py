"""The task a model is trained for, as an object: single-label (softmax over k classes) or
multi-label (k sigmoids, a set of labels per image).

Each supplies what differs between them: the loss, the running tally of a training epoch, the
metrics of a scored split and their record keys, the score that chooses best.pt, and its name in
a line. The rest of the package asks the task (``task_for``) instead of testing a flag.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# a training epoch's running sums, a float64 tensor on the device (no host sync a step): loss summed
# over images, images right, images seen; the checkpoint of a run stopped mid-epoch keeps them as a list
LOSS, CORRECT, SEEN = 0, 1, 2


class SingleLabel:
    """One class per image: cross-entropy, top-1/top-5, argmax (or rejection) decides."""

    name = "single_label"  # the checkpoint's "task" value
    score_name = "top-1"
    score_key = "top1"  # the metric of a scored split that chooses best.pt
    val_score_key = "val_top1"  # ... and its key in an epoch's record
    train_key = "train_top1"  # the epoch record's training accuracy
    test_keys = ("top1", "top5", "loss", "balanced_accuracy", "macro_f1")  # the headline figures of a test

    def loss(self, logits: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None,
             smoothing: float) -> torch.Tensor:
        """The batch's cross-entropy summed over its images (``y``: class indices or soft targets)."""
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=smoothing, reduction="sum")

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(1) == (y.argmax(1) if y.ndim == 2 else y)).sum()  # mixed: the larger share

    def tally(self, sums: torch.Tensor, logits: torch.Tensor, loss_sum: torch.Tensor, y: torch.Tensor) -> None:
        """Add a step to the epoch's running sums on the device: no host sync."""
        sums[LOSS] += loss_sum
        sums[CORRECT] += self.correct(logits, y)
        sums[SEEN] += len(y)

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
        from resnetlab.evaluate.metrics import metrics

        return metrics(logits, labels, classes)

    def loss_weights(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """optim.class_weights=balanced: (k,) the loss weight of each class."""
        return balanced_weights(labels, num_classes)

    def guessing_loss(self, labels: torch.Tensor, k: int, weights: torch.Tensor | None) -> tuple[float, str]:
        """The loss of a model that predicts nothing, and its formula: ln k for softmax over k classes."""
        return math.log(k), f"ln({k})"

    def val_keys(self, result: dict) -> dict:
        """A scored split's figures under the epoch record's val_* keys."""
        return {"val_loss": result["loss"], "val_top1": result["top1"], "val_top5": result["top5"]}


class MultiLabel(SingleLabel):
    """A set of labels per image: binary cross-entropy summed over the k classes, mAP chooses,
    per-class thresholds decide."""

    name = "multi_label"
    score_name = "mAP"
    score_key = "map_macro"
    val_score_key = "val_map"
    train_key = "train_exact"  # exact match of the whole label set at probability 0.5
    test_keys = ("map_macro", "map_micro", "f1_micro", "f1_macro", "exact_match", "hamming_loss", "loss")

    def loss(self, logits: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None,
             smoothing: float) -> torch.Tensor:
        """Smoothing pulls targets to eps/2 and 1 - eps/2 (the two-class case of cross-entropy's);
        ``weight`` weighs each class's positives (BCE's pos_weight)."""
        target = y * (1 - smoothing) + smoothing / 2 if smoothing else y
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="sum")

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # a mixed target counts a label present when its share is over 1/2
        return ((logits > 0) == (y > 0.5)).all(1).sum()

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
        from resnetlab.evaluate.multilabel import multilabel_metrics

        return multilabel_metrics(logits, labels, classes)

    def loss_weights(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(k,) the weight of each class's positives, so a rare label's few positives weigh as much as
        its negatives."""
        return positive_weights(labels)

    def guessing_loss(self, labels: torch.Tensor, k: int, weights: torch.Tensor | None) -> tuple[float, str]:
        """k sigmoids at 1/2 (the loss is summed over classes): k ln 2, or with positive weights w_i on
        classes of prevalence p_i, ln 2 * sum(p_i w_i + 1 - p_i) (balanced weights nearly double it)."""
        if weights is None:
            return k * math.log(2), f"{k} ln 2"
        p = labels.mean(0)
        return math.log(2) * float((p * weights.cpu() + 1 - p).sum()), "ln 2 x sum(p w + 1 - p)"

    def val_keys(self, result: dict) -> dict:
        return {"val_loss": result["loss"], "val_map": result["map_macro"], "val_map_micro": result["map_micro"]}


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (k * n_class) for each class: each class then carries the same total weight (1/k);
    a class with no images gets 0."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    return torch.where(counts > 0, len(labels) / (num_classes * counts.clamp_min(1)), 0.0).float()


def positive_weights(targets: torch.Tensor) -> torch.Tensor:
    """(K,) negatives / positives of each class in (N, K) multi-hot targets: BCE's pos_weight, which
    gives a class's positives the total weight of its negatives; 1 for a class without positives."""
    positives = targets.sum(0).double()
    return torch.where(positives > 0, (len(targets) - positives) / positives.clamp_min(1), 1.0).float()


def task_for(multi_label: bool) -> SingleLabel:
    """The task of a data set or checkpoint whose labels are (or are not) sets."""
    return MultiLabel() if multi_label else SingleLabel()


def task_named(name: str | None) -> SingleLabel:
    """The task a checkpoint's "task" value names (older checkpoints have none: single-label)."""
    return MultiLabel() if name == MultiLabel.name else SingleLabel()
