"""`resnetlab predict RUN IMAGES...`: top-k classes for files, folders or globs.

A multi-label model gives each image its label set instead: the classes whose
sigmoid probability reaches that class's threshold (thresholds.json, fitted on val), and every
class's probability. CSV: path, labels (space-separated, "" for none), prob_<class> per class,
error; JSON: {"path", "labels": [...], "probabilities": {class: p}}.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from resnetlab.errors import UserError

CHUNK = 1024  # images decoded and classified at a time


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes (multi-label: label sets) of images, as a table, CSV or JSON")
    p.add_argument("model",
                   help="run folder, checkpoint (.pt), an export (.onnx, .torchscript.pt, .safetensors, .xml + .json), "
                        "a Hugging Face folder or hf-hub:ORG/NAME")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--topk", type=int, default=None, help="classes listed an image (default 3; single-label models)")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", type=int, default=1, metavar="N", help="average N views per image (training augmentations)")
    p.add_argument("--tta-reduce", default="mean", choices=["mean", "max"])
    p.add_argument("--no-reject", action="store_true",
                   help="always name a class, even where calibration.json says the image looks unknown")
    p.add_argument("--plot", metavar="DIR",
                   help="also draw each image beside a bar chart of its class probabilities, as DIR/<n>-<name>.png")
    p.add_argument("--default-thresholds", action="store_true",
                   help="multi-label models: where thresholds.json is missing or damaged, decide every class at 0.5")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.deploy.export import is_export, load_export
    from resnetlab.deploy.hub import is_hub_spec
    from resnetlab.deploy.predictor import Predictor, expand_inputs

    if args.topk is not None and args.topk < 1:
        raise UserError("--topk must be at least 1")
    if args.tta < 1:
        raise UserError(f"--tta {args.tta}: give the number of views, 1 (none) or more")
    path = Path(args.model)
    if not path.exists() and not is_hub_spec(args.model):
        raise UserError(f"model {args.model} does not exist: give a run folder, a checkpoint, an export or "
                        "hf-hub:ORG/NAME")
    predictor = load_export(path) if is_export(path) else Predictor.load(
        args.model, which=args.checkpoint, device=args.device, default_thresholds=args.default_thresholds)
    if not predictor.task.one_class:
        return _run_multilabel(predictor, args)
    paths = expand_inputs(args.images)
    k = min(args.topk or 3, len(predictor.classes))
    rows, bad, any_kept = [], [], False
    for start in range(0, len(paths), CHUNK):  # a whole folder (Intel's 7,301 seg_pred photos) in bounded memory
        images, kept, chunk_bad = predictor.load_images(paths[start:start + CHUNK])
        bad += chunk_bad
        any_kept = any_kept or bool(kept)
        probs, verdicts = _classify(predictor, images, args)
        if args.plot:
            _plot(Path(args.plot), start, images, kept, probs, verdicts, predictor.classes)
        for path, p, verdict in zip(kept, probs, verdicts):
            top = p.topk(k)
            rows.append({"path": path, "verdict": verdict,
                         "top": [{"class": predictor.classes[i], "probability": round(v, 6)}
                                 for v, i in zip(top.values.tolist(), top.indices.tolist())]})
    for path, reason in bad:
        rows.append({"path": path, "error": reason})
    _write(_render(rows, args.format, k), len(rows), args)
    return 0 if any_kept else 2


def _plot(folder: Path, start: int, images, paths: list[str], probs, verdicts: list[str], classes: list[str]) -> None:
    """Each image beside its classes' probabilities (the torchvision tutorial's bar chart of one photo)."""
    from resnetlab.evaluate.figures import hwc, probability_bars
    from resnetlab.io import make_folder

    make_folder(folder)
    for i, (image, path, p, verdict) in enumerate(zip(hwc(images), paths, probs, verdicts), start=start + 1):
        probability_bars(p, classes, image, f"{Path(path).name}: {verdict}", folder / f"{i}-{Path(path).stem}.png",
                         top=len(classes))


def _write(text: str, n: int, args) -> None:
    from resnetlab.io import atomic_write_text, make_folder

    if args.output:
        atomic_write_text(make_folder(Path(args.output).parent) / Path(args.output).name, text)
        print(f"wrote {n} predictions to {args.output}")
    else:
        sys.stdout.write(text)


def _run_multilabel(model, args) -> int:
    """Label sets: each class where its probability >= its threshold; probabilities unrounded (float32),
    so a reader re-deciding from them at thresholds.json's (unrounded) values gets the same sets."""
    from resnetlab.deploy.predictor import expand_inputs
    from resnetlab.evaluate.inference import combine_views

    if args.topk is not None or args.no_reject:
        raise UserError(f"{'--topk' if args.topk is not None else '--no-reject'} is for single-label models: "
                        "a multi-label model predicts a label set by per-class thresholds (thresholds.json), so "
                        "top-k classes and rejection by max softmax do not apply; every class's probability is "
                        "in the CSV and JSON output")
    if args.default_thresholds:
        print(model.threshold_source, file=sys.stderr)  # one line: fitted, or 0.5 and why
    paths = expand_inputs(args.images)
    rows, bad = [], []
    for start in range(0, len(paths), CHUNK):  # bounded memory, as single-label
        images, kept, chunk_bad = model.load_images(paths[start:start + CHUNK])
        bad += chunk_bad
        probs = model.probabilities(images) if args.tta == 1 else combine_views(
            model.probabilities, images, views=args.tta, reduce=args.tta_reduce, augment=model.augment,
            normalise=model.task.sums_to_one)  # mean (or max) of each class's sigmoid, never rescaled to sum 1
        labels = model.task.decide(probs, model)
        if args.plot:
            _plot(Path(args.plot), start, images, kept, probs, [" ".join(x) or "(no label)" for x in labels],
                  model.classes)
        for path, p, chosen in zip(kept, probs, labels):
            rows.append({"path": path, "labels": chosen, "probabilities": dict(zip(model.classes, p.tolist()))})
    any_kept = bool(rows)
    rows += [{"path": path, "error": reason} for path, reason in bad]
    _write(_render_multilabel(rows, args.format, model.classes), len(rows), args)
    return 0 if any_kept else 2


