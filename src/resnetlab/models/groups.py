"""Layer groups: a model's parameters in input-to-output order, for freezing and discriminative rates.

A group is a top-level child with parameters, by its attribute name: for a
torchvision ResNet ``stem`` (conv1 + bn1), ``layer1`` ... ``layer4``, ``head`` (fc).
Single layers before the first container merge into ``stem``; the final Linear
is always ``head``. Fine-tuning gives early groups (generic edges and textures)
smaller steps than late ones (task-specific), which is fastai's ``slice(lo, hi)``.
"""

from __future__ import annotations

from torch import nn

from resnetlab.errors import UserError


def layer_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    children = [(n, c) for n, c in model.named_children() if any(True for _ in c.parameters())]
    groups: list[tuple[str, list[nn.Module]]] = []
    seen_container = False
    for i, (name, child) in enumerate(children):
        if i == len(children) - 1 and isinstance(child, nn.Linear):
            name = "head"
        elif not seen_container and not isinstance(child, (nn.Sequential, nn.ModuleList)):
            name = "stem"
        else:
            seen_container = True
        if groups and groups[-1][0] == name:
            groups[-1][1].append(child)
        else:
            groups.append((name, [child]))
    return groups


def head_module(model: nn.Module) -> nn.Module:
    """The 'head' group's Linear layer: its input is the pooled features (precomputed stages)."""
    groups = dict(layer_groups(model))
    if "head" not in groups:
        raise UserError(f"{type(model).__name__} has no final Linear layer to train on its own")
    return groups["head"][-1]


def group_names(model: nn.Module) -> list[str]:
    return [name for name, _ in layer_groups(model)]


def first_trained(model: nn.Module, train: str) -> int:
    """Index of the first group a stage trains: 'all' -> 0, 'head' -> the last, a name -> that one."""
    names = group_names(model)
    if train == "all":
        return 0
    if train in names:
        return names.index(train)
    raise UserError(f"stage train='{train}': this model has no layer group '{train}'; "
                    f"its groups are {', '.join(names)} (or 'all')")


def group_lr_scales(count: int, lr: list[float]) -> list[float]:
    """Rates for ``count`` trained groups as multiples of the highest: [hi] -> all 1; [lo, hi] ->
    geometric steps from lo/hi (first group) to 1 (the head)."""
    if len(lr) < 2 or count == 1:
        return [1.0] * count
    lo, hi = lr[0], lr[-1]
    return [(lo / hi) ** (1 - j / (count - 1)) for j in range(count)]
