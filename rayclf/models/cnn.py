"""``cnn``: a configurable plain conv stack — blocks of convs, pooling, dropout, then a dense head.

One config reproduces the 5-layer Keras network of the CIFAR-10 tuning study exactly
(widths 64/128/128/128, average pooling, dense 10: 375,946 parameters); others cover the
CIFAR-100 study's 32/32/32/64 … 512/512/512/1024 stacks with BN and 4096/8192-wide heads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from rayclf.model_options import ModelOptions
from rayclf.models.layers import Activation, NormPlace, Pool, check_dropout, conv_act, dense_head, make_pool
from rayclf.models.registry import register_model


class CNNOptions(ModelOptions):
    name: Literal["cnn"] = "cnn"
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1, max_length=12)
    convs_per_block: int = Field(1, ge=1, le=8)
    kernel_size: int = Field(3, ge=1, le=7)
    pool: Pool = "max"
    pool_every: int = Field(1, ge=1, description="pool after every k-th block")
    activation: Activation = "relu"
    leaky_slope: float = Field(0.1, ge=0.0, le=1.0)
    norm: NormPlace = "none"
    dropout: float | list[float] = Field(0.0, description="after each block: one rate or one per block")
    head: list[int] = Field(default_factory=list, description="hidden dense widths before the output layer")
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    global_pool: bool = Field(False, description="global average pool instead of flatten")

    @model_validator(mode="after")
    def _check(self) -> CNNOptions:
        check_dropout(self.dropout, len(self.widths), "blocks")
        return self

    def block_dropout(self) -> list[float]:
        return list(self.dropout) if isinstance(self.dropout, list) else [self.dropout] * len(self.widths)


@register_model("cnn", CNNOptions)
def build_cnn(opts: CNNOptions, num_classes: int, in_chans: int = 3, image_size: int = 32) -> nn.Module:
    layers: list[nn.Module] = []
    cin, size = in_chans, image_size
    for i, (width, rate) in enumerate(zip(opts.widths, opts.block_dropout(), strict=True)):
        for _ in range(opts.convs_per_block):
            layers += conv_act(cin, width, opts.kernel_size, opts.activation, opts.leaky_slope, opts.norm)
            cin = width
        if opts.pool != "none" and (i + 1) % opts.pool_every == 0 and size >= 2:
            layers.append(make_pool(opts.pool))
            size //= 2
        if rate > 0:
            layers.append(nn.Dropout(rate))
    if opts.global_pool:
        layers.append(nn.AdaptiveAvgPool2d(1))
        features = cin
    else:
        features = cin * size * size
    layers.append(nn.Flatten())
    layers.append(dense_head(features, opts.head, num_classes, opts.head_dropout, opts.activation, opts.leaky_slope))
    return nn.Sequential(*layers)
