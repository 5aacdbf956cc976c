"""Model registry and the ResNet families; importing this registers them all."""

from resnetlab.models import airnet, preact, small_resnet, torchvision_resnet  # noqa: F401  (registers)
from resnetlab.models.registry import ModelEntry, get_model, list_models, model_entry, register_model

__all__ = ["ModelEntry", "get_model", "list_models", "model_entry", "register_model"]
