"""A trained model with its preprocessing, loaded from a run folder or a checkpoint file.

The checkpoint carries the model name, options, classes, image size, channels
and mean/std, so prediction applies exactly the preprocessing training used.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from resnetlab.checkpoint import load_checkpoint, load_model_state
from resnetlab.config import AugmentConfig
from resnetlab.data.augment import normalize
from resnetlab.data.cache import decode_files, set_channels
from resnetlab.data.images import is_image_file
from resnetlab.errors import UserError
from resnetlab.models import get_model
from resnetlab.runs import find_checkpoint
from resnetlab.runtime import autocast, resolve_precision, select_device


@dataclass
class Predictor:
    model: nn.Module
    classes: list[str]
    image_size: int
    channels: int
    resize: str
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device
    precision: str
    checkpoint: Path
    model_name: str = ""
    model_options: dict = field(default_factory=dict)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # the training augmentation, for TTA
    temperature: float = 1.0  # from calibration.json (fitted on val by evaluate); 1 = raw softmax
    calibration: dict | None = None  # temperature and rejection thresholds, if the run was calibrated

    @classmethod
    def load(cls, path: str | Path, *, which: str = "best", device: str = "auto") -> "Predictor":
        path = Path(path)
        ckpt_path = find_checkpoint(path, which) if path.is_dir() else path
        state = load_checkpoint(ckpt_path)
        model = get_model(
            state["model_name"], num_classes=state["num_classes"], in_chans=state["in_chans"],
            **{k: v for k, v in state["model_options"].items() if v is not None},
        )
        load_model_state(model, state, path=ckpt_path, expected="the model it names")
        dev = select_device(device)
        cfg = state["config"]
        pre = state["preprocess"]
        cal_path = ckpt_path.parent / "calibration.json"
        calibration = json.loads(cal_path.read_text()) if cal_path.is_file() else None
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
            precision=resolve_precision(cfg["train"]["precision"], dev),
            checkpoint=ckpt_path,
            model_name=state["model_name"],
            model_options=dict(state["model_options"]),
            augment=augment,
            temperature=calibration["temperature"] if calibration else 1.0,
            calibration=calibration,
        )

    def load_images(self, paths: list[str]) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
        """uint8 (N, C, S, S) for the readable files, their paths, and (path, reason) for the rest."""
        return decode_for(paths, self.image_size, self.resize, self.channels)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 (N, C, S, S) -> (N, K) float32 logits on the CPU (no temperature)."""
        out = []
        with autocast(self.device, self.precision):
            for part in images.split(batch_size):
                x = normalize(part.to(self.device), self.mean, self.std, channels_last=True)
                out.append(self.model(x).float().cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def probabilities(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 (N, C, S, S) -> (N, K) float32 class probabilities, temperature-scaled if calibrated."""
        return (self.logits(images, batch_size) / self.temperature).softmax(1)


def decode_for(paths: list[str], size: int, resize: str, channels: int):
    """Files -> uint8 (N, C, size, size) as a model trained at ``size`` px expects, their paths, and
    (path, reason) for the files that cannot be used."""
    decoded, _, indices, bad = decode_files(paths, size=size, resize=resize, on_bad_image="skip", progress=False)
    arrays, kept = [], []
    for arr, i in zip(decoded, indices):
        if arr.shape[0] != size or arr.shape[1] != size:
            bad.append((paths[i], f"{arr.shape[1]}x{arr.shape[0]} px but the model takes {size} px"))
            continue
        arrays.append(torch.from_numpy(arr).permute(2, 0, 1))
        kept.append(paths[i])
    if not arrays:
        return torch.empty(0, channels, size, size, dtype=torch.uint8), kept, bad
    return set_channels(torch.stack(arrays), channels), kept, bad


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
