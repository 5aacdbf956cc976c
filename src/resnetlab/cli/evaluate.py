"""`resnetlab evaluate RUN [--split test | --data FOLDER]`: metrics printed and saved as JSON.

A multi-label run (data.multi_label) prints mAP, F1 and exact match at per-class thresholds instead
of top-1, and refuses the single-label options (rejection, --data class folders) in one line."""

from __future__ import annotations

from pathlib import Path

from resnetlab.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics, error analysis, TTA, calibration and rejection of a trained run")
    p.add_argument("run", help="run folder")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split of the run's data")
    p.add_argument("--data", metavar="FOLDER", help="evaluate on this folder of class folders instead")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", type=int, default=1, metavar="N",
                   help="also score N views per image (the image, its mirror where training flipped, then training "
                        "augmentations); 20 as in the GTSRB tutorial")
    p.add_argument("--tta-reduce", default="mean", choices=["mean", "max"], help="how TTA views combine")
    p.add_argument("--reject-target", type=float, default=None,
                   help="rejection thresholds reject at most this share of known-class val images (default 0.05; "
                        "single-label runs)")
    p.add_argument("--no-figures", action="store_true", help="metrics only, no PNGs")
    p.add_argument("--snapshots", action="store_true",
                   help="also score the mean probability of the run's SGDR snapshots (snapshot-K.pt)")
    p.add_argument("--default-thresholds", action="store_true",
                   help="multi-label runs: where there is no val split to refit them and thresholds.json is "
                        "missing or damaged, decide every class at probability 0.5 instead of stopping")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.data import build_data
    from resnetlab.deploy.predictor import Predictor
    from resnetlab.evaluate.evaluator import Options, evaluate_split, split_images, unseen_images
    from resnetlab import run_folder as rf
    from resnetlab.evaluate.metrics import format_table
    from resnetlab.evaluate.multilabel import format_multilabel_table, per_class_csv
    from resnetlab.run_folder import check_run_dir, read_run_config, saved_split_file

    run_dir = check_run_dir(Path(args.run))
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.tta < 1:
        raise UserError(f"--tta {args.tta}: give the number of views, 1 (none) or more, e.g. --tta 20")
    if args.reject_target is not None and not 0 < args.reject_target < 1:
        raise UserError(f"--reject-target {args.reject_target:g} must be in (0, 1), e.g. 0.05 for at most 5%")
    cfg = read_run_config(run_dir)
    multi = cfg.data.multi_label
    if multi:
        _refuse_single_label_options(args)
    # multi-label: thresholds left unread by the loader; evaluation refits them on val or reads thresholds.json
    # itself (so a damaged file is refitted rather than fatal when there is a val split)
    predictor = Predictor.load(run_dir, which=args.checkpoint, device=args.device,
                               **({"with_thresholds": False} if multi else {}))
    val = unseen = None
    if args.data:
        images, labels, name = _folder_split(Path(args.data), predictor)
    else:
        data = build_data(cfg, split_file=saved_split_file(run_dir), progress=False)
        if args.split not in data.splits:
            other = "--split " + next(iter(data.splits)) if multi else "--data FOLDER"
            raise UserError(f"the run's data has no '{args.split}' split (it has {', '.join(data.splits)}); use {other}")
        images, labels = split_images(data.splits[args.split], predictor)
        name = args.split
        # multi-label thresholds are fitted on val even when val is the split scored: predict needs them
        if "val" in data.splits and (args.split != "val" or multi):
            val = split_images(data.splits["val"], predictor)
        unseen = None if multi else unseen_images(cfg, run_dir, predictor)  # rejection is single-label only
    opts = Options(tta=args.tta, reduce=args.tta_reduce, batch_size=args.batch_size, figures=not args.no_figures,
                   reject_target=0.05 if args.reject_target is None else args.reject_target,
                   default_thresholds=args.default_thresholds)
    result = evaluate_split(run_dir, predictor, name, images, labels, opts, val=val, unseen=unseen)
    if multi:
        print(format_multilabel_table(result))
        _print_multilabel_extras(result)
    else:
        print(format_table(result, predictor.classes))
        _print_extras(result)
    if args.snapshots:
        _snapshots(run_dir, result, images, labels, name, args, predictor)
    tables = rf.confusion_csv(name)
    if multi:
        tables = per_class_csv(name) + (f", {rf.THRESHOLDS}" if val is not None and len(val[1]) else "")
    print(f"{result['images_per_s']:.0f} img/s; wrote {run_dir / rf.eval_name(name)}, {tables}"
          + ("" if args.no_figures else f" and figures in {rf.eval_figures(run_dir, name)}"))
    return 0


