"""Exports that carry their preprocessing: uint8 images in, calibrated class probabilities out.

The commonest complaint about exported classifiers is that they disagree with the
framework, because resize/normalisation was re-implemented by hand. Here the
normalisation and the temperature are inside the exported graph (ONNX,
TorchScript), or applied by resnetlab's own loader from the sidecar (safetensors),
and every export is checked against the checkpoint on real images before it is
kept. ``<file>.json`` beside the model says what it expects: classes, input
layout and size, resize policy, mean/std, temperature, rejection threshold.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from resnetlab.checkpoint import atomic_write_bytes, atomic_write_text
from resnetlab.config import AugmentConfig
from resnetlab.errors import UserError
from resnetlab.models import get_model

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}
OPSET = 18


class Deployable(nn.Module):
    """uint8 (N, H, W, C) images (or (N, C, H, W) with layout nchw) -> (N, K) probabilities."""

    def __init__(self, model: nn.Module, mean, std, temperature: float, layout: str):
        super().__init__()
        self.model = model
        self.nhwc = layout == "nhwc"
        # scale and shift folded: (x / 255 - mean) / std = x * scale - shift, in float32
        std_t, mean_t = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, -1, 1, 1))
        self.register_buffer("shift", (mean_t / std_t).view(1, -1, 1, 1))
        self.inv_temperature = float(1.0 / temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2) if self.nhwc else images
        x = x.to(torch.float32) * self.scale - self.shift
        return (self.model(x) * self.inv_temperature).softmax(1)


@dataclass
class Exported:
    """A model loaded from an export, with the interface `predict` uses (see Predictor)."""

    path: Path
    meta: dict
    runner: object  # a callable: uint8 array in the export's layout -> numpy probabilities

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def image_size(self) -> int:
        return self.meta["input"]["size"]

    @property
    def channels(self) -> int:
        return self.meta["input"]["channels"]

    @property
    def resize(self) -> str:
        return self.meta["preprocess"]["resize"]

    @property
    def calibration(self) -> dict | None:
        return self.meta.get("calibration")

    @property
    def augment(self) -> AugmentConfig:
        known = {f.name for f in fields(AugmentConfig)}
        return AugmentConfig(**{k: v for k, v in self.meta.get("augment", {}).items() if k in known})

    def probabilities(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 (N, C, S, S) -> (N, K) float32 calibrated probabilities."""
        out = []
        for part in images.split(batch_size):
            x = part.permute(0, 2, 3, 1) if self.meta["input"]["layout"] == "nhwc" else part
            out.append(torch.from_numpy(np.asarray(self.runner(np.ascontiguousarray(x.numpy())), dtype=np.float32)))
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def load_images(self, paths: list[str]):
        from resnetlab.predict import decode_for

        return decode_for(paths, self.image_size, self.resize, self.channels)


def is_export(path: Path) -> bool:
    return path.is_file() and sidecar(path).is_file()


def sidecar(path: Path) -> Path:
    """model.onnx -> model.onnx.json: one sidecar per file, so formats can share a folder."""
    return path.with_name(path.name + ".json")


