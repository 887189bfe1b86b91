"""``airbench``: the speedrun net of Keller Jordan's airbench94 (CIFAR-10 to 94% in seconds on one GPU).

A 2×2 patch-whitening conv (fixed weights from the training data's patch covariance, trainable bias),
then three groups of conv → max-pool → BN → GELU → conv → BN → GELU (widths 64/256/256), a 3×3 max-pool
and a bias-free linear head scaled by 1/9. BN weights stay at 1 (only biases train), convs start as
partial identities (Dirac). The whitening needs data: before training starts the engine calls
``init_from_data`` with the uint8 training images and its normaliser. Architecture facts from airbench94
(github.com/KellerJordan/cifar10-airbench); the code is ours.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rayclf.models.hooks import Hooked
from rayclf.models.options import AirbenchOptions
from rayclf.models.registry import register_model


def _norm(width: int, momentum: float, eps: float) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(width, momentum=momentum, eps=eps)
    bn.weight.requires_grad_(False)  # fixed at 1: only the bias trains
    return bn


def _conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:cin])  # the first cin filters start as identities
    return conv


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, momentum: float, eps: float):
        super().__init__()
        self.conv1, self.pool = _conv(cin, cout), nn.MaxPool2d(2)
        self.norm1, self.conv2, self.norm2 = _norm(cout, momentum, eps), _conv(cout, cout), _norm(cout, momentum, eps)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class Airbench(Hooked, nn.Module):
    def __init__(self, opts: AirbenchOptions, num_classes: int, in_chans: int):
        super().__init__()
        k = opts.whiten_kernel
        self.opts = opts
        self.whiten = nn.Conv2d(in_chans, 2 * in_chans * k * k, k, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        w1, w2, w3 = opts.widths
        self.layers = nn.Sequential(
            nn.GELU(),
            ConvGroup(self.whiten.out_channels, w1, opts.bn_momentum, opts.bn_eps),
            ConvGroup(w1, w2, opts.bn_momentum, opts.bn_eps),
            ConvGroup(w2, w3, opts.bn_momentum, opts.bn_eps),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(w3, num_classes, bias=False)
        self._fixed = {n for n, p in self.named_parameters() if not p.requires_grad}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.whiten(x))) * self.opts.scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Whitening filters from the first ``whiten_samples`` training images (uint8, normalised here as in
        training): eigenvectors of the patch covariance scaled by 1/√(λ+ε), stacked with their negatives (so
        GELU passes both signs)."""
        x = normalize(images[: self.opts.whiten_samples]).float()
        c, k = x.shape[1], self.opts.whiten_kernel
        patches = x.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c, k, k).double()
        flat = patches.flatten(1)
        flat = flat - flat.mean(0, keepdim=True)
        cov = flat.T @ flat / len(flat)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        filters = (eigvecs.T / torch.sqrt(eigvals + self.opts.whiten_eps)[:, None]).view(-1, c, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def on_epoch_start(self, epoch: int) -> None:
        """The engine calls this before each epoch: the whitening bias trains only early on."""
        n = self.opts.whiten_bias_epochs
        if n is not None and epoch >= n:
            self.whiten.bias.requires_grad_(False)

    def fixed_parameter_names(self) -> set[str]:
        """Parameters that never train (phases must not unfreeze them)."""
        return set(self._fixed)

    def param_groups_ordered(self) -> list[list[str]]:
        names = [n for n, _ in self.named_parameters()]
        stem = [n for n in names if n.startswith("whiten.")]
        groups = [[n for n in names if n.startswith(f"layers.{i}.")] for i in (1, 2, 3)]
        return [stem, *groups, ["head.weight"]]


@register_model("airbench", AirbenchOptions)
def build_airbench(opts: AirbenchOptions, num_classes: int, in_chans: int = 3, image_size: int = 32) -> nn.Module:
    return Airbench(opts, num_classes, in_chans)
