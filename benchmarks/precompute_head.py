"""The head stage of gtsrb-resnet34-finetune with and without precomputed features.

    .venv/bin/python benchmarks/precompute_head.py [--data ../shared/data/gtsrb] [--epochs 1]

Offline, torchvision's ResNet-34 weights cannot be downloaded, so, as the tests do, a weights file
is placed where torchvision's cache looks: a seeded random ResNet-34 whose BatchNorm statistics
are then measured on 512 of the training images (a pretrained file has statistics that fit its
features; fresh ones, mean 0 and variance 1, let eval-mode activations grow ~1e4-fold through 34
layers). The head then learns from random features, so the accuracies compare the two modes, not
the recipe. Prints the wall time of fit() for the stage (validation included) and val top-1 after
it, for each mode.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from resnetlab.config import load_config
from resnetlab.data import build_data
from resnetlab.data.augment import normalize
from resnetlab.data.bundle import IMAGENET_MEAN, IMAGENET_STD
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare


def place_weights(home: Path, data: str) -> None:
    enum = torchvision.models.get_model_weights("resnet34")["IMAGENET1K_V1"]
    cache = home / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet34()
    bundle = build_data(load_config("gtsrb-resnet34-finetune", [f"data.dataset={data}"]), progress=False)
    x = normalize(bundle.splits["train"].images[:512], torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD),
                  channels_last=False)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        for part in x.split(64):
            model(part)
    torch.save(model.state_dict(), cache / enum.url.rsplit("/", 1)[-1])
    torch.hub.set_dir(str(home / "hub"))


def run(data: str, out: Path, epochs: int, precompute: bool) -> tuple[float, float]:
    stage = f"{{epochs: {epochs}, train: head, lr: [0.01], precompute: {str(precompute).lower()}}}"
    cfg = load_config("gtsrb-resnet34-finetune", [
        f"data.dataset={data}", f"train.out_dir={out}", f"stages=[{stage}]", "train.progress=false",
        "train.report=false", "train.final_test=false", "train.tensorboard=false",
        f"train.name={'precompute' if precompute else 'plain'}"])
    s = prepare(cfg, run_name="bench")
    start = time.perf_counter()
    fit(s)
    return time.perf_counter() - start, s.state.history[-1]["val_top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/gtsrb")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        place_weights(Path(tmp) / "torch", args.data)
        for precompute in (False, True):
            seconds, top1 = run(args.data, Path(tmp) / "runs", args.epochs, precompute)
            print(f"{'precompute' if precompute else 'plain':>10}: head stage {seconds:.1f} s, "
                  f"val top-1 {100 * top1:.2f}% after {args.epochs} epoch(s)", flush=True)


if __name__ == "__main__":
    main()
