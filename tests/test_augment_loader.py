"""Device loader (each sample once per epoch, sharding) and batched augmentation semantics."""

from __future__ import annotations

import math

import pytest
import torch

from rayclf.config import AugmentConfig
from rayclf.data import augment as A
from rayclf.data.loader import DeviceLoader

CPU = torch.device("cpu")


def gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_every_sample_once_per_epoch_and_new_order():
    x = torch.arange(103, dtype=torch.uint8).view(103, 1, 1, 1).expand(103, 3, 2, 2).contiguous()
    y = torch.arange(103)
    loader = DeviceLoader((x, y), 10, CPU, shuffle=True, drop_last=False, generator=gen())
    first = torch.cat([yb for _, yb in loader])
    second = torch.cat([yb for _, yb in loader])
    assert sorted(first.tolist()) == list(range(103)) and sorted(second.tolist()) == list(range(103))
    assert first.tolist() != second.tolist()
    for xb, yb in loader:  # images travel with their labels
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)


def test_rank_shards_are_disjoint_and_equal():
    y = torch.arange(100)
    x = torch.zeros(100, 3, 2, 2, dtype=torch.uint8)
    seen = []
    for rank in range(3):
        loader = DeviceLoader((x, y), 8, CPU, shuffle=True, drop_last=True, generator=gen(5), rank=rank,
                              world_size=3)
        seen.append(torch.cat([yb for _, yb in loader]))
    assert len({len(s) for s in seen}) == 1
    union = torch.cat(seen)
    assert len(set(union.tolist())) == len(union)


def test_flip_is_a_mirror():
    x = torch.rand(6, 3, 8, 8)
    out = A.flip(x, 1.0, gen())
    assert torch.equal(out, x.flip(3))
    assert torch.equal(A.flip(x, 0.0, gen()), x)
    assert torch.equal(A.flip(x, 1.0, gen(), dim=2), x.flip(2))


def test_crop_is_a_padded_shift():
    x = torch.rand(32, 3, 8, 8) + 1.0  # no zeros inside images
    out = A.random_crop(x, 2, 1.0, gen())
    for i in range(len(x)):
        matched = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = torch.zeros_like(x[i])
                src = x[i][:, max(0, dy):8 + min(0, dy), max(0, dx):8 + min(0, dx)]
                shifted[:, max(0, -dy):8 - max(0, dy), max(0, -dx):8 - max(0, dx)] = src
                matched |= torch.equal(shifted, out[i])
        assert matched, f"sample {i} is not a padded shift"


def test_cutmix_label_weight_is_pasted_area():
    x = torch.rand(16, 3, 32, 32)
    y = torch.arange(16)
    out, t = A.cutmix(x, y, lam=0.6, g=gen(2))
    changed = (out != x).any(1).flatten(1).float().mean(1)  # pasted pixels (partners differ almost surely)
    partner_weight = 1 - t.lam
    own = t.y_b == t.y_a
    assert torch.allclose(changed[~own], partner_weight[~own], atol=1e-6)


def test_mixup_is_convex_combination():
    x = torch.rand(8, 3, 4, 4)
    y = torch.arange(8)
    out, t = A.mixup(x, y, lam=0.3, g=gen(3))
    perm = t.y_b  # labels are indices here, so y_b is the partner permutation
    assert torch.allclose(out, 0.3 * x + 0.7 * x[perm])
    assert torch.allclose(t.lam, torch.full((8,), 0.3))


ALL_OPS = {"crop": {"padding": 4}, "flip": {"p": 0.5}, "vflip": {"p": 0.5}, "rotate": {"degrees": 20},
           "zoom": {"scale": [0.8, 1.2]}, "shift": {"fraction": 0.1}, "brightness": {"delta": 0.3},
           "contrast": {"delta": 0.3}, "cutout": {"size": 8, "count": 2}}


@pytest.mark.parametrize("op", sorted(ALL_OPS))
def test_each_op_keeps_shape_dtype_range_and_is_seeded(op):
    cfg = AugmentConfig.model_validate({op: ALL_OPS[op]})
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(16) % 10
    a1 = A.Augmenter(cfg, (0.0,) * 3, (1.0,) * 3, CPU, seed=7)
    a2 = A.Augmenter(cfg, (0.0,) * 3, (1.0,) * 3, CPU, seed=7)
    out1, _ = a1.train_batch(x, y)
    out2, _ = a2.train_batch(x, y)
    assert out1.shape == x.shape and out1.dtype == torch.float32
    assert out1.min() >= 0 and out1.max() <= 1  # mean 0, std 1: normalised range is [0, 1]
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, x.float() / 255)  # it did something
    a3 = A.Augmenter(cfg, (0.0,) * 3, (1.0,) * 3, CPU, seed=8)
    assert not torch.equal(a3.train_batch(x, y)[0], out1)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixing_through_augmenter_gives_soft_targets(mode):
    cfg = AugmentConfig.model_validate({mode: {"alpha": 1.0}})
    aug = A.Augmenter(cfg, (0.5,) * 3, (0.25,) * 3, CPU, seed=0)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    _, t = aug.train_batch(x, torch.arange(8))
    assert t.lam.shape == (8,) and ((t.lam >= 0) & (t.lam <= 1)).all()
    assert not torch.equal(t.y_a, t.y_b)


def test_doubled_copy_is_uint8_and_augmented():
    cfg = AugmentConfig.model_validate({"flip": {"p": 1.0}, "double": True})
    aug = A.Augmenter(cfg, (0.5,) * 3, (0.25,) * 3, CPU, seed=0)
    assert not aug.online
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    copy = aug.doubled(x)
    assert copy.dtype == torch.uint8 and torch.equal(copy, x.flip(3))


def test_eval_batch_is_normalised_only():
    aug = A.Augmenter(AugmentConfig.model_validate(ALL_OPS), (0.5,) * 3, (0.25,) * 3, CPU, seed=0)
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    assert torch.allclose(aug.eval_batch(x), torch.full((2, 3, 4, 4), 2.0))
    assert math.isclose(float(aug.eval_batch(torch.zeros(1, 3, 1, 1, dtype=torch.uint8)).mean()), -2.0)


def test_cutout_holes_are_the_mean_online_and_in_the_offline_doubled_copy():
    """Both modes fill holes with the dataset mean: 0 once normalised (it used to be black offline)."""
    mean, std = (0.2, 0.5, 0.8), (0.25,) * 3  # uint8-exact means: 51, 127.5→128, 204
    cfg = {"cutout": {"size": 4, "count": 1}}
    x = torch.full((16, 3, 8, 8), 255, dtype=torch.uint8)  # white images: a hole cannot look like the image
    online = A.Augmenter(AugmentConfig.model_validate(cfg), mean, std, CPU, seed=0)
    y, _ = online.train_batch(x, torch.zeros(16, dtype=torch.long))
    offline = A.Augmenter(AugmentConfig.model_validate({**cfg, "double": True}), mean, std, CPU, seed=0,
                          online=True)
    copied = offline.eval_batch(offline.doubled(x))
    for batch in (y, copied):
        holes = batch.abs() < 0.01  # within uint8 rounding of the mean
        assert holes.any() and holes.all(1).sum() == holes.any(1).sum()  # every channel of a hole pixel
        assert torch.equal(holes.all(1), (batch != batch.amax()).all(1))  # everything else is still white
