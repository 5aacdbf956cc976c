"""The task a model is trained for, as an object: single-label (softmax over k classes) or
multi-label (k sigmoids, a set of labels per image).

Each supplies what differs between them: the loss, the running tally of a training epoch, the
metrics of a scored split and their record keys, the score that chooses best.pt and its name in a
line, the lines that summarise a scored split, and the rule that decides an image (argmax with
rejection as unknown, or each class at its own threshold) with the files that rule reads. The
rest of the package asks the task (``task_for``, ``task_named``, ``task_of_config``) instead of
testing a flag.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from resnetlab import run_folder as rf
from resnetlab.io import read_json

# torch and the multi-label scores are imported where they are used: the run listing and the command
# line's options ask a task without loading them
if TYPE_CHECKING:
    import torch

# a training epoch's running sums, a float64 tensor on the device (no host sync a step): loss summed
# over images, images right, images seen; the checkpoint of a run stopped mid-epoch keeps them as a list
LOSS, CORRECT, SEEN = 0, 1, 2
TASK_KEY = "data.multi_label"  # the config key that chooses the task (true: multi-label)


class SingleLabel:
    """One class per image: cross-entropy, top-1/top-5, argmax (or rejection) decides."""

    name = "single_label"  # the checkpoint's "task" value
    kind = "single-label"  # in messages
    score_name = "top-1"
    score_key = "top1"  # the metric of a scored split that chooses best.pt
    val_score_key = "val_top1"  # ... and its key in an epoch's record
    train_key = "train_top1"  # the epoch record's training accuracy
    test_keys = ("top1", "top5", "loss", "balanced_accuracy", "macro_f1")  # the headline figures of a test
    per_class = ("f1", "F1")  # the per-class figure runs are compared by, and its name
    one_class = True  # top-k lists, rejection as unknown and folders of class folders apply
    sums_to_one = True  # probabilities of an image sum to 1: a max over TTA views is rescaled to do so
    # predict decides without calibration.json (argmax, no rejection): it is fitted only beside a scored split
    decision_required = False

    def loss(self, logits: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None,
             smoothing: float) -> torch.Tensor:
        """The batch's cross-entropy summed over its images (``y``: class indices or soft targets)."""
        import torch.nn.functional as F

        return F.cross_entropy(logits, y, weight=weight, label_smoothing=smoothing, reduction="sum")

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(1) == (y.argmax(1) if y.ndim == 2 else y)).sum()  # mixed: the larger share

    def tally(self, sums: torch.Tensor, logits: torch.Tensor, loss_sum: torch.Tensor, y: torch.Tensor) -> None:
        """Add a step to the epoch's running sums on the device: no host sync."""
        sums[LOSS] += loss_sum
        sums[CORRECT] += self.correct(logits, y)
        sums[SEEN] += len(y)

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor, classes: list[str],
                thresholds: torch.Tensor | None = None) -> dict:
        from resnetlab.evaluate.metrics import metrics

        return metrics(logits, labels, classes)

    def loss_weights(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """optim.class_weights=balanced: (k,) the loss weight of each class."""
        return balanced_weights(labels, num_classes)

    # an epoch's validation: the figures val_keys reads, summed batch by batch on the device and read
    # back once (the whole of ``metrics``, with scikit-learn, is for a scored split's report)
    scores_on_device = True

    def batch_scores(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(3,) float64 on the logits' device: the batch's cross-entropy summed over its images, its
        top-1 hits and its top-5 hits (``metrics`` computes the same from all the logits at once)."""
        import torch
        import torch.nn.functional as F

        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]  # (B, k): rank of the label
        return torch.stack([F.cross_entropy(logits, labels, reduction="sum"), hits[:, 0].sum(), hits.any(1).sum()]
                           ).double()

    def scores(self, sums: list[float], n: int) -> dict:
        """``batch_scores`` summed over a split's ``n`` images -> the ``metrics`` keys val_keys reads."""
        nan = float("nan")
        return {"n": n, "loss": sums[0] / n if n else nan, "top1": sums[1] / n if n else nan,
                "top5": sums[2] / n if n else nan}

    def guessing_loss(self, labels: torch.Tensor, k: int, weights: torch.Tensor | None) -> tuple[float, str]:
        """The loss of a model that predicts nothing, and its formula: ln k for softmax over k classes."""
        return math.log(k), f"ln({k})"

    def val_keys(self, result: dict) -> dict:
        """A scored split's figures under the epoch record's val_* keys."""
        return {"val_loss": result["loss"], "val_top1": result["top1"], "val_top5": result["top5"]}

    # what a model's outputs mean, and how an image is decided

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """A split's labels as inference takes them: (N,) class indices."""
        return labels

    def probabilities(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """(N, K) logits -> probabilities: softmax of the logits over the temperature fitted on val."""
        return (logits / temperature).softmax(1)

    def as_logits(self, probs: torch.Tensor) -> torch.Tensor:
        """Probabilities (a mean over views or models) as logits ``metrics`` scores: softmax gives them back."""
        return probs.clamp_min(1e-12).log()

    def thresholds_of(self, model) -> torch.Tensor | None:
        """(K,) per-class thresholds ``model`` decides with: none, the most probable class is the answer."""
        return None

    def rejected(self, probs: torch.Tensor, calibration: dict | None) -> torch.Tensor:
        """(N,) images whose top (temperature-scaled) probability falls under the threshold fitted on
        val (calibration.json): they look like no class the model knows; none when not calibrated."""
        if not calibration:
            return probs.new_zeros(len(probs)).bool()
        return probs.max(1).values.double() < calibration["msp_threshold"]

    def decide(self, probs: torch.Tensor, model, rejected: torch.Tensor | None = None) -> list:
        """Each image's verdict: its most probable class, or 'unknown' where ``rejected``."""
        names = [model.classes[i] for i in probs.argmax(1).tolist()]
        flags = [False] * len(names) if rejected is None else rejected.tolist()
        return ["unknown" if r else n for n, r in zip(names, flags)]

    def read_decision(self, folder: Path, classes: list[str], *, default_thresholds: bool = False) -> dict:
        """What a model of the run in ``folder`` decides with, as Classifier fields: the temperature and
        rejection thresholds of calibration.json where the run was calibrated, else nothing."""
        path = Path(folder) / rf.CALIBRATION
        if not path.is_file():
            return {}
        calibration = read_json(path)
        return {"calibration": calibration, "temperature": calibration["temperature"]}

    def sidecar(self, model) -> dict:
        """An export's keys that say how its output is decided (beside the temperature and calibration)."""
        return {"task": self.name}

    def config_entry(self) -> dict:
        """The task as config.yaml's data section says it: the run listing's JSON keeps that key."""
        return {TASK_KEY.split(".")[1]: isinstance(self, MultiLabel)}

    # lines for people

    def test_lines(self, result: dict, how: str) -> list[str]:
        """What the end of a run prints for its scored test split; ``how``: which checkpoint and why."""
        return [f"test top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
                f"loss {result['loss']:.4f}  (n={result['n']}, {how}; {result['images_per_s']:.0f} img/s)",
                *self.tta_lines(result)]

    def tta_lines(self, result: dict) -> list[str]:
        """A scored split's TTA score beside the plain one (none without TTA), for runs and `evaluate` alike."""
        if "tta" not in result:
            return []
        t = result["tta"]
        return [f"TTA x{t['views']} ({t['reduce']}): top-1 {100 * t['top1']:.2f}% vs {100 * result['top1']:.2f}% "
                f"without (n={t['n']}; {t['images_per_s']:.0f} image-views/s)"]

    def table(self, result: dict, classes: list[str]) -> str:
        from resnetlab.evaluate.metrics import format_table

        return format_table(result, classes)

    def detail_lines(self, result: dict) -> list[str]:
        """What `resnetlab evaluate` prints under the table: TTA, calibration and rejection."""
        cal = result["calibration"]
        line = f"ECE {100 * cal['ece']:.2f}%"
        if "temperature" in cal:
            line += f" -> {100 * cal['ece_scaled']:.2f}% with temperature {cal['temperature']:.3f} (fitted on val)"
        lines = [*self.tta_lines(result), line + f" (n={cal['n']})"]
        for method, row in result["rejection"].get("methods", {}).items():
            known = row.get("known_rejected")
            parts = [f"known wrongly rejected {100 * known:.1f}%"] if known is not None else []
            if "unseen_rejected" in row:
                parts.append(f"unseen classes rejected {100 * row['unseen_rejected']:.1f}% "
                             f"(n={result['rejection']['unseen_n']})")
            lines.append(f"rejection by {method}: " + ", ".join(parts))
        return lines

    def ensemble_line(self, ensemble: dict, result: dict) -> str:
        return (f"snapshot ensemble of {ensemble['members']}: top-1 {100 * ensemble['top1']:.2f}%  top-5 "
                f"{100 * ensemble['top5']:.2f}% (n={ensemble['n']}); {result['checkpoint']} alone "
                f"{100 * result['top1']:.2f}%")

    def tables(self, split: str, result: dict) -> str:
        """The tables scoring ``split`` wrote beside eval_<split>.json, for a closing line."""
        return rf.confusion_csv(split)


class MultiLabel(SingleLabel):
    """A set of labels per image: binary cross-entropy summed over the k classes, mAP chooses,
    per-class thresholds decide."""

    name = "multi_label"  # as multilabel.TASK_NAME, the "task" of its scores
    kind = "multi-label"
    score_name = "mAP"
    score_key = "map_macro"
    val_score_key = "val_map"
    train_key = "train_exact"  # exact match of the whole label set at probability 0.5
    test_keys = ("map_macro", "map_micro", "f1_micro", "f1_macro", "exact_match", "hamming_loss", "loss")
    per_class = ("ap", "AP")
    one_class = False
    sums_to_one = False  # one sigmoid a class
    decision_required = True  # predict, export and serve cannot decide without thresholds.json

    def loss(self, logits: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None,
             smoothing: float) -> torch.Tensor:
        """Smoothing pulls targets to eps/2 and 1 - eps/2 (the two-class case of cross-entropy's);
        ``weight`` weighs each class's positives (BCE's pos_weight)."""
        import torch.nn.functional as F

        target = y * (1 - smoothing) + smoothing / 2 if smoothing else y
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="sum")

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # a mixed target counts a label present when its share is over 1/2
        return ((logits > 0) == (y > 0.5)).all(1).sum()

    def metrics(self, logits: torch.Tensor, labels: torch.Tensor, classes: list[str],
                thresholds: torch.Tensor | None = None) -> dict:
        """Scored at ``thresholds`` (None: 0.5 for every class)."""
        return _ml().multilabel_metrics(logits, labels, classes, thresholds)

    def loss_weights(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(k,) the weight of each class's positives, so a rare label's few positives weigh as much as
        its negatives."""
        return positive_weights(labels)

    scores_on_device = False  # mAP ranks a class's images across the whole split: scored from the logits

    def guessing_loss(self, labels: torch.Tensor, k: int, weights: torch.Tensor | None) -> tuple[float, str]:
        """k sigmoids at 1/2 (the loss is summed over classes): k ln 2, or with positive weights w_i on
        classes of prevalence p_i, ln 2 * sum(p_i w_i + 1 - p_i) (balanced weights nearly double it)."""
        if weights is None:
            return k * math.log(2), f"{k} ln 2"
        p = labels.mean(0)
        return math.log(2) * float((p * weights.cpu() + 1 - p).sum()), "ln 2 x sum(p w + 1 - p)"

    def val_keys(self, result: dict) -> dict:
        return {"val_loss": result["loss"], "val_map": result["map_macro"], "val_map_micro": result["map_micro"]}

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, K) multi-hot float targets."""
        return labels.float()

    def probabilities(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Each class's own sigmoid (a row does not sum to 1); no temperature."""
        return logits.sigmoid()

    def as_logits(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.logit(eps=1e-7)  # sigmoid gives the probabilities back

    def thresholds_of(self, model) -> torch.Tensor:
        return _ml().decision_thresholds(model)

    def rejected(self, probs: torch.Tensor, calibration: dict | None) -> torch.Tensor:
        return probs.new_zeros(len(probs)).bool()  # an image may have no label: nothing to reject

    def decide(self, probs: torch.Tensor, model, rejected: torch.Tensor | None = None) -> list:
        """Each image's label set: the classes whose probability reaches their threshold, in class order."""
        thresholds = self.thresholds_of(model).tolist()
        return [[c for c, v, t in zip(model.classes, p, thresholds) if v >= t] for p in probs.tolist()]

    def read_decision(self, folder: Path, classes: list[str], *, default_thresholds: bool = False) -> dict:
        """thresholds.json's per-class thresholds and where they came from; a missing or damaged file is
        a one-line error, or with ``default_thresholds`` 0.5 for every class."""
        thresholds, source = _ml().read_thresholds(Path(folder) / rf.THRESHOLDS, list(classes),
                                                   allow_default=default_thresholds)
        return {"thresholds": thresholds, "threshold_source": source}

    def sidecar(self, model) -> dict:
        return {"task": self.name, "thresholds": [float(v) for v in self.thresholds_of(model)],  # unrounded
                "threshold_source": getattr(model, "threshold_source", ""),
                "output": "probabilities (N, classes), one sigmoid a class; a class is present where its "
                          "probability >= its threshold (thresholds, in class order)"}

    def test_lines(self, result: dict, how: str) -> list[str]:
        pct = {k: 100 * result[k] for k in ("map_macro", "chance_map_macro", "map_micro", "f1_micro", "exact_match")}
        return [f"test mAP {pct['map_macro']:.2f}% (macro; chance {pct['chance_map_macro']:.2f}%), micro "
                f"{pct['map_micro']:.2f}%  F1 micro {pct['f1_micro']:.2f}%  exact match {pct['exact_match']:.2f}%  "
                f"(n={result['n']}, {how}; {result['images_per_s']:.0f} img/s)",
                f"thresholds: {result.get('threshold_source', '')}", *self.tta_lines(result)]

    def tta_lines(self, result: dict) -> list[str]:
        if "tta" not in result:
            return []
        t = result["tta"]
        return [f"TTA x{t['views']} ({t['reduce']} of sigmoids): mAP {100 * t['map_macro']:.2f}% vs "
                f"{100 * result['map_macro']:.2f}% without; exact match {100 * t['exact_match']:.2f}% "
                f"(n={t['n']}; {t['images_per_s']:.0f} image-views/s)"]

    def table(self, result: dict, classes: list[str]) -> str:
        return _ml().format_multilabel_table(result)

    def detail_lines(self, result: dict) -> list[str]:
        """Where the thresholds came from, with their notes, and TTA."""
        notes = [f"  {note}" for note in result.get("threshold_notes", [])[:10]]
        return [f"thresholds: {result['threshold_source']}", *notes, *self.tta_lines(result)]

    def ensemble_line(self, ensemble: dict, result: dict) -> str:
        return (f"snapshot ensemble of {ensemble['members']}: mAP {100 * ensemble['map_macro']:.2f}% "
                f"(n={ensemble['n']}); {result['checkpoint']} alone {100 * result['map_macro']:.2f}%")

    def tables(self, split: str, result: dict) -> str:
        saved = result.get("threshold_source", "").endswith(f"saved to {rf.THRESHOLDS}")
        return _ml().per_class_csv(split) + (f", {rf.THRESHOLDS}" if saved else "")


def _ml():
    """evaluate/multilabel.py: multi-label scores and the thresholds file."""
    from resnetlab.evaluate import multilabel

    return multilabel


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (k * n_class) for each class: each class then carries the same total weight (1/k);
    a class with no images gets 0."""
    counts = labels.bincount(minlength=num_classes).double()
    return (len(labels) / (num_classes * counts.clamp_min(1))).where(counts > 0, 0.0).float()


def positive_weights(targets: torch.Tensor) -> torch.Tensor:
    """(K,) negatives / positives of each class in (N, K) multi-hot targets: BCE's pos_weight, which
    gives a class's positives the total weight of its negatives; 1 for a class without positives."""
    positives = targets.sum(0).double()
    return ((len(targets) - positives) / positives.clamp_min(1)).where(positives > 0, 1.0).float()


def task_for(multi_label: bool) -> SingleLabel:
    """The task of a data set or checkpoint whose labels are (or are not) sets."""
    return MultiLabel() if multi_label else SingleLabel()


def task_named(name: str | None) -> SingleLabel:
    """The task a checkpoint's "task" value names (older checkpoints have none: single-label)."""
    return MultiLabel() if name == MultiLabel.name else SingleLabel()


def task_of_config(config) -> SingleLabel:
    """The task a run's config trains: a Config, or config.yaml read as a dict (TASK_KEY)."""
    section, key = TASK_KEY.split(".")
    if isinstance(config, dict):
        part = config.get(section) or {}
        return task_for(bool(part.get(key)) if isinstance(part, dict) else False)
    return task_for(bool(getattr(getattr(config, section), key)))


class Tasked:
    """For what carries a ``task`` (a model, an export, a listed run): ``multi_label`` answers the
    yes-or-no question for callers of the public attribute."""

    task: SingleLabel

    @property
    def multi_label(self) -> bool:
        return isinstance(self.task, MultiLabel)
