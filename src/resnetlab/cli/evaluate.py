"""`resnetlab evaluate RUN [--split test | --data FOLDER]`: metrics printed and saved as JSON."""

from __future__ import annotations

from pathlib import Path

import torch

from resnetlab.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5, per-class accuracy, confusion matrix of a trained run")
    p.add_argument("run", help="run folder")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split of the run's data")
    p.add_argument("--data", metavar="FOLDER", help="evaluate on this folder of class folders instead")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--snapshots", action="store_true",
                   help="also score the mean probability of the run's SGDR snapshots (snapshot-K.pt)")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.data import CachedLoader, build_data
    from resnetlab.evaluate import format_table, infer, metrics
    from resnetlab.predict import Predictor
    from resnetlab.runs import check_run_dir, read_run_config, saved_split_file, write_confusion_csv, write_json

    run_dir = check_run_dir(Path(args.run))
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    predictor = Predictor.load(run_dir, which=args.checkpoint, device=args.device)
    if args.data:
        images, labels, name = _folder_split(Path(args.data), predictor)
    else:
        data = build_data(read_run_config(run_dir), split_file=saved_split_file(run_dir), progress=False)
        if args.split not in data.splits:
            raise UserError(f"the run's data has no '{args.split}' split (it has {', '.join(data.splits)}); use --data FOLDER")
        split = data.splits[args.split]
        if split.images is None:
            images, _, _ = predictor.load_images(split.paths)
        else:
            images = split.images
        labels, name = split.labels, args.split
    loader = CachedLoader(images, labels, batch_size=args.batch_size, device=predictor.device, seed=0)
    out = infer(predictor.model, loader.epoch(0), mean=predictor.mean, std=predictor.std, device=predictor.device,
                precision=predictor.precision, channels_last=True)
    result = metrics(out.logits, out.labels, predictor.classes)
    result.update(images_per_s=out.images_per_second, checkpoint=predictor.checkpoint.name, split=name)
    if args.snapshots:
        result["snapshot_ensemble"] = _snapshot_ensemble(run_dir, images, labels, args)
        ens = result["snapshot_ensemble"]
        print(f"snapshot ensemble of {ens['members']}: top-1 {100 * ens['top1']:.2f}%  top-5 {100 * ens['top5']:.2f}% "
              f"(n={ens['n']}); {predictor.checkpoint.name} alone {100 * result['top1']:.2f}%")
    write_json(run_dir / f"eval_{name}.json", result)
    write_confusion_csv(run_dir / f"confusion_{name}.csv", result["confusion"], predictor.classes)
    print(format_table(result, predictor.classes))
    print(f"{out.images_per_second:.0f} img/s; wrote {run_dir / f'eval_{name}.json'} and confusion_{name}.csv")
    return 0


def _snapshot_ensemble(run_dir: Path, images: torch.Tensor, labels: torch.Tensor, args) -> dict:
    """Mean class probability over snapshot-K.pt (Huang et al. 2017: M models for the cost of one run)."""
    from resnetlab.data import CachedLoader
    from resnetlab.evaluate import infer, metrics
    from resnetlab.predict import Predictor

    paths = sorted(run_dir.glob("snapshot-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not paths:
        raise UserError(f"{run_dir} has no snapshot-K.pt: train with a stage of schedule sgdr and snapshots: true")
    total = None
    for path in paths:
        member = Predictor.load(path, device=args.device)
        loader = CachedLoader(images, labels, batch_size=args.batch_size, device=member.device, seed=0)
        out = infer(member.model, loader.epoch(0), mean=member.mean, std=member.std, device=member.device,
                    precision=member.precision, channels_last=True)
        probs = out.logits.float().softmax(1)
        total = probs if total is None else total + probs
    # log of the mean probability: softmax gives the mean back, so metrics() scores the ensemble
    result = metrics((total / len(paths)).clamp_min(1e-12).log(), out.labels, member.classes)
    result["members"] = [p.name for p in paths]
    return result


def _folder_split(folder: Path, predictor) -> tuple[torch.Tensor, torch.Tensor, str]:
    from resnetlab.data.folder import list_class_folder

    if not folder.is_dir():
        raise UserError(f"--data {folder} is not a folder")
    classes, lists = list_class_folder(folder)
    unseen = [c for c in classes if c not in predictor.classes]
    if unseen:
        raise UserError(f"{folder} has classes the model never saw: {', '.join(unseen[:5])}; "
                        f"the model knows {', '.join(predictor.classes[:10])}")
    files = lists["train"]
    images, kept, bad = predictor.load_images(files.paths)
    for path, reason in bad:
        print(f"skipped {path}: {reason}")
    index = {p: i for i, p in enumerate(files.paths)}
    labels = torch.tensor([predictor.classes.index(classes[files.labels[index[p]]]) for p in kept])
    return images, labels, folder.name
