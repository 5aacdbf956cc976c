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
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.checkpoint import atomic_write_text
    from resnetlab.predict import Predictor, expand_inputs

    if args.topk < 1:
        raise UserError("--topk must be at least 1")
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
        for path, p in zip(kept, predictor.probabilities(images)):
            top = p.topk(k)
            rows.append({"path": path, "top": [{"class": predictor.classes[i], "probability": round(v, 6)}
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


def _render(rows: list[dict], fmt: str, k: int) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path"] + [f"{kind}{j}" for j in range(1, k + 1) for kind in ("class", "prob")] + ["error"])
        for r in rows:
            cells = [x for t in r.get("top", []) for x in (t["class"], f"{t['probability']:.6f}")]
            writer.writerow([r["path"], *cells, *[""] * (2 * k - len(cells)), r.get("error", "")])
        return buffer.getvalue()
    width = max(len(r["path"]) for r in rows)
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{r['path']:<{width}}  error: {r['error']}")
        else:
            lines.append(f"{r['path']:<{width}}  " + "  ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"]))
    return "\n".join(lines) + "\n"
