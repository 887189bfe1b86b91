"""Residual nets: ``resnet_custom`` (the CINIC-10 study's n basic blocks with pooling and dropout between
them) and ``resnet_cifar`` (He et al.'s CIFAR ResNet v1, depth 6n+2: 20/32/44/56/110, ≈0.27 M at depth 20)."""

from __future__ import annotations

from torch import nn

from rayclf.models.hooks import Hooked
from rayclf.models.layers import make_act, make_pool
from rayclf.models.options import ResNetCifarOptions, ResNetCustomOptions
from rayclf.models.registry import register_model


def _same_conv(cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Module:
    """'same'-padded conv, by default without bias (BN follows); even kernels pad like Keras (extra right/bottom)."""
    if kernel % 2:
        return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=bias)
    pad = kernel - 1
    return nn.Sequential(nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)),
                         nn.Conv2d(cin, cout, kernel, stride, bias=bias))


class BasicBlock(nn.Module):
    """conv-BN-act, conv-BN, + shortcut (1×1 conv-BN when the shape changes), act. ``add_after_act``: conv-BN-act
    twice, then + shortcut, no act after the sum (BN and the activation after each conv, as seed 001's block)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, act: str = "relu", slope: float = 0.01,
                 bias: bool = False, shortcut_norm: bool = True, add_after_act: bool = False):
        super().__init__()
        self.add_after_act = add_after_act
        self.conv1, self.bn1 = _same_conv(cin, cout, kernel, stride, bias), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _same_conv(cout, cout, kernel, 1, bias), nn.BatchNorm2d(cout)
        self.act1, self.act2 = make_act(act, slope), make_act(act, slope)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            proj = nn.Conv2d(cin, cout, 1, stride, bias=bias)
            self.shortcut = nn.Sequential(proj, nn.BatchNorm2d(cout)) if shortcut_norm else proj

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.add_after_act:
            return self.act2(out) + self.shortcut(x)
        return self.act2(out + self.shortcut(x))


def _stem(cin: int, width: int, kernel: int = 3, act: str = "relu", bias: bool = False) -> nn.Sequential:
    return nn.Sequential(_same_conv(cin, width, kernel, 1, bias), nn.BatchNorm2d(width), make_act(act))


class Classifier(Hooked, nn.Module):
    """stem → stages → global average pool → head; ``stages`` is a ModuleList so phases can unfreeze the last K."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], features: int, num_classes: int,
                 head_dropout: float = 0.0):
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(features, num_classes))

    def forward(self, x):
        return self.head(self.pool(self.stages(self.stem(x))))

    def param_groups_ordered(self) -> list[list[str]]:
        groups = [[f"stem.{n}" for n, _ in self.stem.named_parameters()]]
        groups += [[f"stages.{i}.{n}" for n, _ in s.named_parameters()] for i, s in enumerate(self.stages)]
        return [g for g in groups if g] + [[f"head.{n}" for n, _ in self.head.named_parameters()]]


@register_model("resnet_custom", ResNetCustomOptions)
def build_resnet_custom(opts: ResNetCustomOptions, num_classes: int, in_chans: int = 3,
                        image_size: int = 32) -> nn.Module:
    stages: list[nn.Module] = []
    width, size = opts.width, image_size
    for i in range(opts.blocks):
        cout = width * 2 if (opts.widen and i > 0 and opts.pool != "none") else width
        parts: list[nn.Module] = []
        if i > 0 and opts.pool != "none" and size >= 2:  # pooling between blocks
            parts.append(make_pool(opts.pool))
            size //= 2
        parts += [BasicBlock(width, cout, opts.kernel_size, act=opts.activation,
                             add_after_act=opts.residual_add == "after_act"), nn.Dropout(opts.dropout)]
        stages.append(nn.Sequential(*parts))
        width = cout
    stem = _stem(in_chans, opts.width, opts.kernel_size, opts.activation)
    return Classifier(stem, stages, width, num_classes, opts.head_dropout)


@register_model("resnet_cifar", ResNetCifarOptions)
def build_resnet_cifar(opts: ResNetCifarOptions, num_classes: int, in_chans: int = 3,
                       image_size: int = 32) -> nn.Module:
    n = (opts.depth - 2) // 6
    stages: list[nn.Module] = []
    cin = opts.width
    for s in range(3):
        cout = opts.width * 2**s
        blocks: list[nn.Module] = [BasicBlock(cin if b == 0 else cout, cout, 3, 2 if (s > 0 and b == 0) else 1,
                                              bias=opts.conv_bias, shortcut_norm=opts.shortcut_norm)
                                   for b in range(n)]
        if opts.stack_dropout()[s] > 0:
            blocks.append(nn.Dropout(opts.stack_dropout()[s]))
        stages.append(nn.Sequential(*blocks))
        cin = cout
    return Classifier(_stem(in_chans, opts.width, bias=opts.conv_bias), stages, cin, num_classes)
