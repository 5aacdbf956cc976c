"""A split of a multi-label run scored: mAP, F1 and exact match at per-class thresholds fitted on val
(evaluate/multilabel.py has the scores and the thresholds file).

Writes into the run folder: per_class_<split>.csv, thresholds.json (when val is given) and
eval_<split>/ with per_class_ap.png and top_losses.png; evaluator.evaluate_split writes eval_<split>.json.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from resnetlab import run_folder as rf
from resnetlab.errors import UserError
from resnetlab.evaluate import figures as plots
from resnetlab.evaluate.inference import Classifier, combine_views, infer_images
from resnetlab.evaluate.multilabel import (
    DEFAULT,
    default_thresholds,
    fit_thresholds,
    multilabel_metrics,
    per_class_csv,
    read_thresholds,
    top_losses,
    write_thresholds,
)
from resnetlab.evaluate.options import Options
from resnetlab.io import atomic_write_text, csv_text


def score_multilabel_split(run_dir: Path, p: Classifier, name: str, images: torch.Tensor, targets: torch.Tensor,
                           opts: Options, *, val: tuple[torch.Tensor, torch.Tensor] | None = None,
                           unseen: torch.Tensor | None = None) -> dict:
    """A split's result for a multi-label Classifier ((N, K) multi-hot targets), with its per-class table
    and figures written; evaluator.evaluate_split writes the result. ``unseen``: no use here (an image
    may have no label, so nothing is rejected as unknown)."""
    classes, targets = p.classes, targets.float()
    plain = infer_images(p, images, targets, opts.batch_size)
    thresholds, source, notes = settle_thresholds(run_dir, p, val, opts)
    result = multilabel_metrics(plain.logits, plain.labels, classes, thresholds)
    result.update(split=name, checkpoint=p.source, images_per_s=round(plain.images_per_second, 1),
                  threshold_source=source, threshold_notes=notes)
    if opts.tta > 1 and len(targets):
        result["tta"] = _tta(p, images, plain.labels, thresholds, opts)
    result["top_losses"] = top_losses(plain.logits, plain.labels, classes, thresholds)
    if opts.figures and len(targets):
        _figures(rf.eval_figures(run_dir, name), p, images, result)
    rows = [[c, r["ap"], r["precision"], r["recall"], r["f1"], r["threshold"], r["n"], r["predicted"]]
            for c, r in result["per_class"].items()]
    atomic_write_text(run_dir / per_class_csv(name), csv_text(
        [["class", "ap", "precision", "recall", "f1", "threshold", "n", "predicted"], *rows]))
    return result


def settle_thresholds(run_dir: Path, p: Classifier, val, opts: Options) -> tuple[torch.Tensor, str, list[str]]:
    """The thresholds to decide with (set on ``p``), where they came from, and notes. Fitted on val when
    there is one; else the run's thresholds.json; else ``opts.thresholds_from`` (the thresholds.json of
    the run whose val images a --retrain-on-all run trained on); else 0.5. Fitted or defaulted thresholds are
    saved only for the checkpoint predict uses by default (best.pt, else last.pt), and say which."""
    path, inherited = run_dir / rf.THRESHOLDS, opts.thresholds_from
    if val is None or not len(val[1]):
        if path.is_file():
            p.thresholds, p.threshold_source = read_thresholds(path, p.classes, allow_default=opts.default_thresholds)
            return p.thresholds, p.threshold_source, []
        if inherited is not None and inherited.is_file():
            p.thresholds, _ = read_thresholds(inherited, p.classes)
            fitted = {**json.loads(inherited.read_text()), "notes": [
                f"fitted on the val split of {inherited.parent} before those images joined training "
                "(--retrain-on-all)"]}
            source = f"inherited from {inherited}: this run trained on its val split, so it has none to fit on"
        else:
            fitted = default_thresholds(p.classes, f"no validation split: every threshold is {DEFAULT}")
            p.thresholds, source = torch.full((len(p.classes),), DEFAULT), fitted["notes"][0]
    else:
        v = infer_images(p, val[0], val[1].float(), opts.batch_size)
        fitted = fit_thresholds(v.logits.sigmoid(), v.labels, p.classes)
        p.thresholds = torch.tensor(fitted["thresholds"], dtype=torch.float32)
        source = f"fitted on val (n={fitted['n']}) to maximise each class's F1"
    default = next((name for name in (rf.BEST, rf.LAST) if (run_dir / name).is_file()), None)
    if default is None or p.source.split(" ")[0] == default:  # None: a folder without checkpoints (a library call)
        write_thresholds(path, {**fitted, "checkpoint": p.source})
        source += f"; saved to {rf.THRESHOLDS}"
    else:  # predict reads thresholds.json with the default checkpoint: another's would mislabel its images
        source += f"; for {p.source} only, not saved ({rf.THRESHOLDS} is {default}'s)"
    p.threshold_source = source
    return p.thresholds, source, fitted.get("notes", [])


def _tta(p: Classifier, images, targets, thresholds, opts: Options) -> dict:
    """Scores of the mean (or max) of each class's sigmoid over ``opts.tta`` views; never renormalised."""
    if opts.views == "fixed":
        raise UserError("fixed TTA views average softmax logits: multi-label runs take --tta-views random")
    start = time.perf_counter()
    probs = combine_views(lambda x: p.probabilities(x, opts.batch_size), images, views=opts.tta,
                          reduce=opts.reduce, augment=p.augment, batch_size=opts.batch_size, normalise=False)
    seconds = time.perf_counter() - start
    m = multilabel_metrics(torch.logit(probs, eps=1e-7), targets, p.classes, thresholds)  # sigmoid gives probs back
    return {"views": opts.tta, "reduce": opts.reduce, **{k: m[k] for k in
            ("map_macro", "map_micro", "f1_micro", "exact_match", "loss", "n")},
            "images_per_s": round(len(targets) * opts.tta / max(seconds, 1e-9), 1)}


def _figures(folder: Path, p: Classifier, images: torch.Tensor, result: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n, per, m = result["n"], result["per_class"], result["map_macro"]
    plots.ap_bars(list(per), [r["ap"] for r in per.values()], [r["n"] / n for r in per.values()],
                  folder / "per_class_ap.png", title=f"average precision per class, n={n:,}; mAP (macro) "
                  + ("-" if math.isnan(m) else f"{100 * m:.1f}%") + f" over {result['classes_scored']} classes")
    worst = result["top_losses"]
    shown = plots.hwc(images[torch.tensor([w["index"] for w in worst])])  # only these images are read

    def names(labels: list[str]) -> str:
        text = ", ".join(labels) or "(none)"
        return text if len(text) <= 34 else text[:33] + "…"

    plots.image_grid(shown, [f"true {names(w['true'])}\npred {names(w['predicted'])}" for w in worst],
                     ["tab:green" if set(w["true"]) == set(w["predicted"]) else "tab:red" for w in worst],
                     folder / "top_losses.png", suptitle="highest loss: true label set, predicted label set")
