"""Exports that carry their preprocessing: uint8 images in, calibrated class probabilities out.

The commonest complaint about exported classifiers is that they disagree with the
framework, because resize/normalisation was re-implemented by hand. Here the
normalisation and the temperature are inside the exported graph (ONNX,
TorchScript), or applied by resnetlab's own loader from the sidecar (safetensors),
and every export is checked against the checkpoint on real images before it is
kept. ``<file>.json`` beside the model says what it expects: classes, input
layout and size, resize policy, mean/std, temperature, rejection threshold. The output and its
decision are the run's task's (evaluate/task.py): a multi-label export outputs one sigmoid a class,
its sidecar carries the task's name and the per-class decision thresholds (the run's
thresholds.json), and its check compares those probabilities and the label sets they give, not
the argmax. OpenVINO models (deploy/openvino.py writes them from the ONNX export) load here too, and
Hugging Face folders (deploy/hub.py) reuse the safetensors loader's model builder.
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

from resnetlab.config import AugmentConfig
from resnetlab.data import plan_data
from resnetlab.data.bundle import split_labels
from resnetlab.data.decode import decode_for_model, resize_tensor, set_channels
from resnetlab.errors import UserError, need_extra
from resnetlab.evaluate.inference import Classifier
from resnetlab.evaluate.task import SingleLabel, Tasked, task_named
from resnetlab.io import atomic_write_bytes, atomic_write_text, make_folder, read_json, temporary_path
from resnetlab.models import get_model
from resnetlab.run_folder import read_run_config, saved_split_file

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}
OPSET = 18
# probability units: a multi-label decision this close to its threshold may flip between two exact runtimes
# (a fitted threshold is one val image's probability, and the check runs on val), so it is not held against
# an export; such flips are counted in the agreement figures as near_threshold_flips
TIE = 1e-4


class Deployable(nn.Module):
    """uint8 (N, H, W, C) images (or (N, C, H, W) with layout nchw) -> (N, K) probabilities as the
    task gives them: softmax of logits / temperature, or one sigmoid a class."""

    def __init__(self, model: nn.Module, mean, std, temperature: float, layout: str, task: SingleLabel):
        super().__init__()
        self.model = model
        self.nhwc = layout == "nhwc"
        self.task = task
        # scale and shift folded: (x / 255 - mean) / std = x * scale - shift, in float32
        std_t, mean_t = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, -1, 1, 1))
        # a mean image (data.normalize=mean_image) is (C, H, W): the export's fixed size is the model's
        self.register_buffer("shift", (mean_t / std_t.view(-1, 1, 1)).unsqueeze(0) if mean_t.dim() == 3
                             else (mean_t / std_t).view(1, -1, 1, 1))
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2) if self.nhwc else images
        x = x.to(torch.float32) * self.scale - self.shift
        # plain Python: tracing and export keep only the task's own operations
        return self.task.probabilities(self.model(x), self.temperature)


@dataclass
class Exported(Tasked):
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
    def task(self) -> SingleLabel:
        return task_named(self.meta.get("task"))  # exports made before multi-label lack the key

    @property
    def thresholds(self) -> torch.Tensor | None:
        """(K,) decision thresholds on probabilities, multi-label only."""
        return None if self.task.one_class else torch.tensor(self.meta["thresholds"], dtype=torch.float32)

    @property
    def threshold_source(self) -> str:
        return f"thresholds from {sidecar(self.path).name} ({self.meta.get('threshold_source', '')})"

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
        return decode_for_model(paths, self.image_size, self.resize, self.channels)


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
        task = task_named(meta.get("task"))
        if not task.one_class and len(meta["thresholds"]) != len(meta["classes"]):
            raise ValueError("one threshold a class")
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} has no readable sidecar {meta_path.name}: "
                        "export it again with resnetlab export") from None
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
        pre = meta["preprocess"]
        wrapped = Deployable(model_from_meta(meta, path), pre["mean"], pre["std"], meta["temperature"],
                             meta["input"]["layout"], task).eval()
        return Exported(path, meta, _torch_runner(wrapped))
    if fmt == "openvino":
        return Exported(path, meta, _openvino_runner(path, threads))
    raise UserError(f"{meta_path}: unknown format {fmt!r}")


def model_from_meta(meta: dict, weights: Path) -> nn.Module:
    """The model an export's metadata names, in eval mode, its weights read with safetensors (no pickle,
    so a downloaded file cannot run code)."""
    from safetensors.torch import load_file

    m = meta["model"]
    model = get_model(m["name"], num_classes=len(meta["classes"]), in_chans=meta["input"]["channels"],
                      **{k: v for k, v in m["options"].items() if v is not None})
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{weights} does not hold the weights its metadata describes "
                        f"({str(e).splitlines()[0][:120]})") from None
    return model.eval()


def _openvino_runner(path: Path, threads: int):
    ov = need_extra("openvino", "openvino", "an OpenVINO model")
    # f32: OpenVINO's CPU default is bf16 where the CPU has it, which would not be the checked model
    config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
        raise UserError(f"{path} is not a model OpenVINO can load ({_last_line(e)})") from None
    return lambda x: compiled(x)[0]


def _torch_runner(module: nn.Module):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def write_export(predictor: Classifier, fmt: str, out: Path, *, images: torch.Tensor, layout: str = "nhwc",
                 min_agreement: float = 0.999, split: str = "") -> tuple[Path, dict]:
    """Write ``predictor``'s model in ``fmt`` to ``out`` (+ sidecar), checked on ``images`` first.

    Model and sidecar are written under temporary names beside the target, loaded back and
    compared with the checkpoint; only when top-1 agreement (multi-label: label-set agreement)
    reaches ``min_agreement`` are both renamed over any previous export. A failed check leaves the
    previous export as it was.
    Returns the model file and the agreement figures (``split``: where ``images`` came from)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}': choose one of {', '.join(FORMATS)}")
    if len(images) == 0:
        raise UserError("no images to check the export on: the check needs at least one")
    reference = predictor.probabilities(images)  # before the model is moved to fp32 on the CPU
    model = predictor.model.float().eval().to("cpu").to(memory_format=torch.contiguous_format)
    path = out.with_name(out.name + FORMATS[fmt]) if not out.name.endswith(FORMATS[fmt]) else out
    make_folder(path.parent)
    tmp = temporary_path(path)
    try:
        _write_model(model, predictor, fmt, tmp, layout)
        atomic_write_text(sidecar(tmp), json.dumps(export_meta(predictor, fmt, path.name, layout), indent=2) + "\n")
        thresholds = predictor.task.thresholds_of(predictor)
        result = {**agreement(reference, load_export(tmp).probabilities(images), thresholds), "split": split}
        require_agreement(result, fmt, min_agreement, kept=path.exists())
        meta = read_json(sidecar(tmp))
        atomic_write_text(sidecar(tmp), json.dumps({**meta, "agreement": result}, indent=2) + "\n")
        os.replace(tmp, path)
        os.replace(sidecar(tmp), sidecar(path))
    finally:
        tmp.unlink(missing_ok=True)
        sidecar(tmp).unlink(missing_ok=True)
    return path, result


