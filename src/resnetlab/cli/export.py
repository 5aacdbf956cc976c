"""`resnetlab export RUN --format onnx|torchscript|safetensors|openvino|hf [--int8]`: a deployable model, checked."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

EXAMPLES = """examples:
  resnetlab export runs/<run> --format onnx              # runs/<run>/export/model.onnx + model.json
  resnetlab export runs/<run> --format onnx --int8       # also model.int8.onnx, calibrated on training images
  resnetlab export runs/<run> --format openvino          # runs/<run>/export/model.xml + .bin, from the ONNX
  resnetlab export runs/<run> --format hf                # runs/<run>/export/hf/: what the Hugging Face Hub takes
  resnetlab predict runs/<run>/export/model.onnx photos/
"""
MIN_AGREEMENT = 0.999
# file exports (deploy/export.py) and the formats of their own modules (deploy/openvino.py, deploy/hub.py)
OTHER_FORMATS = ("openvino", "hf")


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="ONNX / TorchScript / safetensors / OpenVINO / Hugging Face folder with the "
                                      "preprocessing, checked", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder")
    p.add_argument("--format", default="onnx", help="onnx, torchscript, safetensors, openvino or hf")
    p.add_argument("--layout", default="nhwc", choices=["nhwc", "nchw"], help="how the uint8 input is laid out")
    p.add_argument("--out", metavar="PATH",
                   help="model path without suffix (default RUN/export/model); --format hf: a folder (RUN/export/hf)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--check-images", type=int, default=1000, help="validation images for the agreement check")
    p.add_argument("--int8", action="store_true", help="ONNX only: also a post-training static int8 model")
    p.add_argument("--default-thresholds", action="store_true",
                   help="multi-label runs: where thresholds.json is missing or damaged, export 0.5 for every class")
    p.add_argument("--license", help="--format hf: the model card's license (an SPDX-style id, e.g. apache-2.0)")
    p.set_defaults(func=run)


@dataclass
class Checked:
    """An export that passed its check, with what the check used (``--int8`` calibrates with them)."""

    path: Path
    result: dict
    predictor: object
    images: object
    labels: object
    split: str


def export_run(run_dir: Path, fmt: str, out: Path | None = None, *, checkpoint: str = "best",
               check_images: int = 1000, layout: str = "nhwc", default_thresholds: bool = False,
               license: str | None = None, repo_id: str | None = None) -> Checked:
    """The run's model exported in ``fmt`` to ``out`` (default RUN/export/model, hf: RUN/export/hf) and
    checked against its checkpoint on up to ``check_images`` of the run's val (else test, else train) images."""
    from resnetlab.deploy.export import FORMATS, sample_run_images, write_export
    from resnetlab.deploy.predictor import Predictor
    from resnetlab.errors import UserError

    if fmt not in FORMATS and fmt not in OTHER_FORMATS:
        raise UserError(f"unknown export format '{fmt}': choose one of {', '.join([*FORMATS, *OTHER_FORMATS])}")
    if check_images < 1:
        raise UserError(f"--check-images {check_images}: the agreement check needs at least 1 image (1000 is usual)")
    predictor = Predictor.load(run_dir, which=checkpoint, device="cpu", default_thresholds=default_thresholds)
    if default_thresholds and not predictor.task.one_class:
        print(predictor.threshold_source, file=sys.stderr)
    predictor.precision = "fp32"  # the reference for the check: the checkpoint in full precision
    # the run's val images (else test, else train): what the export must agree on
    images, labels, split = sample_run_images(run_dir, predictor, ("val", "test", "train"), check_images, seed=0)
    out = out or run_dir / "export" / ("hf" if fmt == "hf" else "model")
    check = {"images": images, "min_agreement": MIN_AGREEMENT, "split": split}
    if fmt == "hf":
        from resnetlab.deploy.hub import write_hf

        path, result = write_hf(predictor, out, run_dir=run_dir, license=license, repo_id=repo_id, **check)
    elif fmt == "openvino":
        from resnetlab.deploy.openvino import write_openvino

        path, result = write_openvino(predictor, out, layout=layout, **check)
    else:
        path, result = write_export(predictor, fmt, out, layout=layout, **check)
    return Checked(path, result, predictor, images, labels, split)


def run(args) -> int:
    from resnetlab.deploy.export import OPSET, describe_agreement, sidecar
    from resnetlab.errors import UserError
    from resnetlab.run_folder import check_run_dir

    run_dir = check_run_dir(Path(args.run))
    if args.int8 and args.format != "onnx":
        raise UserError("--int8 is made with onnxruntime's quantisation: use it with --format onnx")
    if args.license and args.format != "hf":
        raise UserError("--license is written into the model card of --format hf; other formats have no card")
    done = export_run(run_dir, args.format, Path(args.out) if args.out else None, checkpoint=args.checkpoint,
                      check_images=args.check_images, layout=args.layout,
                      default_thresholds=args.default_thresholds, license=args.license)
    path, result, predictor, split = done.path, done.result, done.predictor, done.split
    runtime = {"onnx": f" (ONNX opset {OPSET}, dynamic batch, onnxruntime CPU)", "openvino": " (OpenVINO CPU, f32)",
               "hf": " (model.safetensors, config.json, README.md)"}.get(args.format, "")
    wrote = f"{path}/" if args.format == "hf" else f"{path} and {sidecar(path).name}"
    print(f"wrote {wrote}{runtime}; agreement with {predictor.checkpoint.name} "
          f"on {result['n']} {split} images: {describe_agreement(result)}, largest probability difference "
          f"{result['max_probability_difference']:.2e}")
    if args.int8:
        from resnetlab.deploy.quantize import quantize_onnx

        report = quantize_onnx(path, run_dir, predictor, done.images, done.labels)
        if not predictor.task.one_class:
            print(f"wrote {report['file']}: mAP {100 * report['fp32_map']:.2f}% -> {100 * report['int8_map']:.2f}% "
                  f"on {report['n']} {split} images; {report['int8_images_per_s']:.0f} img/s "
                  f"({report['speedup']:.2f}x); "
                  f"int8 gives fp32's label sets on {100 * report['label_set_agreement']:.2f}% (largest probability "
                  f"difference {report['max_probability_difference']:.2e})")
            return 0
        print(f"wrote {report['file']}: top-1 {100 * report['fp32_top1']:.2f}% -> {100 * report['int8_top1']:.2f}% "
              f"on {report['n']} {split} images; "
              f"{report['fp32_images_per_s']:.0f} -> {report['int8_images_per_s']:.0f} img/s "
              f"({report['speedup']:.2f}x, batch {report['batch']}, {report['threads']} threads); "
              f"int8 agrees with fp32 on {100 * report['top1_agreement']:.2f}%")
    return 0
