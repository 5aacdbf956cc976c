"""The end of a run, the same for ``fit()`` and ``resnetlab train``: one model, the test split
scored once, and the run folder completed.

The model is best.pt when the run has a validation split (chosen there, never on
training or test images), else last.pt. The test split is scored exactly once, here,
into eval_test.json; the temperature and rejection thresholds are fitted on val at
the same time (calibration.json), and with ``train.report`` the figures and
report.html are written too. ``--retrain-on-all`` then trains the same settings on
train + val (``retrain_config``).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from resnetlab import run_folder as rf
from resnetlab.config import Config, evolve
from resnetlab.data.readers.manifest import read_split_file
from resnetlab.device import inference_precision
from resnetlab.errors import UserError
from resnetlab.evaluate.evaluator import Options, evaluate_split, split_images
from resnetlab.evaluate.inference import Classifier
from resnetlab.evaluate.multilabel import settle_thresholds
from resnetlab.evaluate.report import build_report
from resnetlab.io import read_json
from resnetlab.run_folder import read_run_config
from resnetlab.checkpoint import load_checkpoint
from resnetlab.train.session import Session


def final_model(s: Session) -> Classifier:
    """The run's model as a Classifier: best.pt's weights when chosen on val, else the last weights."""
    best = s.run_dir / rf.BEST
    source = rf.LAST
    if "val" in s.loaders and best.is_file():
        state = load_checkpoint(best)
        s.model.load_state_dict(state["ema"]["module"] if state.get("ema") else state["model"])
        source = rf.BEST
    elif s.ema is not None:
        s.model.load_state_dict(s.ema.module.state_dict())
    if s.ema is not None:
        source += " (EMA weights)"
    return Classifier(
        model=s.model, classes=s.data.classes, image_size=s.data.image_size, channels=s.data.channels,
        resize=s.cfg.data.resize, mean=s.mean, std=s.std, device=s.device,
        precision=inference_precision(s.precision, s.device), augment=s.cfg.augment, source=source,
        multi_label=s.task.name == "multi_label",
    )


def finish_run(s: Session, console: Console) -> dict:
    """Score the test split once with the final model (rank 0), calibrate on val, write the report."""
    out = {"run_dir": str(s.run_dir)}
    if not s.dist.main:
        return out
    model = final_model(s)
    splits = s.data.splits
    opts = Options(batch_size=s.cfg.train.eval_batch_size, figures=s.cfg.train.report, tta=s.cfg.train.final_tta,
                   thresholds_from=_parent_thresholds(s.cfg))
    scored = s.cfg.train.final_test and "test" in splits
    val = split_images(splits["val"], model) if "val" in splits and (scored or model.multi_label) else None
    if model.multi_label and not scored:
        # predict, export and serve decide with thresholds.json: fitted on val even with no test to score
        console.print(f"thresholds: {settle_thresholds(s.run_dir, model, val, opts)[1]}")
    if not s.cfg.train.final_test:
        console.print(f"done; the test split was not looked at (train.final_test=false); model {model.source}")
    elif "test" not in splits:
        console.print(f"done; no test split in this data set, so nothing was scored on test; model {model.source}")
    else:
        images, labels = split_images(splits["test"], model)
        result = evaluate_split(s.run_dir, model, "test", images, labels, opts, val=val)
        chosen = "chosen on val" if model.source.startswith(rf.BEST) else "no val split to choose on"
        (_print_multilabel if model.multi_label else _print_single_label)(console, result, model.source, chosen)
        out["test"] = result
    if s.cfg.train.report and s.cfg.train.final_test:
        console.print(f"report: {build_report(s.run_dir)}")
    console.print(f"run folder: {s.run_dir}")
    return out


def _parent_thresholds(cfg: Config) -> Path | None:
    """A --retrain-on-all run's parent's thresholds.json (fitted on the val images this run trains on)."""
    return Path(cfg.data.split_file).parent / rf.THRESHOLDS if cfg.data.merge_val and cfg.data.split_file else None


def _print_single_label(console: Console, result: dict, source: str, chosen: str) -> None:
    console.print(
        f"test top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}  "
        f"(n={result['n']}, {source}: {chosen}; {result['images_per_s']:.0f} img/s)"
    )
    if "tta" in result:  # the same images, scored once more with views of the training augmentation
        console.print(f"test top-1 with TTA ({result['tta']['views']} views, {result['tta']['reduce']}) "
                      f"{100 * result['tta']['top1']:.2f}%  (n={result['n']})")


def _print_multilabel(console: Console, result: dict, source: str, chosen: str) -> None:
    console.print(
        f"test mAP {100 * result['map_macro']:.2f}% (macro; chance {100 * result['chance_map_macro']:.2f}%), "
        f"micro {100 * result['map_micro']:.2f}%  F1 micro {100 * result['f1_micro']:.2f}%  exact match "
        f"{100 * result['exact_match']:.2f}%  (n={result['n']}, {source}: {chosen}; {result['images_per_s']:.0f} img/s)")
    console.print(f"thresholds: {result.get('threshold_source', '')}")
    if "tta" in result:
        console.print(f"test mAP with TTA ({result['tta']['views']} views) {100 * result['tta']['map_macro']:.2f}% "
                      f"(n={result['n']})")


def retrain_config(run: Path) -> Config:
    """The finished run's settings and images, with its validation images moved into training:
    the final model once the settings are chosen (the fastai GTSRB tutorial's last step)."""
    cfg = read_run_config(run)
    if not any(split == "val" for _, _, split in read_split_file(run / rf.SPLIT)):
        raise UserError(f"{run} has no validation split to add to training: --retrain-on-all needs one")
    changes = {"data.split_file": str(run / rf.SPLIT), "data.merge_val": True, "train.name": f"{run.name}-all"}
    # a time budget plans the retrain anew (train.max_steps too): the rise goes back to the recipe's pct_start
    if cfg.train.time_budget and (run / rf.BUDGET).exists() and read_json(run / rf.BUDGET).get("pinned_rise"):
        changes["schedule.warmup_epochs"] = 0.0
    return evolve(cfg, changes, source="--retrain-on-all")