def require_agreement(result: dict, fmt: str, min_agreement: float, *, kept: bool) -> None:
    """One line, and nothing written, when the export's top-1 (multi-label: label-set) agreement with the
    checkpoint is under ``min_agreement``; ``kept``: a previous export stays where it was."""
    key = "top1_agreement" if "top1_agreement" in result else "label_set_agreement"
    if not result[key] >= min_agreement:
        raise UserError(
            f"the {fmt} export disagrees with the checkpoint on {100 * (1 - result[key]):.2f}% of "
            f"{result['n']} images (largest probability difference {result['max_probability_difference']:.2e}); "
            f"nothing was written{' and the previous export was kept' if kept else ''}: report this as a bug")


def _write_model(model: nn.Module, predictor: Classifier, fmt: str, tmp: Path, layout: str) -> None:
    wrapped = Deployable(model, predictor.mean.tolist(), predictor.std.tolist(), predictor.temperature, layout,
                         predictor.task).eval()
    size, channels = predictor.image_size, predictor.channels
    shape = (2, size, size, channels) if layout == "nhwc" else (2, channels, size, size)
    example = torch.zeros(shape, dtype=torch.uint8)
    if fmt == "onnx":
        _export_onnx(wrapped, example, tmp)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(torch.jit.trace(wrapped, example), str(tmp))
    else:
        from safetensors.torch import save

        atomic_write_bytes(tmp, save({k: v.contiguous() for k, v in model.state_dict().items()}))


def export_meta(predictor: Classifier, fmt: str, name: str, layout: str) -> dict:
    """The sidecar of an export of ``predictor``: what it expects, and how its output is decided."""
    size, channels = predictor.image_size, predictor.channels
    return {
        "format": fmt, "file": name, "classes": predictor.classes, "opset": OPSET if fmt == "onnx" else None,
        "input": {"layout": layout, "dtype": "uint8", "size": size, "channels": channels,
                  "shape": ["N", size, size, channels] if layout == "nhwc" else ["N", channels, size, size]},
        "output": "probabilities (N, classes), temperature-scaled, softmax applied",
        "preprocess": {"resize": predictor.resize, "mean": predictor.mean.tolist(), "std": predictor.std.tolist(),
                       "where": "applied by resnetlab's loader" if fmt in ("safetensors", "hf") else "inside the graph",
                       "note": "decode to RGB (or grey), resize to size x size (squash or short side + centre "
                               "crop per 'resize'), uint8; the model does the rest"},
        "temperature": predictor.temperature, "calibration": predictor.calibration,
        "model": {"name": predictor.model_name, "options": predictor.model_options or {}},
        "augment": {f.name: getattr(predictor.augment, f.name) for f in fields(AugmentConfig)},
        "source_checkpoint": str(predictor.checkpoint or predictor.source),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **predictor.task.sidecar(predictor),  # a multi-label export's output and thresholds replace the above
    }


