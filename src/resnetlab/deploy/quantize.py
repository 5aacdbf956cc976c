"""Post-training static int8 quantisation of an ONNX export, with onnxruntime's own tools.

Activations are calibrated on training images (min/max over 256 of them, never the
images scored afterwards); weights are int8 per output channel; QDQ format, which
onnxruntime fuses into int8 convolutions on x86 (VNNI). Accuracy before and after is
measured on the validation images the export was checked on, and speed on one batch size.
A multi-label export is measured by mAP (macro) before and after, and by how often int8 gives
the same label set as fp32 at the export's thresholds, instead of top-1.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from resnetlab.deploy.export import agreement, load_export, sample_run_images, sidecar
from resnetlab.io import atomic_write_text


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: get_next() -> {input name: array} or None."""

    def __init__(self, name: str, batches: list[np.ndarray]):
        self.name, self.batches = name, iter(batches)

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {self.name: batch}


def _speed(exported, images: torch.Tensor, batch: int, repeats: int = 5) -> float:
    x = images[:batch]
    exported.probabilities(x)  # warm-up: allocations and kernel choice
    start = time.perf_counter()
    for _ in range(repeats):
        exported.probabilities(x)
    return repeats * len(x) / (time.perf_counter() - start)


def _top1_scores(exported, p32: torch.Tensor, p8: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 of fp32 and int8 against the labels, and how often int8's top class is fp32's."""
    return {"fp32_top1": float((p32.argmax(1) == labels).double().mean()),
            "int8_top1": float((p8.argmax(1) == labels).double().mean()),
            "top1_agreement": float((p32.argmax(1) == p8.argmax(1)).double().mean())}


def _multilabel_scores(exported, p32: torch.Tensor, p8: torch.Tensor, targets: torch.Tensor) -> dict:
    """mAP (macro) of fp32 and int8 against the (N, K) multi-hot targets, and int8's agreement with fp32."""
    from resnetlab.evaluate.multilabel import multilabel_metrics

    def map_macro(p: torch.Tensor) -> float:  # the metrics take logits: logit(p) gives p back through sigmoid
        return multilabel_metrics(torch.logit(p, eps=1e-7), targets, exported.classes, exported.thresholds)["map_macro"]

    return {"task": exported.task.name, "fp32_map": map_macro(p32), "int8_map": map_macro(p8),
            **agreement(p32, p8, exported.thresholds)}


def quantize_onnx(path: Path, run_dir: Path, predictor, images: torch.Tensor, labels: torch.Tensor,
                  *, calibration_images: int = 256, batch: int = 64) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    meta = json.loads(sidecar(path).read_text())
    nhwc = meta["input"]["layout"] == "nhwc"
    calib, _, _ = sample_run_images(run_dir, predictor, ("train",), calibration_images, seed=1)
    arrays = [np.ascontiguousarray((b.permute(0, 2, 3, 1) if nhwc else b).numpy()) for b in calib.split(32)]
    out = path.with_name(path.name.replace(".onnx", ".int8.onnx"))
    # scratch files beside the target: the final os.replace is then a rename on one file system
    # (a /tmp on another file system made it fail with "Invalid cross-device link")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(Path(tmp) / "int8.onnx"), _Reader("images", arrays),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        os.replace(Path(tmp) / "int8.onnx", out)
    atomic_write_text(sidecar(out), json.dumps({**meta, "file": out.name, "int8": True}, indent=2) + "\n")
    fp32, int8 = load_export(path, threads=os.cpu_count() or 1), load_export(out, threads=os.cpu_count() or 1)
    p32, p8 = fp32.probabilities(images), int8.probabilities(images)
    report = {
        "file": str(out), "n": len(labels), "calibration_images": len(calib), "batch": min(batch, len(images)),
        "threads": os.cpu_count(),
        **(_top1_scores if fp32.task.one_class else _multilabel_scores)(fp32, p32, p8, labels),
        "fp32_images_per_s": _speed(fp32, images, batch), "int8_images_per_s": _speed(int8, images, batch),
    }
    report["speedup"] = report["int8_images_per_s"] / report["fp32_images_per_s"]
    meta_int8 = json.loads(sidecar(out).read_text())
    meta_int8["quantization"] = report
    atomic_write_text(sidecar(out), json.dumps(meta_int8, indent=2) + "\n")
    return report
