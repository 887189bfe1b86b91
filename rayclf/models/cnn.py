"""``cnn``: a configurable plain conv stack — blocks of convs, pooling, dropout, then a dense head.

One config reproduces the 5-layer Keras network of the CIFAR-10 tuning study exactly
(widths 64/128/128/128, average pooling, dense 10: 375,946 parameters); others cover the
CIFAR-100 study's 32/32/32/64 … 512/512/512/1024 stacks with BN and 4096/8192-wide heads.
"""

from __future__ import annotations

import torch
from torch import nn

from rayclf.models.layers import (
    conv_act,
    dense_head,
    make_pool,
)
from rayclf.models.options import CNNOptions
from rayclf.models.registry import register_model


@register_model("cnn", CNNOptions)
def build_cnn(opts: CNNOptions, num_classes: int, in_chans: int = 3, image_size: int = 32) -> nn.Module:
    layers: list[nn.Module] = []
    cin = in_chans
    blocks = zip(opts.widths, opts.block_dropout(), opts.per_block("kernel_size"), opts.per_block("stride"),
                 opts.per_block("padding"), strict=True)
    for i, (width, rate, kernel, stride, padding) in enumerate(blocks):
        for j in range(opts.convs_per_block):
            layers += conv_act(cin, width, kernel, opts.activation, opts.leaky_slope, opts.norm,
                               stride if j == 0 else 1, padding)
            cin = width
            if rate > 0 and opts.dropout_at == "conv":
                layers.append(nn.Dropout(rate))
        if opts.pool != "none" and (i + 1) % opts.pool_every == 0 and _side(layers, in_chans, image_size) >= 2:
            layers.append(make_pool(opts.pool))
        if rate > 0 and opts.dropout_at == "block":
            layers.append(nn.Dropout(rate))
    if opts.global_pool:
        layers.append(nn.AdaptiveAvgPool2d(1))
        features = cin
    else:
        features = cin * _side(layers, in_chans, image_size) ** 2
    layers.append(nn.Flatten())
    layers.append(dense_head(features, opts.head, num_classes, opts.head_dropout, opts.activation, opts.leaky_slope,
                             opts.head_dropout_at))
    return nn.Sequential(*layers)


def _side(layers: list[nn.Module], in_chans: int, image_size: int) -> int:
    """Feature-map side after ``layers`` (strides and unpadded convs make it hard to track by hand)."""
    with torch.no_grad():
        return int(nn.Sequential(*layers)(torch.zeros(1, in_chans, image_size, image_size)).shape[-1])
