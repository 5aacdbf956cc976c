"""One optimiser step: forward in the run's precision, summed loss, backward, clipping, update.

Shared by the training loop and the LR range test, so both train exactly alike.
"""

from __future__ import annotations

import torch

from resnetlab.data.augment import normalize
from resnetlab.device import autocast
from resnetlab.train.precompute import HeadFeatures
from resnetlab.train.session import Session


def train_step(s: Session, x: torch.Tensor, y: torch.Tensor, lr: float, n_global: int, *,
               head: HeadFeatures | None = None):
    """One optimiser step at head rate ``lr``; returns (logits, summed loss) of this rank's images.

    x: uint8 (B, C, H, W) on the device, or (B, D) inputs of ``head`` in a precomputed stage; y: int64 (B,),
    soft targets (B, k), or multi-label targets (B, k) in [0, 1]; ``n_global`` images in the step over all ranks."""
    for group in s.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    with autocast(s.device, s.precision):
        if head is not None:  # x: (B, D) float, the head's inputs
            logits = head.logits(x)
        else:
            logits = s.net(normalize(x, s.mean, s.std, channels_last=s.cfg.train.channels_last))
    loss_sum = s.task.loss(logits.float(), y, weight=s.class_weights, smoothing=s.cfg.optim.label_smoothing)
    s.optimizer.zero_grad(set_to_none=True)
    # sum over this rank's images / images in the global batch, x ranks because DDP averages
    # gradients over ranks: the gradient is the global batch mean for any rank count
    _backward_step(s, loss_sum * (s.dist.world / n_global))
    return logits, loss_sum


def _backward_step(s: Session, loss: torch.Tensor) -> None:
    if s.scaler is not None:  # fp16: scale the loss so small gradients do not flush to zero
        s.scaler.scale(loss).backward()
        if s.cfg.optim.grad_clip_value or s.cfg.optim.grad_clip_norm:
            s.scaler.unscale_(s.optimizer)
            _clip(s)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        return
    loss.backward()
    _clip(s)
    s.optimizer.step()


def _clip(s: Session) -> None:
    """Each gradient element to [-grad_clip_value, grad_clip_value], then the global norm to grad_clip_norm."""
    if s.cfg.optim.grad_clip_value:
        torch.nn.utils.clip_grad_value_(s.model.parameters(), s.cfg.optim.grad_clip_value)
    if s.cfg.optim.grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.optim.grad_clip_norm)
