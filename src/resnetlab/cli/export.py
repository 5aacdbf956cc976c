"""`resnetlab export RUN --format onnx|torchscript|safetensors [--int8]`: a deployable model, checked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """examples:
  resnetlab export runs/<run> --format onnx              # runs/<run>/export/model.onnx + model.json
  resnetlab export runs/<run> --format onnx --int8       # also model.int8.onnx, calibrated on training images
  resnetlab predict runs/<run>/export/model.onnx photos/
"""
MIN_AGREEMENT = 0.999


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="ONNX / TorchScript / safetensors with the preprocessing inside, checked",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder")
    p.add_argument("--format", default="onnx", help="onnx, torchscript or safetensors")
    p.add_argument("--layout", default="nhwc", choices=["nhwc", "nchw"], help="how the uint8 input is laid out")
    p.add_argument("--out", metavar="PATH", help="model path without suffix (default RUN/export/model)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--check-images", type=int, default=1000, help="validation images for the agreement check")
    p.add_argument("--int8", action="store_true", help="ONNX only: also a post-training static int8 model")
    p.add_argument("--default-thresholds", action="store_true",
                   help="multi-label runs: where thresholds.json is missing or damaged, export 0.5 for every class")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.deploy.export import FORMATS, OPSET, describe_agreement, sample_run_images, sidecar, write_export
    from resnetlab.deploy.predictor import Predictor
    from resnetlab.errors import UserError
    from resnetlab.run_folder import check_run_dir

    run_dir = check_run_dir(Path(args.run))
    if args.format not in FORMATS:
        raise UserError(f"unknown export format '{args.format}': choose one of {', '.join(FORMATS)}")
    if args.int8 and args.format != "onnx":
        raise UserError("--int8 is made with onnxruntime's quantisation: use it with --format onnx")
    if args.check_images < 1:
        raise UserError(f"--check-images {args.check_images}: the agreement check needs at least 1 image "
                        "(1000 is usual)")
    predictor = Predictor.load(run_dir, which=args.checkpoint, device="cpu", default_thresholds=args.default_thresholds)
    if args.default_thresholds and not predictor.task.one_class:
        print(predictor.threshold_source, file=sys.stderr)
    predictor.precision = "fp32"  # the reference for the check: the checkpoint in full precision
    # the run's val images (else test, else train): what the export must agree on
    images, labels, split = sample_run_images(run_dir, predictor, ("val", "test", "train"), args.check_images, seed=0)
    out = Path(args.out) if args.out else run_dir / "export" / "model"
    path, result = write_export(predictor, args.format, out, images=images, layout=args.layout,
                                min_agreement=MIN_AGREEMENT, split=split)
    opset = f" (ONNX opset {OPSET}, dynamic batch, onnxruntime CPU)" if args.format == "onnx" else ""
    print(f"wrote {path} and {sidecar(path).name}{opset}; agreement with {predictor.checkpoint.name} "
          f"on {result['n']} {split} images: {describe_agreement(result)}, largest probability difference "
          f"{result['max_probability_difference']:.2e}")
    if args.int8:
        from resnetlab.deploy.quantize import quantize_onnx

        report = quantize_onnx(path, run_dir, predictor, images, labels)
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
