"""`resnetlab push RUN_OR_HF_FOLDER ORG/NAME`: a model on the Hugging Face Hub, exported and checked first."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  HF_TOKEN=hf_... resnetlab push runs/<run> me/flowers-resnet18     # exports --format hf, checks it, uploads
  resnetlab push runs/<run>/export/hf me/flowers-resnet18 --private  # a folder `export --format hf` wrote
  resnetlab predict hf-hub:me/flowers-resnet18 photo.jpg             # then anyone loads it by name
"""


def add_parser(sub) -> None:
    p = sub.add_parser("push", help="upload a run (exported as a Hugging Face folder) or such a folder to the Hub",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run folder, or a folder `resnetlab export --format hf` wrote")
    p.add_argument("repo_id", metavar="ORG/NAME", help="the Hub model repository (made where missing)")
    p.add_argument("--private", action="store_true", help="make a new repository private")
    p.add_argument("--message", help="the commit message (default: resnetlab's version and the folder)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="a run's checkpoint to push")
    p.add_argument("--check-images", type=int, default=1000, help="validation images for the agreement check")
    p.add_argument("--license", help="the model card's license (an SPDX-style id, e.g. apache-2.0)")
    p.add_argument("--default-thresholds", action="store_true",
                   help="multi-label runs: where thresholds.json is missing or damaged, push 0.5 for every class")
    p.set_defaults(func=run)


def run(args) -> int:
    import tempfile

    from resnetlab.deploy.hub import is_hf_folder, push, read_hf_config
    from resnetlab.errors import UserError
    from resnetlab.run_folder import check_run_dir

    source = Path(args.model)
    if is_hf_folder(source):
        read_hf_config(source)  # one line now for a folder that is not resnetlab's, before the Hub is asked
        if args.license:
            raise UserError("--license is written when a run is exported: give the run, or export it again with "
                            "--format hf --license")
        url = push(args.repo_id, lambda: source, private=args.private, message=args.message)
        print(f"pushed {source} to {url}; load it with: resnetlab predict hf-hub:{args.repo_id} IMAGES")
        return 0
    run_dir = check_run_dir(source)
    with tempfile.TemporaryDirectory(prefix="resnetlab-push-") as tmp:
        def export() -> Path:
            from resnetlab.cli.export import export_run
            from resnetlab.deploy.export import describe_agreement

            done = export_run(run_dir, "hf", Path(tmp) / run_dir.name, checkpoint=args.checkpoint,
                              check_images=args.check_images, default_thresholds=args.default_thresholds,
                              license=args.license, repo_id=args.repo_id)
            print(f"exported {run_dir} ({done.predictor.checkpoint.name}); agreement on {done.result['n']} "
                  f"{done.split} images: {describe_agreement(done.result)}")
            return done.path

        url = push(args.repo_id, export, private=args.private, message=args.message)
    print(f"pushed {run_dir} to {url}; load it with: resnetlab predict hf-hub:{args.repo_id} IMAGES")
    return 0
