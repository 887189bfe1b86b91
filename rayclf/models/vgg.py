"""``vgg_baseline``: the VGG-style baselines of the CIFAR-10 study (blocks of two 3×3 convs + max-pool,
filters doubling per block from 32, a dense output). ``blocks: 1`` is Baseline-1, ``blocks: 3`` Baseline-2."""

from __future__ import annotations

from torch import nn

from rayclf.models.cnn import CNNOptions, build_cnn
from rayclf.models.options import VGGOptions
from rayclf.models.registry import register_model


@register_model("vgg_baseline", VGGOptions)
def build_vgg(opts: VGGOptions, num_classes: int, in_chans: int = 3, image_size: int = 32) -> nn.Module:
    cnn = CNNOptions(widths=[opts.width * 2**i for i in range(opts.blocks)], convs_per_block=opts.convs_per_block,
                     kernel_size=opts.kernel_size, pool="max", activation=opts.activation,
                     leaky_slope=opts.leaky_slope, norm=opts.norm, dropout=opts.dropout, dropout_at=opts.dropout_at,
                     head=opts.head, head_dropout=opts.head_dropout, head_dropout_at=opts.head_dropout_at)
    return build_cnn(cnn, num_classes, in_chans, image_size)
