"""A trained model with its preprocessing, loaded from a run folder or a checkpoint file.

The checkpoint carries the model name, options, classes, image size, channels
and mean/std, so prediction applies exactly the preprocessing training used.
Inference precision follows the device it runs on: the training precision where
that device runs it, else the device's default, so a model trained in fp16 on a
GPU predicts and exports on a CPU.
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
from resnetlab.io import read_json
from resnetlab.models import get_model
from resnetlab.train.checkpoint import load_checkpoint, load_model_state
from resnetlab.run_folder import find_checkpoint


@dataclass
class Predictor(Classifier):
    checkpoint: Path = Path()
    model_name: str = ""
    model_options: dict | None = None

    @classmethod
    def load(cls, path: str | Path, *, which: str = "best", device: str = "auto") -> "Predictor":
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
        calibration = read_json(cal_path) if cal_path.is_file() else None
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
