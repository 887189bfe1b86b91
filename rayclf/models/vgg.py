"""``vgg_baseline``: the VGG-style baselines of the CIFAR-10 study (blocks of two 3×3 convs + max-pool,
filters doubling per block from 32, a dense output). ``blocks: 1`` is Baseline-1, ``blocks: 3`` Baseline-2."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from rayclf.model_options import ModelOptions
from rayclf.models.cnn import CNNOptions, build_cnn
from rayclf.models.layers import Activation, HeadDropout, NormPlace, check_dropout
from rayclf.models.registry import register_model


class VGGOptions(ModelOptions):
    name: Literal["vgg_baseline"] = "vgg_baseline"
    blocks: int = Field(3, ge=1, le=5)
    width: int = Field(32, ge=1, le=1024, description="filters of the first block; doubled per block")
    convs_per_block: int = Field(2, ge=1, le=4)
    kernel_size: int = Field(3, ge=1, le=7)
    activation: Activation = "relu"
    leaky_slope: float = Field(0.01, ge=0.0, le=1.0)
    norm: NormPlace = "none"
    dropout: float | list[float] = Field(0.0, description="one rate or one per block, placed by dropout_at")
    dropout_at: Literal["block", "conv"] = Field("block", description="block: after the block's pooling; conv: "
                                                                      "after each conv's activation (and norm)")
    head: list[int] = Field(default_factory=list)
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    head_dropout_at: HeadDropout = Field("every", description=(
        "every: a dropout before each dense layer of the head; output: one, before the output layer only"))

    @model_validator(mode="after")
    def _check(self) -> VGGOptions:
        check_dropout(self.dropout, self.blocks, "blocks")  # at config time, not when the trial builds its net
        return self


@register_model("vgg_baseline", VGGOptions)
def build_vgg(opts: VGGOptions, num_classes: int, in_chans: int = 3, image_size: int = 32) -> nn.Module:
    cnn = CNNOptions(widths=[opts.width * 2**i for i in range(opts.blocks)], convs_per_block=opts.convs_per_block,
                     kernel_size=opts.kernel_size, pool="max", activation=opts.activation,
                     leaky_slope=opts.leaky_slope, norm=opts.norm, dropout=opts.dropout, dropout_at=opts.dropout_at,
                     head=opts.head, head_dropout=opts.head_dropout, head_dropout_at=opts.head_dropout_at)
    return build_cnn(cnn, num_classes, in_chans, image_size)
