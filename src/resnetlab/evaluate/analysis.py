"""Error analysis a person can look at: most incorrect images, most confused pairs, random
predictions, one image's class probabilities, and Grad-CAM of what the model looked at.

All inputs are plain tensors (uint8 images, probabilities, labels), so the figures can be
made from any evaluation; drawing is in figures.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.data.augment import normalize


def top_losses(probs: torch.Tensor, labels: torch.Tensor, k: int) -> list[int]:
    """Indices of the k images with the highest loss (-log p(true class)), highest first."""
    loss = -probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log()
    return loss.argsort(descending=True)[:k].tolist()


def confused_pairs(confusion: list[list[int]], classes: list[str], limit: int = 20) -> list[tuple[str, str, int]]:
    """(true, predicted, count) for off-diagonal cells, most frequent first."""
    pairs = [(classes[i], classes[j], n) for i, row in enumerate(confusion) for j, n in enumerate(row)
             if i != j and n > 0]
    return sorted(pairs, key=lambda p: -p[2])[:limit]


def _target_layer(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """The last module to finish whose output is still a spatial map (4-D, more than 1x1)."""
    finished: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, out: finished.append(mod) if isinstance(out, torch.Tensor)
                                     and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1 else None)
             for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in hooks:
            h.remove()
    return finished[-1]


def grad_cam(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, *, mean: torch.Tensor,
             std: torch.Tensor) -> torch.Tensor:
    """(N, H, W) in [0, 1]: Grad-CAM (Selvaraju et al. 2017) for ``classes`` at the last spatial layer:
    the layer's channels weighted by the spatial mean of the class score's gradient, ReLU, upsampled."""
    model.eval()
    x = normalize(images, mean, std, channels_last=False).float()
    layer = _target_layer(model, x[:1])
    store = {}
    handle = layer.register_forward_hook(lambda m, i, out: store.update(act=out))
    try:
        with torch.enable_grad():
            logits = model(x)
            act = store["act"]
            score = logits.gather(1, classes[:, None].to(logits.device)).sum()
            grad, = torch.autograd.grad(score, act)
    finally:
        handle.remove()
    weights = grad.mean((2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True)).detach().float()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    top = cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    return (cam / top).cpu()
