"""Progressive resizing: the side training batches are resized to, epoch by epoch (train.size_start,
train.size_end, train.size_ramp). Like the LR schedules, a pure function of where the run is, so a
resumed run resizes exactly as an uninterrupted one; the loader resizes each batch on the device.
"""

from __future__ import annotations

from resnetlab.config import TrainConfig

SIZE_STEP = 8  # px: progressive sizes are multiples of this (FFCV rounds to 32 at ImageNet sizes)


def size_for_epoch(epoch: int, *, epochs: int, start: int, final: int, ramp: list[float]) -> int:
    """Progressive resizing: the training image side in px for 0-based ``epoch``.

    ``start`` px until the share ``ramp[0]`` of the run, ``final`` px from ``ramp[1]`` on, linear
    in between and rounded down to SIZE_STEP px (never below ``start``). Small images early cost
    (size / final)^2 of a full step and teach the coarse shapes; the last epochs at the final size
    let BatchNorm statistics and the classifier settle there."""
    if start >= final:
        return final
    where = epoch / max(epochs - 1, 1)  # 0 at the first epoch, 1 at the last
    lo, hi = ramp
    t = 0.0 if where <= lo else 1.0 if where >= hi else (where - lo) / (hi - lo)
    return final if t == 1.0 else max(start, int(start + t * (final - start)) // SIZE_STEP * SIZE_STEP)


def training_size(epoch: int, *, epochs: int, cfg: TrainConfig, image_size: int) -> int:
    """The side training batches are resized to in ``epoch``, or 0 when they stay at data.image_size.

    Training ends at train.size_end (default data.image_size); evaluation, predict and export always
    see data.image_size, so training a little smaller than that is how a model is tested larger
    than it was trained (Touvron et al. 2019: objects look bigger after a random resized crop)."""
    final = cfg.size_end or image_size
    size = size_for_epoch(epoch, epochs=epochs, start=cfg.size_start or final, final=final, ramp=cfg.size_ramp)
    return 0 if size == image_size else size
