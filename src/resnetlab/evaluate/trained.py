"""A trained run, for everything that uses one: its model (``run_model``) and its splits scored
(``score_run``). The end of a run, `resnetlab evaluate`, predict, export and serve all come here,
so each picks the same checkpoint and weights, and fits what decides on the same images.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from resnetlab.checkpoint import load_checkpoint, load_model_state
from resnetlab.config import AugmentConfig
from resnetlab.device import inference_precision, select_device
from resnetlab.evaluate.evaluator import evaluate_split, split_images
from resnetlab.evaluate.inference import Classifier
from resnetlab.evaluate.multilabel_split import settle_thresholds
from resnetlab.evaluate.options import Options
from resnetlab.evaluate.task import task_named
from resnetlab.models import get_model
from resnetlab.run_folder import find_checkpoint


def run_model(path: str | Path, *, which: str = "best", device: str | torch.device = "auto",
              decisions: bool = True, default_thresholds: bool = False, model: nn.Module | None = None,
              cls: type[Classifier] = Classifier) -> Classifier:
    """The model of a run folder, or of one checkpoint file, as a ``cls``: best.pt when the run chose
    one on val (``which="last"``: last.pt), else last.pt; the averaged weights where the run kept an
    EMA. ``decisions``: with what it decides by read from the run (calibration.json, or
    thresholds.json: ``default_thresholds`` takes 0.5 for a missing or damaged one); scoring fits its
    own and leaves them unread. ``model``: the module to load the weights into (the session's own at
    the end of training), else one is built from the checkpoint's model name and options."""
    path = Path(path)
    ckpt_path = find_checkpoint(path, which) if path.is_dir() else path
    state = load_checkpoint(ckpt_path)
    ema = bool(state.get("ema"))
    if ema:  # trained with train.ema_decay: the averaged weights are the model
        state = {**state, "model": state["ema"]["module"]}
    if model is None:  # in the layout it trained in: on a CPU, NCHW weights with NHWC inputs infer at ~half speed
        model = get_model(state["model_name"], num_classes=state["num_classes"], in_chans=state["in_chans"],
                          **{k: v for k, v in state["model_options"].items() if v is not None})
        if state["config"]["train"].get("channels_last", True):
            model = model.to(memory_format=torch.channels_last)
    load_model_state(model, state, path=ckpt_path, expected="the model it names")
    dev = select_device(device) if isinstance(device, str) else device
    cfg, pre, classes = state["config"], state["preprocess"], list(state["classes"])
    task = task_named(state.get("task"))  # older checkpoints have none: single-label
    decided = task.read_decision(ckpt_path.parent, classes, default_thresholds=default_thresholds) if decisions else {}
    known = {f.name for f in fields(AugmentConfig)}
    return cls(
        model=model.to(dev).eval(), classes=classes, image_size=pre["image_size"], channels=pre["channels"],
        resize=cfg["data"]["resize"], mean=torch.tensor(pre["mean"], device=dev),
        std=torch.tensor(pre["std"], device=dev), device=dev,
        precision=inference_precision(cfg["train"]["precision"], dev),
        augment=AugmentConfig(**{k: v for k, v in cfg.get("augment", {}).items() if k in known}),
        task=task, source=ckpt_path.name + (" (EMA weights)" if ema else ""), checkpoint=ckpt_path,
        model_name=state["model_name"], model_options=dict(state["model_options"]), **decided,
    )


def score_run(run_dir: Path, model: Classifier, splits: dict, opts: Options, split: str | None = "test", *,
              images: tuple[torch.Tensor, torch.Tensor] | None = None,
              unseen: torch.Tensor | None = None) -> dict | None:
    """Score ``split`` of a run once, and fit what the model decides with on the run's val split at the
    same time: temperature and rejection thresholds (calibration.json) when another split is scored, a
    multi-label run's thresholds (thresholds.json) whenever val is there, even when val is what is
    scored (predict, export and serve decide with them). ``split=None``: nothing scored, the
    thresholds still settled. ``images``: (images, labels) scored under the name ``split`` instead of
    the run's own split, fitting nothing on val. ``unseen``: images of classes the run left out, to
    measure rejection. Returns the split's result (eval_<split>.json), or None."""
    fit = images is None and "val" in splits and (split not in (None, "val") or model.task.decision_required)
    val = split_images(splits["val"], model) if fit else None
    if split is None:
        if model.task.decision_required:
            settle_thresholds(run_dir, model, val, opts)
        return None
    x, y = images if images is not None else split_images(splits[split], model)
    return evaluate_split(run_dir, model, split, x, y, opts, val=val, unseen=unseen)
