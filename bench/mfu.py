"""ResNet-18 (CIFAR stem) training throughput and model FLOPs utilisation (MFU) in rayclf's engine.

FLOPs per training image are rayclf's own count (``rayclf.sweep.plan.flops_per_image``, the one the dry-run
estimate uses): 3 × the forward FLOPs torch's FlopCounterMode counts, 3.33 GFLOP at 32×32 for timm's
resnet18 with a 3×3 stride-1 stem and no max-pool (counting the backward pass too gives 3.329). Images/s is the
engine's own training step (device-resident data, on-device crop + flip, bf16 autocast, channels_last,
torch.compile on GPU) over the epochs after the first. MFU = FLOP/image × images/s ÷ the device's dense
bf16 peak (a table of datasheet figures below, or --peak-tflops). Usage:
    python -m bench.mfu [--images 20000] [--epochs 3] [--batch-size 512] [--set KEY=VALUE ...] [--out x.json]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch

from bench.common import device_name, emit
from rayclf.config import load_config
from rayclf.data.sources import load_dataset
from rayclf.sweep.plan import flops_per_image
from rayclf.train.engine import fit

# dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0}


def peak_tflops(name: str) -> float | None:
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the table")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    base = [
        "model.name=resnet18", "model.cifar_stem=true", "data.name=synthetic", "data.val_fraction=0",
        f"data.synthetic.num_train={args.images}", "data.synthetic.num_test=1000",
        f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", "train.checkpoint_every=0",
        f"train.compile={'true' if cuda else 'false'}", "augment.crop.padding=4", "augment.flip.p=0.5",
        "optim.name=sgd", "optim.lr=0.1", "optim.nesterov=true", "sched.name=constant",
    ]
    cfg = load_config(None, [*base, *args.overrides])
    flops = flops_per_image(cfg)
    result = fit(cfg, data=load_dataset(cfg.data))
    rates = [h["images_per_sec"] for h in result.history[1:]] or [result.history[0]["images_per_sec"]]
    rate = statistics.median(rates)
    name = device_name()
    peak = args.peak_tflops or (peak_tflops(name) if cuda else None)
    achieved = flops * rate / 1e12
    record: dict[str, Any] = {
        "device": name, "torch": torch.__version__, "model": "timm resnet18, CIFAR stem",
        "precision": "bf16 autocast" if cuda else "fp32", "compile": cfg.train.compile, "channels_last": cuda,
        "batch_size": args.batch_size, "train_images": args.images, "epochs": args.epochs,
        "gflop_per_train_image": flops / 1e9, "images_per_sec": rate, "images_per_sec_per_epoch": rates,
        "achieved_tflops": achieved, "peak_bf16_tflops": peak,
        "mfu": achieved / peak if peak else None,
    }
    emit(record, args.out)


if __name__ == "__main__":
    main()
