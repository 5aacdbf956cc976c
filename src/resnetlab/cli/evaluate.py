"""`resnetlab evaluate RUN [--split test | --data FOLDER]`: metrics printed and saved as JSON.

What is printed is the run's task's (evaluate/task.py): a multi-label run prints mAP, F1 and exact
match at per-class thresholds instead of top-1, and refuses the single-label options (rejection,
--data class folders) in one line.

A Hugging Face model (a folder `export --format hf` wrote, or hf-hub:ORG/NAME) has no splits of its own:
it is scored on --data, and its scores are written to --out."""

from __future__ import annotations

from pathlib import Path

from resnetlab.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics, error analysis, TTA, calibration and rejection of a trained run")
    p.add_argument("run", help="run folder; or a Hugging Face folder or hf-hub:ORG/NAME, scored on --data")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split of the run's data")
    p.add_argument("--data", metavar="FOLDER", help="evaluate on this folder of class folders instead")
    p.add_argument("--out", metavar="DIR",
                   help="a Hugging Face model's scores and figures go here (default ./eval-<model name>)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", type=int, default=1, metavar="N",
                   help="also score N views per image (the image, its mirror where training flipped, then training "
                        "augmentations); 20 as in the GTSRB tutorial")
    p.add_argument("--tta-reduce", default="mean", choices=["mean", "max"], help="how TTA views combine")
    p.add_argument("--tta-views", default="random", choices=["random", "fixed"],
                   help="random: training augmentations; fixed: airbench's 1 px shifts and mirrors, logits averaged "
                        "(--tta 2 or 6; 3 where training did not flip)")
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
    from resnetlab.deploy.hub import is_hub_model
    from resnetlab.evaluate.evaluator import split_images, unseen_images
    from resnetlab.evaluate.task import task_of_config
    from resnetlab.evaluate.trained import run_model, score_run
    from resnetlab.run_folder import check_run_dir, read_run_config, saved_split_file

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.tta < 1:
        raise UserError(f"--tta {args.tta}: give the number of views, 1 (none) or more, e.g. --tta 20")
    if args.reject_target is not None and not 0 < args.reject_target < 1:
        raise UserError(f"--reject-target {args.reject_target:g} must be in (0, 1), e.g. 0.05 for at most 5%")
    if is_hub_model(args.run):
        return _hub_model(args)
    if args.out:
        raise UserError("--out is for Hugging Face models: a run's scores are written into the run folder")
    run_dir = check_run_dir(Path(args.run))
    cfg = read_run_config(run_dir)
    task = task_of_config(cfg)
    if not task.one_class:
        _refuse_single_label_options(args)
    # what decides is fitted on val (or read from the run) by the scoring itself: a damaged thresholds.json
    # is then refitted rather than fatal when there is a val split
    model = run_model(run_dir, which=args.checkpoint, device=args.device, decisions=False)
    splits, images, unseen = {}, None, None
    if args.data:
        x, y, name = _folder_split(Path(args.data), model)
        images = (x, y)
    else:
        splits = build_data(cfg, split_file=saved_split_file(run_dir), progress=False).splits
        if args.split not in splits:
            other = "--data FOLDER" if task.one_class else "--split " + next(iter(splits))
            raise UserError(f"the run's data has no '{args.split}' split (it has {', '.join(splits)}); use {other}")
        name = args.split
        unseen = unseen_images(cfg, run_dir, model) if task.one_class else None  # rejection of unseen classes
    result = score_run(run_dir, model, splits, _options(args), name, images=images, unseen=unseen)
    _print(result, run_dir, name, model, args)
    if args.snapshots:
        _snapshots(run_dir, result, name, args, model, images or split_images(splits[name], model))
    return 0


def _options(args):
    from resnetlab.evaluate.evaluator import Options

    return Options(tta=args.tta, reduce=args.tta_reduce, views=args.tta_views, batch_size=args.batch_size,
                   figures=not args.no_figures,
                   reject_target=0.05 if args.reject_target is None else args.reject_target,
                   default_thresholds=args.default_thresholds)


def _print(result: dict, folder: Path, name: str, model, args) -> None:
    from resnetlab import run_folder as rf

    task = model.task
    print(task.table(result, model.classes))
    for line in task.detail_lines(result):
        print(line)
    print(f"{result['images_per_s']:.0f} img/s; wrote {folder / rf.eval_name(name)}, {task.tables(name, result)}"
          + ("" if args.no_figures else f" and figures in {rf.eval_figures(folder, name)}"))


def _hub_model(args) -> int:
    """A Hugging Face model scored on --data (class folders), its scores written to --out."""
    from resnetlab.deploy.predictor import Predictor
    from resnetlab.evaluate.trained import score_run
    from resnetlab.io import make_folder

    for option, given in (("--snapshots", args.snapshots), ("--split", args.split != "test")):
        if given:
            raise UserError(f"{option} needs the run folder: a Hugging Face model carries no splits or snapshots")
    if not args.data:
        raise UserError(f"{args.run} is a Hugging Face model, without the run's splits: give --data FOLDER of "
                        "class folders to score it on")
    model = Predictor.load(args.run, device=args.device, decisions=False)  # scoring fits its own
    if not model.task.one_class:
        _refuse_single_label_options(args)
    out = make_folder(Path(args.out or f"eval-{str(args.run).rstrip('/').replace(':', '/').split('/')[-1]}"))
    x, y, name = _folder_split(Path(args.data), model)
    result = score_run(out, model, {}, _options(args), name, images=(x, y))
    _print(result, out, name, model, args)
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


def _snapshots(run_dir: Path, result: dict, name: str, args, model, scored) -> None:
    """Score the mean probability of the run's snapshot-K.pt beside the single model."""
    from resnetlab import run_folder as rf
    from resnetlab.evaluate.evaluator import snapshot_ensemble, write_eval
    from resnetlab.evaluate.trained import run_model

    members = [run_model(p, device=args.device, decisions=False) for p in rf.snapshot_paths(run_dir)]
    for m in members:  # scored at the thresholds the evaluation just used (fitted on val or read)
        m.thresholds = model.thresholds
    images, labels = scored
    ens = result["snapshot_ensemble"] = snapshot_ensemble(members, images, labels, batch_size=args.batch_size)
    print(model.task.ensemble_line(ens, result))
    write_eval(run_dir, name, result)


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
