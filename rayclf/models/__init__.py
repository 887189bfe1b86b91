"""Model families; importing this package registers them all."""

from rayclf.models import airbench, cnn, mlp, resnet, timm_models, vgg  # noqa: F401
from rayclf.models.registry import count_params, create_model, list_models

__all__ = ["count_params", "create_model", "list_models"]