def _refuse_single_label_options(args) -> None:
    """One line for an option a multi-label run has no use for, saying what it has instead."""
    if args.reject_target is not None:
        raise UserError("--reject-target is for single-label runs: a multi-label run has no rejection by max softmax "
                        "or energy; each class is decided by its own threshold (thresholds.json, fitted on val) "
                        "and scored by mAP")
    if args.data:
        raise UserError(f"--data {args.data}: a folder of class folders holds one label an image; a multi-label run "
                        "is evaluated on its own splits (--split) from its CSV of label sets")


def _print_multilabel_extras(result: dict) -> None:
    print(f"thresholds: {result['threshold_source']}")
    for note in result.get("threshold_notes", [])[:10]:
        print(f"  {note}")
    if "tta" in result:
        t = result["tta"]
        print(f"TTA x{t['views']} ({t['reduce']} of sigmoids): mAP {100 * t['map_macro']:.2f}% vs "
              f"{100 * result['map_macro']:.2f}% without; exact match {100 * t['exact_match']:.2f}% "
              f"(n={t['n']}; {t['images_per_s']:.0f} image-views/s)")


def _snapshots(run_dir: Path, result: dict, images, labels, name: str, args, predictor) -> None:
    """Score the mean probability of the run's snapshot-K.pt beside the single model."""
    from resnetlab import run_folder as rf
    from resnetlab.deploy.predictor import Predictor
    from resnetlab.evaluate.evaluator import snapshot_ensemble
    from resnetlab.io import write_json

    paths = rf.snapshot_paths(run_dir)
    extra = {"with_thresholds": False} if predictor.multi_label else {}
    members = [Predictor.load(p, device=args.device, **extra) for p in paths]
    for m in members:  # scored at the thresholds the evaluation just used (fitted on val or read)
        m.thresholds = predictor.thresholds
    ens = result["snapshot_ensemble"] = snapshot_ensemble(members, images, labels, batch_size=args.batch_size)
    if predictor.multi_label:
        print(f"snapshot ensemble of {ens['members']}: mAP {100 * ens['map_macro']:.2f}% (n={ens['n']}); "
              f"{result['checkpoint']} alone {100 * result['map_macro']:.2f}%")
    else:
        print(f"snapshot ensemble of {ens['members']}: top-1 {100 * ens['top1']:.2f}%  top-5 {100 * ens['top5']:.2f}% "
              f"(n={ens['n']}); {result['checkpoint']} alone {100 * result['top1']:.2f}%")
    write_json(run_dir / rf.eval_name(name), result)


def _print_extras(result: dict) -> None:
    if "tta" in result:
        t = result["tta"]
        print(f"TTA x{t['views']} ({t['reduce']}): top-1 {100 * t['top1']:.2f}% vs {100 * result['top1']:.2f}% without "
              f"(n={t['n']}; {t['images_per_s']:.0f} image-views/s)")
    cal = result["calibration"]
    line = f"ECE {100 * cal['ece']:.2f}%"
    if "temperature" in cal:
        line += f" -> {100 * cal['ece_scaled']:.2f}% with temperature {cal['temperature']:.3f} (fitted on val)"
    print(line + f" (n={cal['n']})")
    for method, row in result["rejection"].get("methods", {}).items():
        parts = [f"known wrongly rejected {100 * row['known_rejected']:.1f}%"] if row.get("known_rejected") is not None else []
        if "unseen_rejected" in row:
            parts.append(f"unseen classes rejected {100 * row['unseen_rejected']:.1f}% (n={result['rejection']['unseen_n']})")
        print(f"rejection by {method}: " + ", ".join(parts))


def _folder_split(folder: Path, predictor):
    """uint8 images, labels and a name for a folder of class folders the model's classes cover."""
    import torch

    from resnetlab.data.decode import FileImages
    from resnetlab.data.readers.folder import list_class_folder

    if not folder.is_dir():
        raise UserError(f"--data {folder} is not a folder")
    classes, lists = list_class_folder(folder)
    unseen = [c for c in classes if c not in predictor.classes]
    if unseen:
        raise UserError(f"{folder} has classes the model never saw: {', '.join(unseen[:5])}; "
                        f"the model knows {', '.join(predictor.classes[:10])}")
    files = lists["train"]
    # decoded a chunk at a time whenever evaluation reads them: a folder of any size fits
    images, kept, bad = FileImages.readable(files.paths, size=predictor.image_size, resize=predictor.resize,
                                            channels=predictor.channels)
    for path, reason in bad:
        print(f"skipped {path}: {reason}")
    labels = torch.tensor([predictor.classes.index(classes[files.labels[i]]) for i in kept], dtype=torch.long)
    return images, labels, folder.name
