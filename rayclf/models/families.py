"""Importing this module registers every model family's builder (and, through them, their options)."""

from rayclf.models import airbench, cnn, mlp, resnet, timm_models, vgg  # noqa: F401
