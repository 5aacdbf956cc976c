"""resnetlab: train, evaluate and predict with ResNet image classifiers.

The library is importable on its own; the `resnetlab` command is a thin layer on top.

    from resnetlab import load_config, prepare, fit
    cfg = load_config("fashion-mnist-fast", ["train.epochs=2"])
    fit(prepare(cfg, run_name="mine"))
"""

__version__ = "0.1.0"

from resnetlab.config import Config, load_config  # noqa: E402
from resnetlab.errors import UserError  # noqa: E402
from resnetlab.models import get_model, list_models, register_model  # noqa: E402
from resnetlab.predict import Predictor  # noqa: E402
from resnetlab.session import prepare  # noqa: E402
from resnetlab.train import fit  # noqa: E402

__all__ = ["Config", "Predictor", "UserError", "fit", "get_model", "list_models", "load_config", "prepare", "register_model"]
