"""How a split is scored: the options `resnetlab evaluate` and the end of a run pass to the scorers
of either task (evaluator.py, multilabel_split.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Options:
    tta: int = 1  # views per image; 1 = none
    reduce: str = "mean"  # how views combine: mean or max of probabilities
    views: str = "random"  # random (training augmentations) or fixed (airbench's shifts and mirrors, logits averaged)
    reject_target: float = 0.05  # share of known-class val images rejection may cost
    batch_size: int = 256
    figures: bool = True
    default_thresholds: bool = False  # multi-label: a missing or damaged thresholds.json means 0.5, not an error
    # multi-label, no val split: the thresholds.json to take (a --retrain-on-all run: its parent run's)
    thresholds_from: Path | None = None
