"""`evaluate` as a library function: one split of a run scored, by the scorer of its task.

``evaluate_split`` writes eval_<split>.json (every figure with its n; ``write_eval`` is its one
writer). A single-label split (scored here) also gets confusion_<split>.csv, calibration.json
(temperature and rejection thresholds fitted on val, used by predict), and eval_<split>/ with
confusion.png, confusion_normalized.png, top_losses.png, confused_pairs.csv, random_predictions.png,
probabilities.png, gradcam.png and reliability.png; a multi-label one is scored by
evaluate/multilabel_split.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from resnetlab import run_folder as rf
from resnetlab.data.decode import FileImages
from resnetlab.data.readers.manifest import read_split_file
from resnetlab.errors import UserError
from resnetlab.evaluate import analysis, calibration
from resnetlab.evaluate import figures as plots
from resnetlab.evaluate.inference import Classifier, Inference, infer_fixed_tta, infer_images, infer_tta
from resnetlab.evaluate.metrics import metrics, write_confusion_csv
from resnetlab.evaluate.multilabel_split import score_multilabel_split
from resnetlab.evaluate.options import Options
from resnetlab.evaluate.task import MultiLabel, SingleLabel
from resnetlab.io import atomic_write_text, csv_text, read_json, write_json

__all__ = ["Options", "evaluate_split", "snapshot_ensemble", "split_images", "unseen_images", "write_eval"]


def evaluate_split(run_dir: Path, p: Classifier, name: str, images: torch.Tensor, labels: torch.Tensor,
                   opts: Options, *, val: tuple[torch.Tensor, torch.Tensor] | None = None,
                   unseen: torch.Tensor | None = None) -> dict:
    """Score ``images`` as split ``name`` with what ``p`` decides by fitted on ``val``; ``unseen``: images
    of classes the run left out, to measure rejection (single-label)."""
    result = SCORERS[p.task.name](run_dir, p, name, images, labels, opts, val=val, unseen=unseen)
    write_eval(run_dir, name, result)
    return result


def write_eval(run_dir: Path, split: str, result: dict) -> None:
    """eval_<split>.json: a scored split's every figure (written here only)."""
    write_json(run_dir / rf.eval_name(split), result)


def score_single_label_split(run_dir: Path, p: Classifier, name: str, images: torch.Tensor, labels: torch.Tensor,
                             opts: Options, *, val: tuple[torch.Tensor, torch.Tensor] | None = None,
                             unseen: torch.Tensor | None = None) -> dict:
    """A split's result for a single-label Classifier, with its confusion tables and figures written."""
    classes = p.classes
    plain = infer_images(p, images, labels, opts.batch_size)
    result = metrics(plain.logits, plain.labels, classes)
    result.update(split=name, checkpoint=p.source, images_per_s=round(plain.images_per_second, 1))
    probs = plain.logits.softmax(1)
    if opts.tta > 1:
        if opts.views == "fixed":
            tta = infer_fixed_tta(p, images, labels, views=opts.tta, batch_size=opts.batch_size)
        else:
            tta = infer_tta(p, images, labels, views=opts.tta, reduce=opts.reduce, batch_size=opts.batch_size)
        m = metrics(tta.logits, tta.labels, classes)
        reduce = "fixed views, logits weighted" if opts.views == "fixed" else opts.reduce
        result["tta"] = {"views": opts.tta, "reduce": reduce, "top1": m["top1"], "top5": m["top5"],
                         "loss": m["loss"], "balanced_accuracy": m["balanced_accuracy"], "n": m["n"],
                         "images_per_s": round(len(labels) * opts.tta / max(tta.seconds, 1e-9), 1)}
    result["calibration"] = _calibration(run_dir, p, plain, val, opts)
    result["rejection"] = _rejection(p, plain, result["calibration"], unseen, opts)
    if opts.figures and len(labels):
        _figures(rf.eval_figures(run_dir, name), p, images, labels, probs, result)
    write_confusion_csv(run_dir / rf.confusion_csv(name), result["confusion"], classes)
    write_confusion_csv(run_dir / rf.confusion_csv(name, normalized=True), result["confusion_normalized"], classes)
    return result


