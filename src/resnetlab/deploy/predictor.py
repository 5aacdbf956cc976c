"""A trained model with its preprocessing, loaded from a run folder or a checkpoint file.

The checkpoint carries the model name, options, classes, image size, channels
and mean/std, so prediction applies exactly the preprocessing training used.
Inference precision follows the device it runs on: the training precision where
that device runs it, else the device's default, so a model trained in fp16 on a
GPU predicts and exports on a CPU.

The model decides as its task does (evaluate/task.py): single-label by the most probable class,
rejected as unknown under calibration.json's threshold; multi-label by each class's own threshold,
read from the run's thresholds.json beside the checkpoint.

A Hugging Face folder (`resnetlab export --format hf`) or ``hf-hub:ORG/NAME`` loads as the same kind
of model (deploy/hub.py), its weights read with safetensors, what decides read from its config.json.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from resnetlab.data.images import is_image_file
from resnetlab.deploy.hub import is_hub_model, load_hf
from resnetlab.errors import UserError
from resnetlab.evaluate.inference import Classifier
from resnetlab.evaluate.trained import run_model


@dataclass
class Predictor(Classifier):
    @classmethod
    def load(cls, path: str | Path, *, which: str = "best", device: str = "auto", default_thresholds: bool = False,
             decisions: bool = True) -> "Predictor":
        """The run's model (evaluate/trained.py ``run_model``: best.pt when chosen on val, else last.pt;
        EMA weights where kept). ``default_thresholds``: a multi-label run whose thresholds.json is missing
        or damaged decides at 0.5 rather than stopping. ``decisions=False`` leaves calibration.json and
        thresholds.json unread: evaluation fits its own. ``path``: a run folder, a checkpoint, a Hugging
        Face folder or ``hf-hub:ORG/NAME[@REVISION]`` (``which`` does not apply to the last two)."""
        if is_hub_model(path):
            return load_hf(path, device=device, decisions=decisions, default_thresholds=default_thresholds, cls=cls)
        return run_model(path, which=which, device=device, decisions=decisions,
                         default_thresholds=default_thresholds, cls=cls)


def expand_inputs(items: list[str]) -> list[str]:
    """Files, folders (searched recursively for images) and globs -> a sorted list of image paths."""
    paths: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(str(f) for f in p.rglob("*") if f.is_file() and is_image_file(f))
        elif p.is_file():
            paths.append(str(p))
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise UserError(f"{item} matches no file or folder")
            paths += [m for m in matches if Path(m).is_file()]
    if not paths:
        raise UserError(f"no images found in {' '.join(items)}")
    return paths
