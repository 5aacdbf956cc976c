"""Multi-label against single-label on the same photos: 2x2 mosaics of CIFAR-10 images, labelled with
the 1-3 classes their tiles show, scored by macro mAP on held-out mosaics.

    .venv/bin/python benchmarks/multilabel_mosaic.py [--source ../shared/data/cifar10-jpeg-full/train]
        [--train 20000 --test 4000 --epochs 8] [key=value ...]

- The mosaics (64 px, 32 px tiles) come from ``resnetlab.data.mosaic``: train and held-out mosaics
  draw their tiles from disjoint photos (80% / 20% of the source). 2,000 train mosaics are held out
  as val: best.pt and the per-class thresholds are chosen there; the held-out mosaics are scored once.
- Multi-label: ``data.multi_label=true`` on the mosaics, the cifar10-fast recipe's ResNet-9.
- Single-label, the same network on the same training photos, one tile per image (tiles.csv), for
  2x the epochs (a 64 px mosaic costs 4 tiles, and there are 2x as many train tiles as mosaics, so
  the two runs see the same pixels); it scores a mosaic's class as the largest softmax probability
  of that class over its 4 tiles.
- Chance: a scorer that knows nothing ranks at random, and its AP for a class is that class's
  prevalence in the held-out mosaics; chance mAP is their mean.
One JSON line to stdout (and --out).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from resnetlab.config import load_config
from resnetlab.data.decode import decode_for_model
from resnetlab.data.mosaic import write_mosaics
from resnetlab.evaluate.multilabel import multilabel_metrics
from resnetlab.run.finish import final_model
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare

RECIPE = Path(__file__).resolve().parents[1] / "src" / "resnetlab" / "recipes" / "cifar10-fast.yaml"
COMMON = ["train.time_budget=", "train.ladder=[]", "train.progress=false", "train.report=true", "data.val_count=2000"]


def train(overrides: list[str]):
    cfg = load_config(str(RECIPE), [*COMMON, *overrides])
    s = prepare(cfg, run_name="mosaic")
    started = time.perf_counter()
    result = fit(s)
    return s, result, time.perf_counter() - started


def tile_scores(s, csv_path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The single-label model's (N, K) scores of the held-out mosaics (max over the 4 tiles of each
    class's softmax probability), their (N, K) true label sets, and the class names."""
    from resnetlab.data.readers.manifest import read_manifest

    catalog = read_manifest(csv_path, multi_label=True)
    test = catalog.rows("test")
    model = final_model(s)
    full, _, _ = decode_for_model([catalog.paths[i] for i in test], 64, "squash", 3)  # (N, 3, 64, 64)
    tiles = torch.cat([full[:, :, y:y + 32, x:x + 32] for y in (0, 32) for x in (0, 32)])  # (4N, 3, 32, 32)
    probs = model.probabilities(tiles).view(4, len(full), -1).amax(0)
    order = [model.classes.index(c) for c in catalog.classes]
    return probs[:, order], torch.from_numpy(catalog.targets[test]).float(), catalog.classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--source", default="../shared/data/cifar10-jpeg-full/train")
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--test", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=8, help="of the multi-label run (single-label: 2x)")
    parser.add_argument("--work", type=Path, help="where the mosaics and runs go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="append the JSON line to this file")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mosaic-"))
    labels = write_mosaics(args.source, work / "mosaics", train=args.train, test=args.test, tile=32, seed=0)
    runs = f"train.out_dir={work / 'runs'}"

    s, result, seconds = train([f"data.dataset={labels}", "data.multi_label=true", runs, "train.name=multi",
                                f"train.epochs={args.epochs}", *args.overrides])
    multi = result["test"]
    single_s, single_result, single_seconds = train([f"data.dataset={labels.parent / 'tiles.csv'}", runs,
                                                     "train.name=single", f"train.epochs={2 * args.epochs}",
                                                     *args.overrides])
    scores, targets, classes = tile_scores(single_s, labels)
    single = multilabel_metrics(scores.clamp(1e-6, 1 - 1e-6).logit(), targets, classes)
    prevalence = targets.mean(0)
    line = {
        "benchmark": "multilabel_mosaic", "held_out_mosaics": int(len(targets)), "train_mosaics": args.train,
        "chance_map_macro": round(float(prevalence[prevalence > 0].mean()), 4),
        "multi_label": {"map_macro": multi["map_macro"], "map_micro": multi["map_micro"], "f1_micro": multi["f1_micro"],
                        "exact_match": multi["exact_match"], "epochs": args.epochs, "seconds": round(seconds)},
        "single_label_on_tiles": {"map_macro": single["map_macro"], "map_micro": single["map_micro"],
                                  "tile_top1": single_result.get("test", {}).get("top1"),
                                  "epochs": 2 * args.epochs, "seconds": round(single_seconds)},
        "runs": str(work / "runs"), "device": str(s.device), "precision": s.precision,
    }
    text = json.dumps(line)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
