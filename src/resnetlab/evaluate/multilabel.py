"""Multi-label scores (data sets of label sets): each class is present or not, by its own sigmoid.

Scores are scikit-learn's: AP per class (the area under its precision-recall curve, no threshold)
and its mean over classes (mAP); F1, exact match (every label of an image right) and Hamming loss
(share of wrong image-class decisions) at each class's decision threshold, ``prob >= threshold``.
Thresholds are fitted on val to maximise each class's F1 and kept in thresholds.json, which predict,
export and serve read through ``read_thresholds``. A split is scored by evaluate/multilabel_split.py.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from resnetlab.errors import UserError
from resnetlab.io import write_json

TASK_NAME = "multi_label"  # the "task" of these scores: task.MultiLabel.name (which imports this module)
DEFAULT = 0.5  # probability threshold where none was fitted
TOP_LOSSES = 16  # images listed (and drawn) by highest loss


def per_class_csv(split: str) -> str:
    """A split's per-class table beside eval_<split>.json."""
    return f"per_class_{split}.csv"


def _round(v, defined: bool = True):
    return round(float(v), 6) if defined else None


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: list[str],
                       thresholds: torch.Tensor | None = None) -> dict:
    """Scores of (N, K) logits against (N, K) multi-hot targets, deciding ``sigmoid >= threshold``
    per class ((K,) thresholds; None: 0.5). Undefined figures are None (per class) or NaN (N = 0)."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    n, k = len(targets), len(classes)
    targets = targets.float().reshape(n, k)  # an empty inference's labels are (0,): no K to tell
    thr = torch.full((k,), DEFAULT) if thresholds is None else thresholds.float().cpu()
    probs = logits.float().sigmoid().numpy()
    y = (targets.float() > 0.5).numpy().astype(np.int64)  # (N, K) 0/1
    pred = (probs >= thr.numpy()[None, :]).astype(np.int64)
    positives, predicted = y.sum(0), pred.sum(0)  # (K,) images with the class, images flagged
    scored = [j for j in range(k) if positives[j] > 0]  # AP needs a positive; all-negative: undefined
    ap = {j: float(average_precision_score(y[:, j], probs[:, j])) for j in scored}
    nan = float("nan")
    defined = [j for j in range(k) if positives[j] > 0 or predicted[j] > 0]
    with warnings.catch_warnings():  # undefined precision/recall: reported as None below
        warnings.simplefilter("ignore")
        p, r, f1, _ = precision_recall_fscore_support(y, pred, average=None, labels=list(range(k)),
                                                      zero_division=0) if n else ([0.0] * k,) * 3 + (None,)
        # macro-F1 over the classes present in the targets or the predictions, as metrics.py's single-label
        # macro-F1: a class never present and never predicted has no F1, one predicted but absent scores 0
        f1_macro = float(f1_score(y, pred, average="macro", labels=defined, zero_division=0)) if defined else nan
        f1_micro = float(f1_score(y, pred, average="micro", zero_division=0)) if n else nan
    per_class = {
        name: {"ap": _round(ap[j]) if j in ap else None, "precision": _round(p[j], predicted[j] > 0),
               "recall": _round(r[j], positives[j] > 0), "f1": _round(f1[j], j in defined),
               "threshold": float(thr[j]), "n": int(positives[j]), "predicted": int(predicted[j])}
        for j, name in enumerate(classes)
    }
    return {
        "task": TASK_NAME,
        "n": n,
        "map_macro": float(np.mean(list(ap.values()))) if ap else nan,
        "classes_scored": len(scored),  # classes with a positive image here: the ones map_macro averages
        "map_micro": float(average_precision_score(y.ravel(), probs.ravel())) if y.sum() else nan,
        "f1_macro": f1_macro,
        "f1_micro": f1_micro,
        "exact_match": float(accuracy_score(y, pred)) if n else nan,  # subset accuracy: the whole set right
        "hamming_loss": float(hamming_loss(y, pred)) if n else nan,
        # the training loss: BCE summed over the K classes, averaged over images
        "loss": float(F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum") / n)
        if n else nan,
        "labels_per_image": float(y.sum(1).mean()) if n else nan,
        # a scorer that knows nothing (constant or random scores) has an expected AP equal to the class's
        # prevalence (its share of positive images): the floor map_macro should be read against
        "chance_map_macro": float(np.mean([positives[j] / n for j in scored])) if scored else nan,
        "per_class": per_class,
        "thresholds": [float(v) for v in thr],
    }


def fit_thresholds(probs: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """Per class, the threshold among the observed (N, K) val probabilities that maximises that
    class's F1 (``prob >= threshold``). Ties: the highest such threshold, flagging the fewest images
    for the same F1. A class without a positive image keeps 0.5 (noted)."""
    from sklearn.metrics import precision_recall_curve

    y = (targets.float() > 0.5).numpy()
    scores = probs.float().numpy().astype(np.float64)  # float32 values, exactly: a fitted threshold is one
    thresholds, best_f1, notes = [], [], []
    for j, name in enumerate(classes):
        if not y[:, j].any():
            thresholds.append(DEFAULT)
            best_f1.append(None)
            notes.append(f"{name}: no positive image in val, threshold kept at {DEFAULT}")
            continue
        precision, recall, cuts = precision_recall_curve(y[:, j], scores[:, j])
        p, r = precision[:len(cuts)], recall[:len(cuts)]  # the last point (recall 0) has no threshold
        f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
        top = f1.max()
        pick = int(np.flatnonzero(f1 >= top - 1e-12)[-1])  # cuts increase: the last tie is the highest
        thresholds.append(float(cuts[pick]))
        best_f1.append(_round(top))
    return {"classes": list(classes), "thresholds": thresholds, "fitted_on": "val", "n": len(targets),
            "f1_at_fit": best_f1, "notes": notes}


def default_thresholds(classes: list[str], why: str) -> dict:
    """thresholds.json's format with 0.5 for every class, and why none were fitted."""
    return {"classes": list(classes), "thresholds": [DEFAULT] * len(classes), "fitted_on": None, "n": 0,
            "f1_at_fit": [None] * len(classes), "notes": [why]}


