"""The optional hooks a model can give the engine, in one documented place.

The engine and the transfer-learning phases talk to every model through ``hooks(model)``; a model class
inherits ``Hooked`` and overrides only the hooks it needs, everything else keeps the neutral default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn


class ModelHooks(Protocol):
    def init_from_data(self, images: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Once before training, from the un-augmented uint8 training images (e.g. airbench's whitening)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before each epoch, ``epoch`` counted over the whole run (e.g. freeze a bias after a few epochs)."""

    def fixed_parameter_names(self) -> set[str]:
        """Parameters that never train, whatever a phase unfreezes."""

    def param_groups_ordered(self) -> list[list[str]] | None:
        """Parameter names grouped stem → stages → head for phases; None = group by top-level children."""

    def new_modules(self) -> list[nn.Module]:
        """Layers pretrained weights do not cover: the only ones ``model.init`` touches when weights are loaded."""


class Hooked:
    """Mixin with the neutral implementation of every hook in ``ModelHooks``."""

    def init_from_data(self, images: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor]) -> None:
        return None

    def on_epoch_start(self, epoch: int) -> None:
        return None

    def fixed_parameter_names(self) -> set[str]:
        return set()

    def param_groups_ordered(self) -> list[list[str]] | None:
        return None

    def new_modules(self) -> list[nn.Module]:
        return [self] if isinstance(self, nn.Module) else []


class _Plain(Hooked):
    """The hooks of a model that defines none (e.g. an ``nn.Sequential``)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def new_modules(self) -> list[nn.Module]:
        return [self.model]


def hooks(model: nn.Module) -> ModelHooks:
    return model if isinstance(model, Hooked) else _Plain(model)  # type: ignore[return-value]
