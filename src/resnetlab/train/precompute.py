"""Precomputed features for a head-only stage: ``stages: - {train: head, precompute: true}``.

While only the head trains, the frozen backbone gives every image the same pooled features
each epoch, so they are computed once (one forward pass over the training split, plus
``precompute_views`` augmented passes) and the stage trains the head, one Linear layer, on
them: a ResNet-34 head epoch on GTSRB becomes a few thousand small matrix products instead
of 39,209 backbone forward and backward passes. Epoch e of the stage uses view e mod
(views + 1), view 0 being the un-augmented images. The batches are the images' own batch
plan (same order, same steps), so the schedule and resume are those of the plain stage.

What differs from the plain stage: the backbone's BatchNorm statistics stay as they were
(as with ``train_bn: false``), and augmentation is limited to the precomputed views.
fastai's ``precompute=True`` made the same trade.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from resnetlab.data import CachedLoader
from resnetlab.data.augment import make_generator, normalize
from resnetlab.device import autocast
from resnetlab.models.groups import head_module
from resnetlab.train.session import Session, make_loader, train_augment


class HeadFeatures:
    """The head's inputs for every training image, (views + 1, N, D) float32 on the device."""

    def __init__(self, s: Session, stage: int, say: Callable[[str], None]):
        self.stage, self.start_epoch = stage, sum(st.epochs for st in s.cfg.stages[:stage])
        views = s.cfg.stages[stage].precompute_views
        split = s.data.splits["train"]
        plain = make_loader(split, s.data, s.cfg, s.device, train=False)  # in order, no augmentation
        no_mixing = dataclasses.replace(s.cfg.augment, mixup_alpha=0.0, cutmix_alpha=0.0)
        # the views flip and erase as the plain stage's epochs do (alternating sides from one view to the next)
        unmixed = train_augment(s.cfg, s.data, len(split.labels), no_mixing)
        self.labels = split.labels.to(s.device)
        self.features = torch.stack([_pooled(s, plain, None if v == 0 else (unmixed, v)) for v in range(views + 1)])
        self.train_loader, self.batch_size = s.loaders["train"], s.cfg.train.batch_size
        # the logits from the head's inputs: the head, times the model's output_scale where it has
        # one (resnet9 scales its logits by 0.125); looked up once, not every step
        self.head, self.scale = head_module(s.model), getattr(s.model, "output_scale", 1.0)
        say(f"precomputed the head's inputs for {len(self.labels)} images x {views + 1} view(s) "
                      f"({self.features.shape[-1]} features each)")

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features) * self.scale

    def loader(self, epoch: int) -> CachedLoader:
        """The stage's epoch ``epoch`` (0-based in the run): the images' batch plan over one view."""
        view = (epoch - self.start_epoch) % len(self.features)
        t = self.train_loader  # the same N, batch size, seed and limit: the same batches of the same images
        return CachedLoader(self.features[view], self.labels, batch_size=self.batch_size, device=self.labels.device,
                            seed=t.seed, shuffle=True, tail=t.tail, rank=t.rank, world=t.world,
                            sample_weights=t.sample_weights, limit=len(t))


@torch.no_grad()
def _pooled(s: Session, loader, augment) -> torch.Tensor:
    """The input of the head for every image of ``loader``, in its order; (N, D) float32."""
    captured = []
    hook = head_module(s.model).register_forward_pre_hook(lambda module, args: captured.append(args[0].float()))
    was_training = s.model.training
    s.model.eval()
    start = 0  # the loader is in order: batch i holds images start .. start + len(x) - 1
    try:
        for i, (x, _) in enumerate(loader.epoch(0)):
            if augment is not None:
                batch_augment, view = augment
                x, _ = batch_augment(x, torch.zeros(len(x), dtype=torch.long, device=x.device),
                                     make_generator(s.cfg.seed, 0x9E, view, i),
                                     index=torch.arange(start, start + len(x)), epoch=view)
            start += len(x)
            with autocast(s.device, s.precision):
                s.model(normalize(x, s.mean, s.std, channels_last=s.cfg.train.channels_last))
    finally:
        hook.remove()
        s.model.train(was_training)
    return torch.cat(captured)