def decision_thresholds(model) -> torch.Tensor:
    """(K,) the thresholds a multi-label model (Classifier, Predictor or export) decides with: its own,
    else DEFAULT for every class."""
    t = getattr(model, "thresholds", None)
    return torch.full((len(model.classes),), DEFAULT) if t is None else t.float().cpu()


def write_thresholds(path: Path, fitted: dict) -> None:
    # never rounded: a threshold is one val image's probability, and rounding would move that image's side
    write_json(path, fitted)


def read_thresholds(path: Path, classes: list[str], *, allow_default: bool = False) -> tuple[torch.Tensor, str]:
    """(K,) float32 thresholds from thresholds.json and a one-line note of where they came from. A missing
    or damaged file is a one-line UserError, or with ``allow_default`` 0.5 everywhere and a note."""
    path = Path(path)
    fix = (f"re-run `resnetlab evaluate {path.parent}` (with a val split) to refit them, "
           "or pass --default-thresholds to use 0.5")
    if not path.is_file():
        problem = "is missing"
    else:
        fitted, problem = _check_thresholds(path, classes)
        if problem is None:
            notes = fitted.get("notes") or ["no reason given"]
            where = f"fitted on {fitted['fitted_on']} (n={fitted.get('n', '?')})" if fitted.get("fitted_on") \
                else f"not fitted ({notes[0]})"
            return torch.tensor(fitted["thresholds"], dtype=torch.float32), f"thresholds from {path}, {where}"
    if not allow_default:
        raise UserError(f"{path} {problem}: {fix}")
    note = f"{path} {problem}: every threshold is {DEFAULT} (--default-thresholds)"
    return torch.full((len(classes),), DEFAULT), note


def _check_thresholds(path: Path, classes: list[str]) -> tuple[dict | None, str | None]:
    """(the parsed file, None) when it fits ``classes``, else (None, what is wrong)."""
    try:
        fitted = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"is not readable JSON ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if not isinstance(fitted, dict) or not isinstance(fitted.get("thresholds"), list):
        return None, "has no 'thresholds' list"
    if fitted.get("classes") != list(classes):
        return None, f"is for other classes than this model's {len(classes)} (classes.json)"
    values = fitted["thresholds"]
    if len(values) != len(classes):
        return None, f"holds {len(values)} thresholds for {len(classes)} classes"
    for name, v in zip(classes, values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:  # NaN fails 0 <= v
            return None, f"has threshold {v!r} for class {name}, outside [0, 1]"
    return fitted, None


def top_losses(logits: torch.Tensor, targets: torch.Tensor, classes: list[str], thresholds: torch.Tensor,
               k: int = TOP_LOSSES) -> list[dict]:
    """The k images with the highest loss (BCE summed over classes), highest first, with their true and
    predicted label sets and the probability of each label in either."""
    if not len(targets):
        return []
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").sum(1)  # (N,)
    probs = logits.float().sigmoid()
    out = []
    for i in loss.argsort(descending=True)[:k].tolist():
        true = [c for j, c in enumerate(classes) if targets[i, j] > 0.5]
        pred = [c for j, c in enumerate(classes) if probs[i, j] >= thresholds[j]]
        shown = [j for j, c in enumerate(classes) if c in true or c in pred]
        out.append({"index": i, "loss": _round(loss[i]), "true": true, "predicted": pred,
                    "probabilities": {classes[j]: _round(probs[i, j]) for j in shown}})
    return out



def format_multilabel_table(result: dict, *, limit: int = 50) -> str:
    """Plain text: headline scores with n and chance, then per-class AP, precision, recall, F1, threshold."""
    def pct(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"

    lines = [f"images {result['n']}   mAP {pct(result['map_macro'])} (macro over {result['classes_scored']} classes; "
             f"chance {pct(result['chance_map_macro'])})   mAP micro {pct(result['map_micro'])}   "
             f"F1 micro {pct(result['f1_micro'])}   F1 macro {pct(result['f1_macro'])}",
             f"exact match {pct(result['exact_match'])}   Hamming loss {pct(result['hamming_loss'])}   "
             f"loss {result['loss']:.4f}   labels/image {result['labels_per_image']:.2f}"]
    per = result["per_class"]
    width = max([len(c) for c in list(per)[:limit]] + [5])
    lines.append(f"{'class':<{width}}        AP  precision    recall        F1  threshold      n")
    for name, r in list(per.items())[:limit]:
        lines.append(f"{name:<{width}}  {pct(r['ap']):>8}  {pct(r['precision']):>9}  {pct(r['recall']):>8}  "
                     f"{pct(r['f1']):>8}  {r['threshold']:>9.3f}  {r['n']:>5}")
    if len(per) > limit:
        lines.append(f"... {len(per) - limit} more classes in the JSON")
    return "\n".join(lines)
