"""Batched augmentation on the training device: whole-batch tensor ops, no per-sample Python, no PIL.

``Augmenter.train_batch`` turns a uint8 batch into a normalised float batch plus ``Targets``
(mixup/cutmix make soft two-label targets). Every random draw comes from one ``torch.Generator``
on the device (per-sample decisions) and one NumPy generator on the host (per-batch mixing
coefficients), both seeded and both saved in checkpoints so a resumed run continues identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rayclf.config import AugmentConfig


@dataclass
class Targets:
    """Soft targets as two labels and a per-sample weight: loss = lam·CE(y_a) + (1-lam)·CE(y_b)."""

    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: torch.Tensor  # float, per sample, weight of y_a

    @classmethod
    def hard(cls, y: torch.Tensor) -> Targets:
        return cls(y, y, torch.ones(len(y), device=y.device))


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def _chosen(n: int, p: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Per-sample Bernoulli(p) as a bool tensor."""
    return torch.rand(n, generator=g, device=device) < p


def random_crop(x: torch.Tensor, padding: int, p: float, g: torch.Generator, mode: str = "zeros") -> torch.Tensor:
    """Pad by ``padding`` and cut a random window of the original size: a padded shift per sample."""
    n, c, h, w = x.shape
    pad_mode = {"zeros": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    padded = F.pad(x, (padding,) * 4, mode=pad_mode)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device)
    keep = ~_chosen(n, p, g, x.device)
    dy, dx = torch.where(keep, padding, dy), torch.where(keep, padding, dx)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None].expand(n, c, h, w)
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :].expand(n, c, h, w)
    return _window(padded, rows, cols)


def _window(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Per-sample window: out[n, c, i, j] = padded[n, c, rows[n, c, i, j], cols[n, c, i, j]]."""
    n, c, hp, wp = padded.shape
    flat = padded.reshape(n, c, hp * wp)
    return flat.gather(2, (rows * wp + cols).reshape(n, c, -1)).reshape(rows.shape)


def flip(x: torch.Tensor, p: float, g: torch.Generator, dim: int = 3) -> torch.Tensor:
    """Mirror each sample with probability ``p`` (dim 3: horizontal, dim 2: vertical)."""
    chosen = _chosen(len(x), p, g, x.device)[:, None, None, None]
    return torch.where(chosen, x.flip(dim), x)


def affine(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Rotation (± degrees), zoom (scale range) and shift (fraction of size) in one grid_sample."""
    n, dev = len(x), x.device
    angle = torch.zeros(n, device=dev)
    scale = torch.ones(n, device=dev)
    shift = torch.zeros(n, 2, device=dev)
    if cfg.rotate.degrees > 0:
        a = _uniform(n, -cfg.rotate.degrees, cfg.rotate.degrees, g, dev) * math.pi / 180
        angle = torch.where(_chosen(n, cfg.rotate.p, g, dev), a, angle)
    if cfg.zoom.scale != (1.0, 1.0):
        s = _uniform(n, *cfg.zoom.scale, g, dev)
        scale = torch.where(_chosen(n, cfg.zoom.p, g, dev), s, scale)
    if cfg.shift.fraction > 0:
        f = cfg.shift.fraction * 2  # grid coordinates span [-1, 1]
        t = torch.stack([_uniform(n, -f, f, g, dev), _uniform(n, -f, f, g, dev)], 1)
        shift = torch.where(_chosen(n, cfg.shift.p, g, dev)[:, None], t, shift)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def brightness(x: torch.Tensor, delta: float, p: float, g: torch.Generator) -> torch.Tensor:
    """Multiply each image by a factor in [1-δ, 1+δ] (Keras' brightness_range)."""
    f = _uniform(len(x), 1 - delta, 1 + delta, g, x.device)
    f = torch.where(_chosen(len(x), p, g, x.device), f, 1.0)[:, None, None, None]
    return (x * f).clamp(0, 1)


def contrast(x: torch.Tensor, delta: float, p: float, g: torch.Generator) -> torch.Tensor:
    """Scale each image's deviation from its own mean by a factor in [1-δ, 1+δ]."""
    f = _uniform(len(x), 1 - delta, 1 + delta, g, x.device)
    f = torch.where(_chosen(len(x), p, g, x.device), f, 1.0)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * f + mean).clamp(0, 1)