def _render_multilabel(rows: list[dict], fmt: str, classes: list[str]) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":  # one probability column a class: pandas reads them as floats, df["labels"].str.split()
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "labels", *[f"prob_{c}" for c in classes], "error"])
        for r in rows:
            probs = [r["probabilities"][c] for c in classes] if "probabilities" in r else [""] * len(classes)
            writer.writerow([r["path"], " ".join(r.get("labels", [])), *probs, r.get("error", "")])
        return buffer.getvalue()
    def describe(r: dict) -> str:
        p = r["probabilities"]
        if r["labels"]:
            return "  ".join(f"{c} {100 * p[c]:.1f}%" for c in r["labels"])
        best = max(p, key=p.get)
        return f"(no label; most probable {best} {100 * p[best]:.1f}%)"

    return _table(rows, describe)


def _classify(model, images, args):
    """Probabilities (TTA-combined if asked) and a verdict a row: the top class, or 'unknown' where the
    calibrated max-probability falls under the threshold fitted on validation (calibration.json)."""
    from resnetlab.evaluate.inference import combine_views

    probs = model.probabilities(images)  # temperature-scaled where the run was calibrated
    # on the single view: the threshold was fitted on single views
    rejected = None if args.no_reject else model.task.rejected(probs, model.calibration)
    if args.tta > 1:
        probs = combine_views(model.probabilities, images, views=args.tta, reduce=args.tta_reduce,
                              augment=model.augment)
    return probs, model.task.decide(probs, model, rejected)


def _render(rows: list[dict], fmt: str, k: int) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "verdict"] + [f"{kind}{j}" for j in range(1, k + 1) for kind in ("class", "prob")]
                        + ["error"])
        for r in rows:
            cells = [x for t in r.get("top", []) for x in (t["class"], f"{t['probability']:.6f}")]
            writer.writerow([r["path"], r.get("verdict", ""), *cells, *[""] * (2 * k - len(cells)), r.get("error", "")])
        return buffer.getvalue()
    def describe(r: dict) -> str:
        verdict = "UNKNOWN (rejected)  " if r["verdict"] == "unknown" and r["top"][0]["class"] != "unknown" else ""
        return verdict + "  ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"])

    return _table(rows, describe)


def _table(rows: list[dict], describe) -> str:
    """One line an image: its path, padded, then ``describe(row)`` or why it could not be read."""
    width = max(len(r["path"]) for r in rows)
    return "".join(f"{r['path']:<{width}}  " + (f"error: {r['error']}" if "error" in r else describe(r)) + "\n"
                   for r in rows)
