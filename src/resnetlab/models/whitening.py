"""A frozen patch-whitening stem (airbench: Jordan, arXiv 2404.00498), for any family (``model.stem=whiten``).

A k x k convolution whose weights are fixed before training: the eigenvectors of the training images' k x k
patch covariance, each divided by the square root of its eigenvalue, and their negatives (so the GELU after
it keeps both signs). The first layer starts out decorrelating its input instead of learning to (airbench's
ablation: 35 -> 21 epochs to 94% on CIFAR-10). ``fit_whitening`` sets it from a few thousand normalised
training images; only its bias trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.errors import UserError

WHITEN_EPS = 5e-4  # added to each eigenvalue: airbench's, keeps near-zero directions from blowing up


class PatchWhitening(nn.Module):
    """(N, C, H, W) -> (N, 2 C k^2, H - k + 1, W - k + 1); the weight is a buffer (never trained, never
    unfrozen by a stage), the bias a parameter."""

    def __init__(self, in_chans: int, kernel_size: int = 2):
        super().__init__()
        width = 2 * in_chans * kernel_size**2
        self.register_buffer("weight", torch.zeros(width, in_chans, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(width))

    @property
    def out_chans(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


@torch.no_grad()
def fit_whitening(layer: PatchWhitening, images: torch.Tensor, eps: float = WHITEN_EPS, chunk: int = 256) -> None:
    """Set ``layer``'s weight from ``images``: (N, C, H, W) float, normalised as training normalises them.
    The covariance is of the raw (uncentred) patches, as airbench's, accumulated in float64 in chunks so
    5,000 CIFAR images take ~40 MB at a time, not ~500."""
    _, c, k, _ = layer.weight.shape
    dims = c * k * k
    patches = (images.shape[-2] - k + 1) * (images.shape[-1] - k + 1) * len(images)
    if images.shape[1] != c or patches < dims:
        raise UserError(f"the whitening stem needs at least {dims} {k}x{k} patches of {c}-channel images to fit its "
                        f"{dims} directions; the training split gives {max(patches, 0)}: add images or set "
                        "model.stem=conv")
    cov = torch.zeros(dims, dims, dtype=torch.float64)
    for part in images.split(chunk):
        p = part.float().cpu().unfold(2, k, 1).unfold(3, k, 1)  # (n, C, H', W', k, k)
        p = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, dims).double()  # each patch flattened as (C, k, k)
        cov += p.T @ p
    eigenvalues, eigenvectors = torch.linalg.eigh(cov / patches)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)  # largest first, as airbench orders them
    filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).reshape(dims, c, k, k)
    layer.weight.copy_(torch.cat([filters, -filters]).to(layer.weight))


def whitening_layer(model: nn.Module) -> PatchWhitening | None:
    return next((m for m in model.modules() if isinstance(m, PatchWhitening)), None)


class Whitened(nn.Module):
    """A whitening stem and GELU before ``body``, a model built for the stem's channels."""

    def __init__(self, whiten: PatchWhitening, body: nn.Module):
        super().__init__()
        self.whiten, self.act, self.body = whiten, nn.GELU(), body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.act(self.whiten(x)))


def whitened(body_builder, *, in_chans: int, kernel_size: int = 2, **kwargs) -> Whitened:
    """A model from ``body_builder(in_chans=<the stem's channels>, **kwargs)`` behind a whitening stem."""
    whiten = PatchWhitening(in_chans, kernel_size)
    return Whitened(whiten, body_builder(in_chans=whiten.out_chans, **kwargs))
