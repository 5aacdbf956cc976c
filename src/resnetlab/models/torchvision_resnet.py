"""torchvision's ImageNet ResNets (7x7 stride-2 stem + max-pool), with its weight enums.

Weights are fetched exactly as torchvision fetches them, into its cache
(``$TORCH_HOME/hub/checkpoints``), so a file that is already there is used
offline. A local ``.pth``/``.safetensors`` file works too. torchvision is imported when a model is
built, not when this family registers, so a run of another family never loads it (~0.1 s of start-up beyond
torch on a 2-core CPU).
"""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from resnetlab.errors import UserError
from resnetlab.models.registry import register_model

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum


def resolve_weights(arch: str, weights: str) -> WeightsEnum:
    """'IMAGENET1K_V1', 'DEFAULT' or 'ResNet34_Weights.IMAGENET1K_V1' -> the enum member."""
    import torchvision.models

    enum = torchvision.models.get_model_weights(arch)
    short = weights.split(".")[-1]
    if weights.split(".")[0] not in (short, enum.__name__):
        raise UserError(f"weights '{weights}' are not for {arch}: use {enum.__name__}.<name>")
    try:
        return enum[short] if short != "DEFAULT" else enum.DEFAULT
    except KeyError:
        names = ", ".join(["DEFAULT"] + [w.name for w in enum])
        raise UserError(f"{arch} has no weights '{weights}'; choose one of: {names}") from None


def weights_state_dict(arch: str, weights: str) -> dict[str, torch.Tensor]:
    path = Path(weights).expanduser()
    if path.suffix in (".pth", ".pt", ".safetensors") or path.exists():
        return load_weights_file(path)
    enum = resolve_weights(arch, weights)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    try:
        # torchvision's own path: verifies the hash prefix in the file name, caches under TORCH_HOME
        return enum.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, ConnectionError) as e:
        raise UserError(
            f"cannot download {enum} ({type(e).__name__}); with no internet, put {Path(enum.url).name} "
            f"from {enum.url} at {cache}, or pass model.weights=none to train from scratch"
        ) from None
    except RuntimeError as e:  # hash mismatch or a truncated file in the cache
        raise UserError(f"{cache} is not a valid {enum} file ({e}); delete it and retry") from None


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to replace
        raise UserError(f"cannot read weights file {path}: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a resnetlab checkpoint
    if not isinstance(state, dict):
        raise UserError(f"{path} holds no state dict of tensors")
    return state


def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor], *, arch: str, source: str) -> None:
    """Load matching tensors; adapt conv1 to the input channels; leave a differing head new."""
    own = model.state_dict()
    state = dict(state)
    if "conv1.weight" in state and own["conv1.weight"].shape[1] != state["conv1.weight"].shape[1]:
        # RGB filters on grey input: their sum sees what they saw on an R=G=B image (timm does the same)
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    head = {"fc.weight", "fc.bias"}
    wrong = [k for k in own if k not in head and (k not in state or state[k].shape != own[k].shape)]
    wrong += [k for k in state if k not in own]  # e.g. ResNet-34's extra blocks offered to a ResNet-18
    if wrong:
        k = wrong[0]
        have = tuple(state[k].shape) if k in state else "missing"
        want = tuple(own[k].shape) if k in own else "not in the model"
        raise UserError(
            f"{source} does not fit {arch}: {len(wrong)} tensors differ, e.g. {k} is {have}, "
            f"{arch} has {want}; use weights made for {arch}"
        )
    for key in head:
        if key in state and state[key].shape != own[key].shape:
            del state[key]  # new class count: the new head keeps its fresh initialisation
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _build(arch: str, num_classes: int, in_chans: int, weights: str | None, zero_init_residual: bool):
    import torchvision.models

    model = torchvision.models.get_model(
        arch, weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )
    if in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if weights:
        load_pretrained(model, weights_state_dict(arch, weights), arch=arch, source=f"weights '{weights}'")
    return model


def _make(arch: str):
    def builder(
        *, num_classes: int, in_chans: int = 3, weights: str | None = None, zero_init_residual: bool = True
    ) -> nn.Module:
        return _build(arch, num_classes, in_chans, weights, zero_init_residual)

    builder.__name__ = arch
    builder.__doc__ = f"torchvision {arch}: ImageNet stem (7x7/2 conv + max-pool), for images of 64 px and up"
    return register_model(family="torchvision", default_size=224, pretrained=True, min_size=32)(builder)


resnet18 = _make("resnet18")
resnet34 = _make("resnet34")
resnet50 = _make("resnet50")
resnet101 = _make("resnet101")
resnet152 = _make("resnet152")
