"""`resnetlab predict RUN IMAGES...`: top-k classes for files, folders or globs."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from resnetlab.errors import UserError

CHUNK = 1024  # images decoded and classified at a time


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes of images, as a table, CSV or JSON")
    p.add_argument("model", help="run folder or checkpoint (.pt)")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", type=int, default=1, metavar="N", help="average N views per image (training augmentations)")
    p.add_argument("--tta-reduce", default="mean", choices=["mean", "max"])
    p.add_argument("--no-reject", action="store_true",
                   help="always name a class, even where calibration.json says the image looks unknown")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.checkpoint import atomic_write_text
    from resnetlab.predict import Predictor, expand_inputs

    if args.topk < 1:
        raise UserError("--topk must be at least 1")
    if args.tta < 1:
        raise UserError(f"--tta {args.tta}: give the number of views, 1 (none) or more")
    if not Path(args.model).exists():
        raise UserError(f"model {args.model} does not exist: give a run folder or a checkpoint file")
    predictor = Predictor.load(args.model, which=args.checkpoint, device=args.device)
    paths = expand_inputs(args.images)
    k = min(args.topk, len(predictor.classes))
    rows, bad, any_kept = [], [], False
    for start in range(0, len(paths), CHUNK):  # a whole folder (Intel's 7,301 seg_pred photos) in bounded memory
        images, kept, chunk_bad = predictor.load_images(paths[start:start + CHUNK])
        bad += chunk_bad
        any_kept = any_kept or bool(kept)
        probs, verdicts = _classify(predictor, images, args)
        for path, p, verdict in zip(kept, probs, verdicts):
            top = p.topk(k)
            rows.append({"path": path, "verdict": verdict,
                         "top": [{"class": predictor.classes[i], "probability": round(v, 6)}
                                 for v, i in zip(top.values.tolist(), top.indices.tolist())]})
    for path, reason in bad:
        rows.append({"path": path, "error": reason})
    text = _render(rows, args.format, k)
    if args.output:
        atomic_write_text(Path(args.output), text)
        print(f"wrote {len(rows)} predictions to {args.output}")
    else:
        sys.stdout.write(text)
    return 0 if any_kept else 2


def _classify(predictor, images, args):
    """Probabilities (TTA-combined if asked) and a verdict a row: the top class, or 'unknown' where the
    calibrated max-probability falls under the threshold fitted on validation (calibration.json)."""
    import torch

    from resnetlab.calibration import rejected
    from resnetlab.evaluate import infer_tta

    logits = predictor.logits(images)
    probs = (logits / predictor.temperature).softmax(1)
    if args.tta > 1:
        probs = infer_tta(predictor.model, images, torch.zeros(len(images), dtype=torch.long), views=args.tta,
                          reduce=args.tta_reduce, augment=predictor.augment, mean=predictor.mean, std=predictor.std,
                          device=predictor.device, precision=predictor.precision).logits.softmax(1)
    verdicts = [predictor.classes[i] for i in probs.argmax(1).tolist()]
    cal = predictor.calibration
    if cal and not args.no_reject:
        flags = rejected(logits, cal["temperature"], "msp", cal["msp_threshold"])
        verdicts = ["unknown" if f else v for v, f in zip(verdicts, flags.tolist())]
    return probs, verdicts


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
    width = max(len(r["path"]) for r in rows)
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{r['path']:<{width}}  error: {r['error']}")
        else:
            verdict = "UNKNOWN (rejected)  " if r["verdict"] == "unknown" and r["top"][0]["class"] != "unknown" else ""
            lines.append(f"{r['path']:<{width}}  {verdict}"
                         + "  ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"]))
    return "\n".join(lines) + "\n"
