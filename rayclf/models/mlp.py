"""``mlp``: a multilayer perceptron on flattened pixels (the CIFAR-100 study's baseline)."""

from __future__ import annotations

from torch import nn

from rayclf.models.layers import make_act
from rayclf.models.options import MLPOptions
from rayclf.models.registry import register_model


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
