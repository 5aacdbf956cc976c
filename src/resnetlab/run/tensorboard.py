"""TensorBoard event files for a run, written through fit()'s callbacks (rank 0 only).

    tensorboard --logdir runs        # every run side by side

Tags: ``step/loss`` and ``step/lr`` every optimiser step; ``epoch/train_loss``,
``epoch/train_top1``, ``epoch/val_loss``, ``epoch/val_top1``, ``epoch/val_top5``,
``epoch/images_per_s`` and ``epoch/lr`` every epoch (x axis: the epoch number); at the end
the test metrics, the confusion-matrix and top-losses figures, and the config as
hyper-parameters with the final metrics (TensorBoard's HPARAMS tab).

Importing TensorBoard takes ~1 s, so the first events are written once WRITE_AFTER_S have passed since
the run began (then as they come), or at the run's end or a stop: a short run trains without it and
writes its events at the end; a long one shows them live from its first minute on.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from resnetlab import run_folder as rf
from resnetlab.io import write_failed
from resnetlab.train.session import Session, run_config, val_score

EPOCH_TAGS = ("train_loss", "train_top1", "train_exact", "val_loss", "val_top1", "val_top5", "val_map", "val_map_micro",
              "test_loss", "test_top1", "test_top5", "test_map", "images_per_s", "lr")  # test_*: train.monitor
FIGURES = ("confusion_normalized.png", "top_losses.png")
FLUSH_EVERY = 50  # steps whose losses are read back from the device together: after each global step N * 50 - 1
WRITE_AFTER_S = 60.0  # s into the run before the first events are written (TensorBoard imported)


class TensorBoardLogger:
    """Holds one SummaryWriter on ``run/tensorboard``; its methods are fit() callbacks."""

    def __init__(self, s: Session):
        self.log_dir = s.run_dir / rf.TENSORBOARD
        # purge_step: on resume, events past the checkpoint (written before a kill) are dropped
        self.purge_step = s.state.epoch * s.steps_per_epoch
        self._writer = None
        # (step, loss tensor on the device, lr): read back FLUSH_EVERY steps at a time, so logging every
        # step does not add a host sync to every step on a GPU (the loop itself keeps its sums on the device)
        self.pending: list[tuple[int, torch.Tensor, float]] = []
        # (tag, value, step) read back but not written: held until WRITE_AFTER_S, the end or a stop
        self.held: list[tuple[str, float, int]] = []
        self.started = time.monotonic()

    @property
    def writer(self):
        """The SummaryWriter, made at the first write (WRITE_AFTER_S into the run, or its end): importing
        TensorBoard (~1 s) is not paid by a short run's epochs."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_step)
        return self._writer

    def callbacks(self) -> dict:
        return {"on_batch_end": [self._guard(self.on_batch_end)], "on_epoch_end": [self._guard(self.on_epoch_end)],
                "on_train_end": [self._guard(self.on_train_end)]}

    def _guard(self, fn):
        """A full disk or a vanished folder under the event files: one line, like every other write."""
        def call(s: Session, info: dict) -> None:
            try:
                fn(s, info)
            except OSError as e:
                raise write_failed(self.log_dir, e) from None

        return call

    def on_batch_end(self, s: Session, info: dict) -> None:
        self.pending.append((info["step"], info["loss"], info["lr"]))
        if (info["step"] + 1) % FLUSH_EVERY == 0:  # on the same steps whatever step a resume began at
            self._read_steps()
            self._write(flush=False)

    def _read_steps(self) -> None:
        if not self.pending:
            return
        losses = torch.stack([loss.float() for _, loss, _ in self.pending]).tolist()  # one device read
        for (step, _, lr), loss in zip(self.pending, losses):
            self.held += [("step/loss", loss, step), ("step/lr", lr, step)]
        self.pending.clear()

    def _write(self, *, flush: bool, now: bool = False) -> None:
        """Write the held events, once the writer is open or WRITE_AFTER_S have passed (``now``: at once)."""
        if not (now or self._writer is not None or time.monotonic() - self.started >= WRITE_AFTER_S):
            return
        if not self.held and self._writer is None:
            return  # nothing to write: no folder made for it
        for tag, value, step in self.held:
            self.writer.add_scalar(tag, value, step)
        self.held.clear()
        if flush:
            self.writer.flush()

    def write_held(self) -> None:
        """The run's end or a stop: every event read so far written and flushed (a stopped run may resume)."""
        self._read_steps()
        try:
            self._write(flush=True, now=True)
        except OSError as e:
            raise write_failed(self.log_dir, e) from None

    def on_epoch_end(self, s: Session, record: dict) -> None:
        self._read_steps()
        self.held += [(f"epoch/{tag}", record[tag], record["epoch"]) for tag in EPOCH_TAGS if tag in record]
        self._write(flush=True)

    def on_train_end(self, s: Session, result: dict) -> None:
        self.write_held()
        test = result.get("test")
        final = {f"hparam/best_{s.task.val_score_key}": max((val_score(h) for h in s.state.history),
                                                            default=float("nan"))}
        if test:
            for key in s.task.test_keys:
                self.writer.add_scalar(f"test/{key}", test[key], len(s.state.history))
            final[f"hparam/test_{s.task.score_key}"] = test[s.task.score_key]
            for name in FIGURES:
                path = rf.eval_figures(s.run_dir, "test") / name
                if path.is_file():
                    self.writer.add_image(f"test/{Path(name).stem}", _png(path), len(s.state.history),
                                          dataformats="HWC")
        self.writer.add_hparams(hparams(run_config(s)), {k: v for k, v in final.items() if v == v},
                                run_name=".")
        self.writer.close()


def hparams(config: dict) -> dict:
    """The config flattened to 'section.key' -> a number, bool or string (what add_hparams takes)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in hparams(value).items()})
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif value is not None:
            out[key] = str(value)
    return out


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