def box_masks(n: int, h: int, w: int, size_h: torch.Tensor, size_w: torch.Tensor, g: torch.Generator,
              device: torch.device) -> torch.Tensor:
    """(n, 1, h, w) bool masks of one box per sample, centred uniformly and clipped to the image."""
    cy = torch.randint(0, h, (n,), generator=g, device=device)
    cx = torch.randint(0, w, (n,), generator=g, device=device)
    ys = torch.arange(h, device=device)[None, :]
    xs = torch.arange(w, device=device)[None, :]
    in_y = (ys >= (cy - size_h // 2)[:, None]) & (ys < (cy - size_h // 2 + size_h)[:, None])
    in_x = (xs >= (cx - size_w // 2)[:, None]) & (xs < (cx - size_w // 2 + size_w)[:, None])
    return (in_y[:, :, None] & in_x[:, None, :])[:, None]


def cutout(x: torch.Tensor, size: int, count: int, p: float, g: torch.Generator,
           fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Fill ``count`` squares of side ``size`` per chosen sample with ``fill``: the dataset mean, i.e. 0 after
    normalising (online), or the per-channel mean itself on [0, 1] pixels (the offline doubled copy)."""
    n, _, h, w = x.shape
    side = torch.full((n,), size, device=x.device)
    mask = torch.zeros(n, 1, h, w, dtype=torch.bool, device=x.device)
    for _ in range(count):
        mask |= box_masks(n, h, w, side, side, g, x.device)
    mask &= _chosen(n, p, g, x.device)[:, None, None, None]
    return torch.where(mask, torch.as_tensor(fill, dtype=x.dtype, device=x.device), x)


def mixup(x: torch.Tensor, y: torch.Tensor, lam: float, g: torch.Generator) -> tuple[torch.Tensor, Targets]:
    """Convex combination with a shuffled partner: lam·x + (1-lam)·x[perm]."""
    perm = torch.randperm(len(x), generator=g, device=x.device)
    mixed = lam * x + (1 - lam) * x[perm]
    return mixed, Targets(y, y[perm], torch.full((len(x),), lam, device=x.device))


def cutmix(x: torch.Tensor, y: torch.Tensor, lam: float | torch.Tensor,
           g: torch.Generator) -> tuple[torch.Tensor, Targets]:
    """Paste a box from a shuffled partner; the partner's label weight is the pasted area fraction.
    ``lam`` is one value for the batch, or one per sample (then each sample has its own box size)."""
    n, _, h, w = x.shape
    perm = torch.randperm(n, generator=g, device=x.device)
    cut = torch.sqrt(1 - torch.as_tensor(lam, dtype=torch.float32, device=x.device)).expand(n)
    side_h = torch.round(h * cut).long()
    side_w = torch.round(w * cut).long()
    mask = box_masks(n, h, w, side_h, side_w, g, x.device)
    pasted = mask.flatten(1).float().mean(1)
    return torch.where(mask, x[perm], x), Targets(y, y[perm], 1 - pasted)


def _stat(values: Any, device: torch.device) -> torch.Tensor:
    """A normalisation statistic as a broadcastable tensor: per channel (C,) or per pixel (C, H, W)."""
    t = torch.tensor(values, dtype=torch.float32, device=device)
    return t.view(1, -1, 1, 1) if t.dim() <= 1 else t.unsqueeze(0)


class Augmenter:
    """The configured pipeline for one trial: crop → flips → affine → colour → normalise → cutout → mix."""

    def __init__(self, cfg: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device, seed: int, online: bool | None = None):
        self.cfg = cfg
        self.online = (not cfg.double) if online is None else online
        self.device = device
        self.mean = _stat(mean, device)
        self.std = _stat(std, device)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.host = np.random.default_rng(seed)

    # state for checkpoints: plain tensors and ints, loadable with weights_only=True
    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "host": self.host.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.host.bit_generator.state = state["host"]

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def pixel_ops(self, x: torch.Tensor) -> torch.Tensor:
        """Geometric and colour ops on a [0, 1] float batch (also used to build the doubled set)."""
        c, g = self.cfg, self.gen
        if c.crop.padding > 0:
            x = random_crop(x, c.crop.padding, c.crop.p, g, c.crop.padding_mode)
        if c.flip.p > 0 and c.flip.mode == "random":
            x = flip(x, c.flip.p, g, dim=3)
        if c.vflip.p > 0:
            x = flip(x, c.vflip.p, g, dim=2)
        if c.rotate.degrees > 0 or c.zoom.scale != (1.0, 1.0) or c.shift.fraction > 0:
            x = affine(x, c, g)
        if c.brightness.delta > 0:
            x = brightness(x, c.brightness.delta, c.brightness.p, g)
        if c.contrast.delta > 0:
            x = contrast(x, c.contrast.delta, c.contrast.p, g)
        return x

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Targets]:
        """uint8 batch → augmented, normalised float batch and its (possibly mixed) targets."""
        c = self.cfg
        x = self.to_float(x)
        if self.online:
            x = self.pixel_ops(x)
        x = self.normalize(x)
        if self.online and c.cutout.size > 0:
            x = cutout(x, c.cutout.size, c.cutout.count, c.cutout.p, self.gen)
        return self.mix(x, y)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Targets]:
        c = self.cfg
        modes = [m for m in ("mixup", "cutmix") if getattr(c, m).alpha > 0]
        if not modes:
            return x, Targets.hard(y)
        mode = modes[0] if len(modes) == 1 else modes[int(self.host.integers(2))]
        op = getattr(c, mode)
        if self.host.random() >= op.p:
            return x, Targets.hard(y)
        if mode == "cutmix" and c.cutmix.per_sample:  # one λ (and box) per sample, as the Keras CutMix example
            lams = torch.from_numpy(self.host.beta(op.alpha, op.alpha, size=len(x))).float().to(self.device)
            return cutmix(x, y, lams, self.gen)
        lam = float(self.host.beta(op.alpha, op.alpha))
        return (mixup if mode == "mixup" else cutmix)(x, y, lam, self.gen)

    def eval_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.to_float(x))

    def doubled(self, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """One augmented uint8 copy of a split (offline mode: the copy is appended to train)."""
        out = [self.pixel_ops(self.to_float(x[i:i + batch])) for i in range(0, len(x), batch)]
        copy = torch.cat(out)
        if self.cfg.cutout.size > 0:
            copy = cutout(copy, self.cfg.cutout.size, self.cfg.cutout.count, self.cfg.cutout.p, self.gen,
                          fill=self.mean)  # holes are the mean, as online cutout's zeros after normalising
        return copy.mul(255).round_().clamp_(0, 255).to(torch.uint8)


class AlternatingFlip:
    """airbench's alternating flip, applied in place to the device-resident training images once per epoch.

    A seeded random share ``p`` of the images is mirrored in epoch 0; every later epoch mirrors each image
    iff it was not mirrored in the previous one. The state is a function of the epoch alone, so a resumed
    run lands on the same images. No per-batch work and no host sync."""

    def __init__(self, p: float, n: int, seed: int, device: torch.device):
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        self.first = torch.rand(n, generator=g, device=device) < p
        self.current = torch.zeros(n, dtype=torch.bool, device=device)

    def apply(self, x: torch.Tensor, epoch: int) -> None:
        target = self.first ^ bool(epoch % 2)
        change = (target ^ self.current).view(-1, *([1] * (x.dim() - 1)))
        x.copy_(torch.where(change, x.flip(-1), x))
        self.current = target