# the scorer of a split for each task, by the task's name
SCORERS = {SingleLabel.name: score_single_label_split, MultiLabel.name: score_multilabel_split}


def snapshot_ensemble(members: list[Classifier], images: torch.Tensor, labels: torch.Tensor, *,
                      batch_size: int) -> dict:
    """Mean class probability over the members, e.g. a run's snapshot-K.pt (Huang et al. 2017:
    M models for the cost of one run); multi-label: the mean of each class's sigmoid, scored at the
    first member's thresholds."""
    if not members:
        raise UserError("no snapshot-K.pt to ensemble: train with a stage of schedule sgdr and snapshots: true")
    task, targets = members[0].task, members[0].task.targets(labels)
    total = None
    for member in members:
        probs = task.probabilities(infer_images(member, images, targets, batch_size).logits.float())
        total = probs if total is None else total + probs
    # as logits again (log, or logit of the mean): softmax or sigmoid gives the mean back to the metrics
    result = task.metrics(task.as_logits(total / len(members)), targets.cpu(), members[0].classes,
                          members[0].thresholds)
    result["members"] = [m.source for m in members]
    return result


def split_images(split, predictor: Classifier):
    """uint8 images and labels of a split: its cache (in memory or on disk), or for a streamed split
    its readable files, decoded a chunk at a time whenever they are read (never the whole split)."""
    if split.images is not None:
        return split.images, split.labels
    images, kept, _ = FileImages.readable(split.paths, size=predictor.image_size, resize=predictor.resize,
                                          channels=predictor.channels)
    return images, split.labels[kept]


def unseen_images(cfg, run_dir: Path, predictor: Classifier, limit: int = 2000) -> torch.Tensor | None:
    """Images of the data set's classes the run left out (data.classes) and never used: the honest
    test of rejection. None when the run kept every class."""
    from resnetlab.data import read_catalog
    from resnetlab.data.split import final_classes

    if not cfg.data.classes:
        return None
    catalog, _, aliases = read_catalog(cfg.data.dataset)
    chosen, _ = final_classes(catalog, cfg.data, aliases)
    used = {key for key, _, _ in read_split_file(run_dir / rf.SPLIT)}
    rows = [i for i in range(len(catalog)) if int(catalog.labels[i]) not in chosen and catalog.keys[i] not in used]
    if not rows:
        return None
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:limit].tolist()
    if catalog.arrays is not None:
        x = torch.from_numpy(catalog.arrays[[rows[i] for i in pick]])
        return x if x.shape[-1] == predictor.image_size else None
    images, _, _ = predictor.load_images([catalog.paths[rows[i]] for i in pick])
    return images


def _calibration(run_dir: Path, p: Classifier, plain: Inference, val, opts: Options) -> dict:
    """Fit T and thresholds on val (saved for predict); ECE on this split before and after T."""
    out = {}
    fitted = None
    if val is not None and len(val[1]):
        v = infer_images(p, val[0], val[1], opts.batch_size)
        known = v.labels != p.classes.index("unknown") if "unknown" in p.classes else None
        fitted = calibration.calibrate(v.logits, v.labels, target=opts.reject_target, known=known)
        write_json(run_dir / rf.CALIBRATION, fitted)
        p.temperature = fitted["temperature"]
    elif (run_dir / rf.CALIBRATION).is_file():
        fitted = read_json(run_dir / rf.CALIBRATION)
    raw, bins = calibration.ece(plain.logits.softmax(1), plain.labels)
    out.update(ece=raw, bins=bins, n=len(plain.labels))
    if fitted:
        t = fitted["temperature"]
        scaled, scaled_bins = calibration.ece((plain.logits / t).softmax(1), plain.labels)
        out.update(temperature=t, ece_scaled=scaled, bins_scaled=scaled_bins, fitted=fitted)
    else:
        out["note"] = "no validation split: temperature and rejection thresholds were not fitted"
    return out