def load_export(path: Path, *, threads: int = 0) -> Exported:
    meta_path = sidecar(path)
    try:
        meta = json.loads(meta_path.read_text())
        fmt = meta["format"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{path} has no readable sidecar {meta_path.name}: export it again with resnetlab export") from None
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for bad files
            raise UserError(f"{path} is not a model onnxruntime can load ({str(e).splitlines()[0][:120]})") from None
        name = session.get_inputs()[0].name
        return Exported(path, meta, lambda x: session.run(None, {name: x})[0])
    if fmt == "torchscript":
        try:
            with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; users still ask for it
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{path} is not a TorchScript model ({str(e).splitlines()[0][:120]})") from None
        return Exported(path, meta, _torch_runner(module))
    if fmt == "safetensors":
        from safetensors.torch import load_file

        m = meta["model"]
        model = get_model(m["name"], num_classes=len(meta["classes"]), in_chans=meta["input"]["channels"],
                          **{k: v for k, v in m["options"].items() if v is not None})
        try:
            model.load_state_dict(load_file(str(path)))
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{path} does not hold the weights its sidecar describes ({str(e).splitlines()[0][:120]})") from None
        pre = meta["preprocess"]
        wrapped = Deployable(model.eval(), pre["mean"], pre["std"], meta["temperature"], meta["input"]["layout"]).eval()
        return Exported(path, meta, _torch_runner(wrapped))
    raise UserError(f"{meta_path}: unknown format {fmt!r}")


def _torch_runner(module: nn.Module):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def write_export(predictor, fmt: str, out: Path, *, layout: str = "nhwc", meta_extra: dict | None = None) -> Path:
    """Write ``predictor``'s model in ``fmt`` to ``out`` (+ sidecar); returns the model file."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}': choose one of {', '.join(FORMATS)}")
    model = predictor.model.float().eval().to("cpu").to(memory_format=torch.contiguous_format)
    wrapped = Deployable(model, predictor.mean.tolist(), predictor.std.tolist(), predictor.temperature, layout).eval()
    size, channels = predictor.image_size, predictor.channels
    example = torch.zeros((2, size, size, channels) if layout == "nhwc" else (2, channels, size, size), dtype=torch.uint8)
    path = out.with_name(out.name + FORMATS[fmt]) if not out.name.endswith(FORMATS[fmt]) else out
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "onnx":
            _export_onnx(wrapped, example, tmp)
        elif fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.save(torch.jit.trace(wrapped, example), str(tmp))
        else:
            from safetensors.torch import save

            atomic_write_bytes(tmp, save({k: v.contiguous() for k, v in model.state_dict().items()}))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {
        "format": fmt, "file": path.name, "classes": predictor.classes, "opset": OPSET if fmt == "onnx" else None,
        "input": {"layout": layout, "dtype": "uint8", "size": size, "channels": channels,
                  "shape": ["N", size, size, channels] if layout == "nhwc" else ["N", channels, size, size]},
        "output": "probabilities (N, classes), temperature-scaled, softmax applied",
        "preprocess": {"resize": predictor.resize, "mean": predictor.mean.tolist(), "std": predictor.std.tolist(),
                       "where": "applied by resnetlab's loader" if fmt == "safetensors" else "inside the graph",
                       "note": "decode to RGB (or grey), resize to size x size (squash or short side + centre "
                               "crop per 'resize'), uint8; the model does the rest"},
        "temperature": predictor.temperature, "calibration": predictor.calibration,
        "model": {"name": predictor.model_name, "options": predictor.model_options},
        "augment": {f.name: getattr(predictor.augment, f.name) for f in fields(AugmentConfig)},
        "source_checkpoint": str(predictor.checkpoint), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(meta_extra or {}),
    }
    atomic_write_text(sidecar(path), json.dumps(meta, indent=2) + "\n")
    return path


def _export_onnx(wrapped: nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.onnx.export(wrapped, (example,), dynamo=True, opset_version=OPSET, input_names=["images"],
                                    output_names=["probabilities"], dynamic_shapes=({0: batch},), verbose=False)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; the user needs one line
        # e.g. torch 2.11's exporter has no ONNX function for adaptive_max_pool2d (resnet9); 2.14's has
        last = [line for line in str(e).splitlines() if line.strip()][-1][:160]
        raise UserError(f"torch.onnx could not export this model (torch {torch.__version__}: {last}); "
                        "try --format torchscript or safetensors") from None
    program.save(str(path))


def agreement(reference: torch.Tensor, exported: torch.Tensor) -> dict:
    """Top-1 agreement and the largest absolute probability difference, with n."""
    same = (reference.argmax(1) == exported.argmax(1)).double()
    return {"n": len(reference), "top1_agreement": float(same.mean()) if len(same) else float("nan"),
            "max_probability_difference": float((reference - exported).abs().max()) if len(same) else float("nan")}
