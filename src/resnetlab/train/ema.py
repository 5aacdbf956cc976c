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

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        for ema, now in zip(self.module.parameters(), model.parameters()):
            ema.lerp_(now.detach(), 1 - d)
        for ema, now in zip(self.module.buffers(), model.buffers()):
            if ema.is_floating_point():  # BatchNorm running mean/var: averaged like the weights they serve
                ema.lerp_(now, 1 - d)
            else:  # num_batches_tracked
                ema.copy_(now)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