def _rejection(p: Classifier, plain: Inference, cal: dict, unseen: torch.Tensor | None, opts: Options) -> dict:
    """Share of known-class images wrongly rejected, and of unseen-class images rejected, per method."""
    fitted = cal.get("fitted")
    if not fitted:
        return {"note": cal.get("note", "not calibrated")}
    t = fitted["temperature"]
    unknown = p.classes.index("unknown") if "unknown" in p.classes else None
    known_rows = plain.labels != unknown if unknown is not None else torch.ones(len(plain.labels), dtype=torch.bool)
    out = {"target": fitted["target_reject"], "known_n": int(known_rows.sum()), "methods": {}}
    unseen_logits = None
    if unseen is not None and len(unseen):
        unseen_logits = infer_images(p, unseen, torch.zeros(len(unseen), dtype=torch.long), opts.batch_size).logits
        out["unseen_n"] = len(unseen)
    for kind in ("msp", "energy"):
        row = {"threshold": fitted[f"{kind}_threshold"]}
        flags = calibration.rejected(plain.logits, t, kind, fitted[f"{kind}_threshold"])
        row["known_rejected"] = float(flags[known_rows].double().mean()) if known_rows.any() else None
        if unseen_logits is not None:
            unseen_flags = calibration.rejected(unseen_logits, t, kind, row["threshold"])
            row["unseen_rejected"] = float(unseen_flags.double().mean())
        out["methods"][kind] = row
    if unknown is not None:  # the data-set issue's approach: a class trained on other signs
        pred = plain.logits.argmax(1)
        row = {"known_rejected": float((pred[known_rows] == unknown).double().mean()) if known_rows.any() else None}
        if (~known_rows).any():
            row["unknown_class_recall"] = float((pred[~known_rows] == unknown).double().mean())
        if unseen_logits is not None:
            row["unseen_rejected"] = float((unseen_logits.argmax(1) == unknown).double().mean())
        out["methods"]["unknown_class"] = row
    return out


def _figures(folder: Path, p: Classifier, images, labels: torch.Tensor, probs: torch.Tensor,
             result: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    classes = p.classes
    plots.confusion_figure(result["confusion"], classes, folder / "confusion.png", normalized=False)
    plots.confusion_figure(result["confusion"], classes, folder / "confusion_normalized.png", normalized=True)
    pred = probs.argmax(1)

    def title(i: int) -> str:
        t, q = int(labels[i]), int(pred[i])
        return (f"true {classes[t][:22]} ({probs[i, t]:.2f})\npred {classes[q][:22]} ({probs[i, q]:.2f})")

    worst = analysis.top_losses(probs, labels, 16)
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:16].tolist()
    rows = sorted(set(worst) | set(pick))  # only the images shown are read: a split may be on disk or in files
    pixels = images[torch.tensor(rows)]
    at = {r: j for j, r in enumerate(rows)}
    shown = plots.hwc(pixels)

    def grid(chosen: list[int], path: Path, suptitle: str) -> None:
        plots.image_grid(shown[[at[i] for i in chosen]], [title(i) for i in chosen],
                         ["tab:green" if pred[i] == labels[i] else "tab:red" for i in chosen], path, suptitle=suptitle)

    grid(worst, folder / "top_losses.png",
         "highest loss: true class and its probability, predicted class and its probability")
    pairs = analysis.confused_pairs(result["confusion"], classes)
    atomic_write_text(folder / "confused_pairs.csv", csv_text([["true", "predicted", "count"], *pairs]))
    result["confused_pairs"] = [list(x) for x in pairs]
    grid(pick, folder / "random_predictions.png", "random test images: green right, red wrong")
    first = worst[0]
    plots.probability_bars(probs[first], classes, shown[at[first]], title(first), folder / "probabilities.png")
    cams_for = worst[:8]
    cams = analysis.grad_cam(p.model, pixels[[at[i] for i in cams_for]].to(p.device), pred[cams_for],
                             mean=p.mean, std=p.std)
    overlays = np.stack([plots.overlay(shown[at[i]], cams[j].numpy()) for j, i in enumerate(cams_for)])
    plots.image_grid(overlays, [title(i) for i in cams_for], ["tab:red" if pred[i] != labels[i] else "tab:green"
                                                               for i in cams_for], folder / "gradcam.png",
                     suptitle="Grad-CAM for the predicted class, most incorrect images (red = high)")
    cal = result["calibration"]
    plots.reliability_diagram(cal["bins"], cal.get("bins_scaled"), (cal["ece"], cal.get("ece_scaled", 0.0)),
                              folder / "reliability.png")
