"""A trained model with its preprocessing, loaded from a run folder or a checkpoint file.

The checkpoint carries the model name, options, classes, image size, channels
and mean/std, so prediction applies exactly the preprocessing training used.
Inference precision follows the device it runs on: the training precision where
that device runs it, else the device's default, so a model trained in fp16 on a
GPU predicts and exports on a CPU.

A multi-label run (checkpoint ``task: multi_label``) gives one sigmoid a class and decides each
class at its own threshold, read from the run's thresholds.json beside the checkpoint.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from resnetlab import run_folder as rf
from resnetlab.config import AugmentConfig
from resnetlab.data.images import is_image_file
from resnetlab.device import inference_precision, select_device
from resnetlab.errors import UserError
from resnetlab.evaluate.inference import Classifier
from resnetlab.evaluate.multilabel import read_thresholds
from resnetlab.io import read_json
from resnetlab.models import get_model
from resnetlab.checkpoint import load_checkpoint, load_model_state
from resnetlab.run_folder import find_checkpoint


@dataclass
class Predictor(Classifier):
    checkpoint: Path = Path()
    model_name: str = ""
    model_options: dict | None = None
    threshold_source: str = ""  # multi-label: where the thresholds came from, one line

    @classmethod
    def load(cls, path: str | Path, *, which: str = "best", device: str = "auto", default_thresholds: bool = False,
             with_thresholds: bool = True) -> "Predictor":
        """``default_thresholds``: a multi-label run whose thresholds.json is missing or damaged decides at 0.5
        rather than stopping. ``with_thresholds=False`` leaves them unread (None): evaluation fits its own."""
        path = Path(path)
        ckpt_path = find_checkpoint(path, which) if path.is_dir() else path
        state = load_checkpoint(ckpt_path)
        model = get_model(
            state["model_name"], num_classes=state["num_classes"], in_chans=state["in_chans"],
            **{k: v for k, v in state["model_options"].items() if v is not None},
        )
        if state.get("ema"):  # trained with train.ema_decay: the averaged weights are the model
            state = {**state, "model": state["ema"]["module"]}
        load_model_state(model, state, path=ckpt_path, expected="the model it names")
        dev = select_device(device)
        cfg, pre = state["config"], state["preprocess"]
        cal_path = ckpt_path.parent / rf.CALIBRATION
        multi = state.get("task", "single_label") == "multi_label"  # older checkpoints lack it: single-label
        calibration = read_json(cal_path) if cal_path.is_file() and not multi else None  # softmax calibration only
        thresholds, source = None, ""
        if multi and with_thresholds:
            thresholds, source = read_thresholds(ckpt_path.parent / rf.THRESHOLDS, list(state["classes"]),
                                                 allow_default=default_thresholds)
        augment = AugmentConfig(**{k: v for k, v in cfg.get("augment", {}).items()
                                   if k in {f.name for f in fields(AugmentConfig)}})
        return cls(
            model=model.to(dev).eval(),
            classes=list(state["classes"]),
            image_size=pre["image_size"],
            channels=pre["channels"],
            resize=cfg["data"]["resize"],
            mean=torch.tensor(pre["mean"], device=dev),
            std=torch.tensor(pre["std"], device=dev),
            device=dev,
            precision=inference_precision(cfg["train"]["precision"], dev),
            augment=augment,
            temperature=calibration["temperature"] if calibration else 1.0,
            calibration=calibration,
            multi_label=multi,
            thresholds=thresholds,
            threshold_source=source,
            source=ckpt_path.name,
            checkpoint=ckpt_path,
            model_name=state["model_name"],
            model_options=dict(state["model_options"]),
        )


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
