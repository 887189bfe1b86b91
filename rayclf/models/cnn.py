"""``cnn``: a configurable plain conv stack — blocks of convs, pooling, dropout, then a dense head.

One config reproduces the 5-layer Keras network of the CIFAR-10 tuning study exactly
(widths 64/128/128/128, average pooling, dense 10: 375,946 parameters); others cover the
CIFAR-100 study's 32/32/32/64 … 512/512/512/1024 stacks with BN and 4096/8192-wide heads.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from rayclf.model_options import ModelOptions
from rayclf.models.layers import (
    Activation,
    HeadDropout,
    NormPlace,
    Padding,
    Pool,
    check_dropout,
    conv_act,
    dense_head,
    make_pool,
)
from rayclf.models.registry import register_model


class CNNOptions(ModelOptions):
    name: Literal["cnn"] = "cnn"
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1, max_length=12)
    convs_per_block: int = Field(1, ge=1, le=8)
    kernel_size: int | list[int] = Field(3, description="one size, or one per block (e.g. [5, 3, 3, 3])")
    stride: int | list[int] = Field(1, description="of each block's first conv: one, or one per block")
    padding: Padding | list[Padding] = Field("same", description="same | valid (none): one, or one per block")
    pool: Pool = "max"
    pool_every: int = Field(1, ge=1, description="pool after every k-th block")
    activation: Activation = "relu"
    leaky_slope: float = Field(0.1, ge=0.0, le=1.0)
    norm: NormPlace = "none"
    dropout: float | list[float] = Field(0.0, description="one rate or one per block, placed by dropout_at")
    dropout_at: Literal["block", "conv"] = Field("block", description="block: after the block's pooling; conv: "
                                                                      "after each conv's activation (and norm)")
    head: list[int] = Field(default_factory=list, description="hidden dense widths before the output layer")
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    head_dropout_at: HeadDropout = Field("every", description=(
        "every: a dropout before each dense layer of the head; output: one, before the output layer only"))
    global_pool: bool = Field(False, description="global average pool instead of flatten")

    @model_validator(mode="after")
    def _check(self) -> CNNOptions:
        check_dropout(self.dropout, len(self.widths), "blocks")
        for key, lo, hi in (("kernel_size", 1, 7), ("stride", 1, 4)):
            values = self.per_block(key)
            if len(values) != len(self.widths) or any(not lo <= v <= hi for v in values):
                raise ValueError(f"{key} must be one value or one per block ({len(self.widths)}), each in {lo}..{hi}")
        if len(self.per_block("padding")) != len(self.widths):
            raise ValueError(f"padding must be one value or one per block ({len(self.widths)})")
        return self

    def per_block(self, key: str) -> list:
        """A per-block option as one value per block (a single value repeats)."""
        value = getattr(self, key)
        return list(value) if isinstance(value, list) else [value] * len(self.widths)

    def block_dropout(self) -> list[float]:
        return self.per_block("dropout")


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
