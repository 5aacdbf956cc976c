"""OpenVINO IR (model.xml + model.bin), converted from the ONNX export and checked like every export.

The ONNX export (deploy/export.py, itself checked) carries the preprocessing and the task's output, so
the converted model takes the same uint8 images and gives the same probabilities. Weights stay fp32
(OpenVINO's save_model halves them to fp16 by default) and deploy/export.py runs the model at f32 for
the same reason: the file kept is the one that agreed with the checkpoint. The sidecar is the ONNX
export's, with the format and the files named. openvino is imported only when used (the `openvino` extra).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from resnetlab.deploy.export import agreement, load_export, require_agreement, sidecar, write_export
from resnetlab.errors import UserError, need_extra
from resnetlab.evaluate.inference import Classifier
from resnetlab.io import atomic_write_text, make_folder, read_json

SUFFIX = ".xml"


def write_openvino(predictor: Classifier, out: Path, *, images: torch.Tensor, layout: str = "nhwc",
                   min_agreement: float = 0.999, split: str = "") -> tuple[Path, dict]:
    """``out``.xml and .bin (+ sidecar) for ``predictor``: ONNX, converted, loaded back and compared with
    the checkpoint on ``images``; put in place only when it agrees. Returns the .xml and the figures."""
    ov = need_extra("openvino", "openvino", "--format openvino")
    if len(images) == 0:
        raise UserError("no images to check the export on: the check needs at least one")
    path = out if out.name.endswith(SUFFIX) else out.with_name(out.name + SUFFIX)
    make_folder(path.parent)
    reference = predictor.probabilities(images)  # the checkpoint's, before write_export moves it to the CPU
    # scratch beside the target: the renames below stay on one file system
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".openvino-") as tmp:
        onnx, _ = write_export(predictor, "onnx", Path(tmp) / "model", images=images, layout=layout,
                               min_agreement=min_agreement, split=split)
        xml = Path(tmp) / ("model" + SUFFIX)
        try:
            ov.save_model(ov.convert_model(str(onnx)), str(xml), compress_to_fp16=False)
        except Exception as e:  # noqa: BLE001 - the converter raises many types; the user needs one line
            raise UserError(f"OpenVINO {ov.__version__} could not convert the ONNX export "
                            f"({' '.join(str(e).split())[:160]}); use --format onnx") from None
        meta = {**read_json(sidecar(onnx)), "format": "openvino", "file": path.name,
                "weights": path.with_suffix(".bin").name, "converted_from": "onnx", "openvino": ov.__version__}
        meta.pop("agreement", None)  # the ONNX file's; the converted model's own is measured next
        atomic_write_text(sidecar(xml), json.dumps(meta, indent=2) + "\n")
        result = {**agreement(reference, load_export(xml).probabilities(images),
                              predictor.task.thresholds_of(predictor)), "split": split}
        require_agreement(result, "openvino", min_agreement, kept=path.exists())
        atomic_write_text(sidecar(xml), json.dumps({**meta, "agreement": result}, indent=2) + "\n")
        os.replace(xml.with_suffix(".bin"), path.with_suffix(".bin"))  # the weights before the graph that reads them
        os.replace(xml, path)
        os.replace(sidecar(xml), sidecar(path))
    return path, result
