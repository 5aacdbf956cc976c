"""TrivialAugmentWide and RandAugment for whole uint8 batches on the training device.

Given a batch, torchvision's v2.TrivialAugmentWide gives every image the same op; per image
it costs a Python call an image. Here each image draws its own op and magnitude, as torchvision
applied image by image would, and each op runs once over the images that drew it with
per-image magnitudes: ~14 small batched kernels a batch. The op names and magnitude bins are
torchvision's own (``_AUGMENTATION_SPACE``), and the formulas follow
torchvision.transforms.v2.functional (uint8 in, uint8 out, the same casts); tests compare
every op with it image by image, and the draws with v2.TrivialAugmentWide's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from resnetlab.device import to_device

SPACES = {
    "trivialaugment": v2.TrivialAugmentWide._AUGMENTATION_SPACE,
    "randaugment": v2.RandAugment._AUGMENTATION_SPACE,
}
BINS = 31  # torchvision's num_magnitude_bins for both policies


def apply_policy(images: torch.Tensor, name: str, ops: int, magnitude: int,
                 generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, C, H, W) -> augmented copy. trivialaugment: one op an image at a random bin;
    randaugment: ``ops`` ops an image, each at bin ``magnitude``. Signed magnitudes flip sign
    with probability 1/2, as torchvision's do."""
    space = SPACES[name]
    names = list(space)
    n, _, h, w = images.shape
    out = images.clone()
    for _ in range(1 if name == "trivialaugment" else ops):
        op = torch.randint(len(names), (n,), generator=generator)
        bins = (torch.randint(BINS, (n,), generator=generator) if name == "trivialaugment"
                else torch.full((n,), magnitude))
        sign = torch.where(torch.rand(n, generator=generator) <= 0.5, -1.0, 1.0)
        for k, op_name in enumerate(names):
            idx = (op == k).nonzero().flatten()
            if len(idx) == 0 or op_name == "Identity":
                continue
            magnitudes_fn, signed = space[op_name]
            table = magnitudes_fn(BINS, h, w)
            # float64, as torchvision's Python-float magnitudes: nearest sampling lands on pixel
            # edges, where a float32 rounding of the warp's offset would pick the neighbour
            m = table[bins[idx]].double() * (sign[idx] if signed else 1.0) if table is not None else None
            dev_idx = to_device(idx, out.device)
            out[dev_idx] = OPS[op_name](out[dev_idx], m)  # m stays on the CPU: MPS has no float64
    return out


def _blend(x: torch.Tensor, other, ratio: torch.Tensor) -> torch.Tensor:
    """ratio * x + (1 - ratio) * other per image (ratio (N,) float64, rounded to float32 as torchvision's
    Python-float factors are), clamped and truncated to uint8 as torchvision truncates."""
    r, rest = (to_device(v.float().view(-1, 1, 1, 1), x.device) for v in (ratio, 1 - ratio))
    out = x.float().mul_(r)
    if torch.is_tensor(other):
        out.addcmul_(other, rest)  # x * r + other * (1 - r) with one rounding, as torchvision's add_(alpha=)
    return out.clamp_(0, 255).to(torch.uint8)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, floored as torchvision's uint8 kernels floor it; (N, 1, H, W) float."""
    r, g, b = x.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1).floor_()


def _saturation(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else _blend(x, _gray(x), 1 + m)


def _contrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    gray = _gray(x) if x.shape[1] == 3 else x.float()
    return _blend(x, gray.mean((1, 2, 3), keepdim=True), 1 + m)


def _sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Blend with a 3x3 smoothing (1s round a 5, / 13) inside a 1 px border, which stays as it is."""
    n, c, h, w = x.shape
    if h <= 2 or w <= 2:
        return x
    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device).div_(13).expand(c, 1, 3, 3)
    out = x.float()
    blurred = F.conv2d(out, kernel, groups=c).round_()
    inner = out[..., 1:-1, 1:-1]
    # factor 1 + m: x + (1 - factor)(blur - x)
    inner.add_((blurred - inner) * to_device((1 - (1 + m)).float().view(-1, 1, 1, 1), x.device))
    return out.clamp_(0, 255).to(torch.uint8)


def _posterize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    bits = m.long()  # the table holds whole bit counts, 8 down to 2 (TrivialAugment) or 4
    mask = to_device(((255 << (8 - bits)) & 255).to(torch.uint8).view(-1, 1, 1, 1), x.device)
    return x & mask


def _solarize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    threshold = to_device((255.0 * m).ceil_().view(-1, 1, 1, 1), x.device)  # x >= t <=> x >= ceil(t) for whole x
    return torch.where(x >= threshold, 255 - x, x)


def _warp(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp with black outside. matrix: (N, 2, 3), maps output pixel
    coordinates to input ones, both with (0, 0) at the image centre (torchvision's convention)."""
    n, c, h, w = x.shape
    xs = torch.linspace((1 - w) * 0.5, (w - 1) * 0.5, w, device=x.device)
    ys = torch.linspace((1 - h) * 0.5, (h - 1) * 0.5, h, device=x.device)
    base = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=x.device)], -1)
    theta = matrix.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], device=x.device)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(theta).view(n, h, w, 2)
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(torch.uint8)


def _affine(x: torch.Tensor, a, b, c, d, e, f) -> torch.Tensor:
    """The inverse map [[a, b, c], [d, e, f]], each a scalar or an (N,) tensor."""
    n = x.shape[0]
    rows = [torch.as_tensor(v, dtype=torch.float64).expand(n) for v in (a, b, c, d, e, f)]
    return _warp(x, to_device(torch.stack(rows, 1).view(n, 2, 3).float(), x.device))


def _shear_x(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # torchvision shears by atan(m) degrees about the top-left corner: x_in = x + m * (y + H / 2)
    return _affine(x, 1.0, m, m * x.shape[2] / 2, 0.0, 1.0, 0.0)


def _shear_y(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _affine(x, 1.0, 0.0, 0.0, m, 1.0, m * x.shape[3] / 2)


def _translate(x: torch.Tensor, m: torch.Tensor, axis: int) -> torch.Tensor:
    shift = -m.trunc()  # torchvision translates by int(magnitude) px
    return _affine(x, 1.0, 0.0, shift if axis == 0 else 0.0, 0.0, 1.0, shift if axis == 1 else 0.0)


def _rotate(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise by m degrees about the centre (the inverse map turns the other way)."""
    rad = torch.deg2rad(-m)
    cos, sin = rad.cos(), rad.sin()
    return _affine(x, cos, sin, 0.0, -sin, cos, 0.0)


OPS = {
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": lambda x, m: _translate(x, m, 0),
    "TranslateY": lambda x, m: _translate(x, m, 1),
    "Rotate": _rotate,
    "Brightness": lambda x, m: _blend(x, 0.0, 1 + m),
    "Color": _saturation,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": lambda x, m: TF.autocontrast(x),  # already per image and channel on a batch
    "Equalize": lambda x, m: TF.equalize(x),
}