def _export_onnx(wrapped: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The dynamo exporter (torch >= 2.5), else the TorchScript one: each lacks ops the other has (2.11's
    dynamo exporter had no adaptive_max_pool2d), and the agreement check judges whichever wrote the file."""
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(wrapped, (example,), dynamo=True, opset_version=OPSET, input_names=["images"],
                                    output_names=["probabilities"], dynamic_shapes=({0: batch},), verbose=False)
        program.save(str(path))
        return
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; the user needs one line
        dynamo_error = _last_line(e)
    try:
        _export_onnx_torchscript(wrapped, example, path)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"torch.onnx could not export this model (torch {torch.__version__}; dynamo exporter: "
                        f"{dynamo_error}; TorchScript exporter: {_last_line(e)}); "
                        "try --format torchscript or safetensors") from None


def _export_onnx_torchscript(wrapped: nn.Module, example: torch.Tensor, path: Path) -> None:
    import inspect

    # torch < 2.5 has no `dynamo` argument and exports with TorchScript by default
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(wrapped, (example,), str(path), opset_version=OPSET, input_names=["images"],
                          output_names=["probabilities"], dynamic_axes={"images": {0: "N"}, "probabilities": {0: "N"}},
                          **legacy)


def _last_line(e: Exception) -> str:
    return ([line for line in str(e).splitlines() if line.strip()] or [type(e).__name__])[-1][:160]


def agreement(reference: torch.Tensor, exported: torch.Tensor, thresholds: torch.Tensor | None = None) -> dict:
    """Top-1 agreement and the largest absolute probability difference, with n; given (K,) multi-label
    ``thresholds``, label-set agreement (share of images with the same set) instead of top-1."""
    if thresholds is not None:
        return _label_set_agreement(reference, exported, thresholds)
    same = (reference.argmax(1) == exported.argmax(1)).double()
    return {"n": len(reference), "top1_agreement": float(same.mean()) if len(same) else float("nan"),
            "max_probability_difference": float((reference - exported).abs().max()) if len(same) else float("nan")}


def _label_set_agreement(reference: torch.Tensor, exported: torch.Tensor, thresholds: torch.Tensor) -> dict:
    """(N, K) sigmoid probabilities of both, decided at ``prob >= threshold``. A flipped decision within
    TIE of its threshold is a tie between runtimes, counted apart and not as a disagreement."""
    n = len(reference)
    if not n:
        return {"n": 0, "label_set_agreement": float("nan"), "decision_agreement": float("nan"),
                "near_threshold_flips": 0, "max_probability_difference": float("nan")}
    thr = thresholds[None, :]
    flipped = (reference >= thr) != (exported >= thr)  # (N, K)
    near = (reference - thr).abs() <= TIE
    differ = flipped & ~near
    return {"n": n, "label_set_agreement": float((~differ.any(1)).double().mean()),
            "decision_agreement": float(1 - differ.double().mean()),
            "near_threshold_flips": int((flipped & near).sum()),
            "max_probability_difference": float((reference - exported).abs().max())}


def describe_agreement(result: dict) -> str:
    """'top-1 99.90%' or 'label sets 99.90%' (multi-label), for messages."""
    if "label_set_agreement" in result:
        flips = result["near_threshold_flips"]
        return f"label sets {100 * result['label_set_agreement']:.2f}%" + (
            f" ({flips} decisions within {TIE:g} of their threshold flipped)" if flips else "")
    return f"top-1 {100 * result['top1_agreement']:.2f}%"


def sample_run_images(run_dir: Path, predictor: Classifier, splits: tuple[str, ...], limit: int,
                      seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Up to ``limit`` seeded images of the first of ``splits`` the run has, at the model's size,
    with their labels ((n,) int64, multi-label (n, K) float32 multi-hot) and the split's name (the
    export check and int8 calibration use this)."""
    catalog, _, _ = plan_data(read_run_config(run_dir), split_file=saved_split_file(run_dir))
    for split in splits:
        rows = catalog.rows(split)
        if len(rows):
            break
    else:
        raise UserError(f"{run_dir} has no {' or '.join(splits)} images to use here")
    pick = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:limit].numpy()]

    if catalog.arrays is not None:
        x = torch.from_numpy(catalog.arrays[pick])
        images = resize_tensor(set_channels(x, predictor.channels), predictor.image_size)
        return images, split_labels(catalog, pick), split
    paths = [catalog.paths[i] for i in pick]
    images, kept, _ = predictor.load_images(paths)
    where = {p: i for i, p in enumerate(paths)}
    return images, split_labels(catalog, np.array([pick[where[p]] for p in kept], dtype=np.int64)), split
