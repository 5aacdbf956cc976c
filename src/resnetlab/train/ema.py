"""An exponential moving average of the weights (timm's ModelEmaV3, torchvision's --model-ema).

After every optimiser step ``ema = d * ema + (1 - d) * weights`` with the decay warmed up as
``d = min(decay, (1 + n) / (10 + n))`` for the n-th update, so the first averages do not cling to
the random initialisation (timm's warm-up; 0.999 reaches full strength after ~9,000 steps).
BatchNorm running statistics are averaged too (timm's default, torchvision's ``use_buffers=True``):
copied from the raw model they describe its activations, not the averaged weights' (with copied
statistics a Fashion-MNIST run's EMA weights scored below its raw weights at the end of one-cycle).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0
        self._pairs: tuple | None = None  # (model, its tensor lists): built at the first update, not every step

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Three multi-tensor kernels a step, not one launch per tensor (~50-300 on a GPU)."""
        d = self.current_decay()
        self.updates += 1
        self._lerp(model, 1 - d)

    @torch.no_grad()
    def lookahead(self, model: nn.Module, progress: float, every: int) -> None:
        """train.lookahead (airbench's Lookahead, every ``every`` steps): the EMA takes one step of decay
        ``decay**every * progress**3`` (``progress``: the share of the run done, so it averages more as the run
        ends) towards the weights, and the weights are set to the EMA."""
        self.updates += 1
        self._lerp(model, 1 - self.decay**every * progress**3)
        self.pull(model)

    @torch.no_grad()
    def pull(self, model: nn.Module) -> None:
        """The weights (and BatchNorm statistics) set to the EMA's: Lookahead's return to the slow weights."""
        ema_float, now_float, _, _ = self._pairs_of(model)
        torch._foreach_copy_(now_float, ema_float)

    def _lerp(self, model: nn.Module, weight: float) -> None:
        ema_float, now_float, ema_count, now_count = self._pairs_of(model)
        torch._foreach_lerp_(ema_float, now_float, weight)  # weights and BatchNorm running mean/var
        if ema_count:  # num_batches_tracked: copied, not averaged
            torch._foreach_copy_(ema_count, now_count)

    def _pairs_of(self, model: nn.Module) -> tuple:
        if self._pairs is None or self._pairs[0] is not model:
            self._pairs = (model, _pairs(self.module, model))  # parameters are updated in place, never replaced
        return self._pairs[1]

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


def _pairs(ema: nn.Module, model: nn.Module) -> tuple[list, list, list, list]:
    """(EMA, model) tensors to average (parameters, float buffers) and to copy (integer buffers)."""
    ema_float = list(ema.parameters())
    now_float = [p.detach() for p in model.parameters()]
    ema_count, now_count = [], []
    for e, n in zip(ema.buffers(), model.buffers()):
        (ema_float if e.is_floating_point() else ema_count).append(e)
        (now_float if e.is_floating_point() else now_count).append(n)
    return ema_float, now_float, ema_count, now_count
