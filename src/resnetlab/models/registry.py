"""The model registry: ``@register_model`` on a builder, ``get_model(name, *, ...)`` to build.

Every builder takes ``num_classes`` and ``in_chans`` keyword-only, plus the
options its family supports (``stages``, ``filters``, ``weights``...), and
returns an ``nn.Module`` mapping (N, in_chans, H, W) images to (N, num_classes)
logits.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from resnetlab.errors import UserError
from resnetlab.models.whitening import whitened


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    description: str
    pretrained: bool  # has torchvision weight enums
    default_size: int  # px the family was designed for
    # px below which the last stride-2 conv sees a 1x1 input: useless, and PyTorch 2.14's CPU bf16
    # weight gradient for a stride-2 3x3 conv on 1x1 input returns uninitialised memory (NaN, 1e37)
    min_size: int = 1


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    *, family: str, default_size: int, pretrained: bool = False, min_size: int = 1
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[fn.__name__] = ModelEntry(
            fn.__name__, fn, family, doc[0] if doc else "", pretrained, default_size, min_size
        )
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY, key=_natural_key)


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        near = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise UserError(f"unknown model '{name}': {hint}`resnetlab models` lists them")
    return _REGISTRY[name]


def get_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    weights: str | None = None,
    **options: Any,
) -> nn.Module:
    """Build a registered model. Options a family does not take are an error, not ignored.
    ``stem="whiten"`` puts any family's model behind a frozen patch-whitening stem (models/whitening.py)."""
    entry = model_entry(name)
    accepted = inspect.signature(entry.builder).parameters
    given = {k: v for k, v in options.items() if v is not None}
    stem = given.pop("stem", None)  # None: the family's own
    if stem not in (None, "conv", "whiten"):
        raise UserError(f"model.stem={stem}: choose conv (the family's own) or whiten")
    if stem == "conv" and entry.family == "airnet":
        raise UserError(f"{name}'s whitening stem is part of it: leave model.stem unset, or choose another family")
    if stem == "whiten" and entry.family != "airnet":  # airnet has it built in
        if weights is not None:
            raise UserError("model.stem=whiten replaces the first layer pretrained weights were trained with: "
                            "train from scratch (model.weights=null) or set model.stem=conv")
        return whitened(lambda **kw: get_model(name, weights=None, **kw), in_chans=in_chans,
                        num_classes=num_classes, **given)
    for key in given:
        if key not in accepted:
            raise UserError(f"model '{name}' has no option '{key}' (it takes: {', '.join(accepted)})")
    if weights is not None and "weights" not in accepted:
        raise UserError(f"model '{name}' has no pretrained weights; use a torchvision resnet18..152")
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    if weights is not None:
        given["weights"] = weights
    return entry.builder(num_classes=num_classes, in_chans=in_chans, **given)


def _natural_key(name: str) -> tuple:
    head = name.rstrip("0123456789")
    tail = name[len(head) :]
    return (head, int(tail) if tail else 0)
