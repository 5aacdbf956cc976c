"""resnetlab: train, evaluate and predict with ResNet image classifiers.

The library is importable on its own; the `resnetlab` command is a thin layer on top.

    from resnetlab import load_config, prepare, fit
    cfg = load_config("fashion-mnist-fast", ["train.epochs=2"])
    fit(prepare(cfg, run_name="mine"))

``import resnetlab`` is light: torch, torchvision and matplotlib load on first use of a
name that needs them (PEP 562 module ``__getattr__``), so ``resnetlab --help`` is quick.
"""

from __future__ import annotations

import importlib

from resnetlab._version import __version__
from resnetlab.errors import UserError

# public name -> the module that defines it
_LAZY = {
    "Config": "resnetlab.config",
    "load_config": "resnetlab.config",
    "get_model": "resnetlab.models",
    "list_models": "resnetlab.models",
    "register_model": "resnetlab.models",
    "prepare": "resnetlab.run.prepare",
    "fit": "resnetlab.run.fit",
    "Predictor": "resnetlab.deploy.predictor",
}

__all__ = ["UserError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'resnetlab' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
