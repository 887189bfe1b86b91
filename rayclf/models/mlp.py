"""``mlp``: a multilayer perceptron on flattened pixels (the CIFAR-100 study's baseline)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from rayclf.model_options import ModelOptions
from rayclf.models.layers import Activation, make_act
from rayclf.models.registry import register_model


class MLPOptions(ModelOptions):
    name: Literal["mlp"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [512, 256], max_length=16)
    activation: Activation = "relu"
    leaky_slope: float = Field(0.01, ge=0.0, le=1.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False


@register_model("mlp", MLPOptions)
def build_mlp(opts: MLPOptions, num_classes: int, in_chans: int = 3, image_size: int = 32) -> nn.Module:
    cin = in_chans * image_size * image_size
    layers: list[nn.Module] = [nn.Flatten()]
    for width in opts.hidden:
        layers.append(nn.Linear(cin, width))
        if opts.batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers += [make_act(opts.activation, opts.leaky_slope), nn.Dropout(opts.dropout)]
        cin = width
    layers.append(nn.Linear(cin, num_classes))
    return nn.Sequential(*layers)
