"""Training throughput: rayclf's engine vs idiomatic PyTorch (DataLoader + PIL transforms), same model.

Both sides train the same CNN with the same optimizer and batch size on the same images with random
crop (padding 4) + horizontal flip, in one process, on one device:
  * engine   — rayclf.train.engine.fit: uint8 split resident on the device, batched on-device augmentation
               (bf16 autocast and channels_last on GPU, as the engine defaults);
  * baseline — torchvision-style Dataset yielding PIL images, transforms.RandomCrop/RandomHorizontalFlip/
               ToTensor/Normalize, torch.utils.data.DataLoader with worker processes, fp32.
Images/s is taken over the training epochs after the first (warm-up). Usage:
    python -m bench.throughput [--device cpu|cuda] [--epochs 3] [--workers 2] [--out bench/results/x.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from bench.common import device_name, emit
from rayclf.config import build_config
from rayclf.data.sources import load_dataset
from rayclf.models import create_model
from rayclf.train.engine import fit

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
MODEL = {"name": "cnn", "widths": [32, 64, 128], "norm": "before", "pool": "max"}


def data_section() -> dict:
    if MINI.is_dir():
        return {"name": "cifar10", "root": str(MINI), "download": False, "val_fraction": 0.0}
    return {"name": "synthetic", "val_fraction": 0.0, "synthetic": {"num_train": 3730, "num_test": 930}}


class PILDataset(Dataset):
    """What a typical tutorial does: one PIL image per item, transforms per sample."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x.transpose(0, 2, 3, 1), y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def baseline(cfg, ds, device: torch.device, epochs: int, workers: int) -> float:
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(ds.mean, ds.std)])
    loader = DataLoader(PILDataset(ds.train.x, ds.train.y, tf), batch_size=cfg.train.batch_size, shuffle=True,
                        drop_last=True, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = create_model(cfg.model, ds.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    rates = []
    for _ in range(epochs):
        model.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    return float(np.mean(rates[1:] if len(rates) > 1 else rates))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--accuracy-epochs", type=int, default=15, help="0 skips the cifar10-mini accuracy run")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    device = torch.device(args.device)
    raw = {"data": data_section(), "model": MODEL,
           "train": {"epochs": args.epochs, "batch_size": args.batch_size, "device": args.device},
           "optim": {"name": "sgd", "lr": 0.05, "nesterov": True}, "sched": {"name": "constant"},
           "augment": {"crop": {"padding": 4}, "flip": {"p": 0.5}}}
    cfg = build_config(raw)
    ds = load_dataset(cfg.data)
    result = fit(cfg, data=ds)
    engine_rate = float(np.mean([h["images_per_sec"] for h in result.history[1:]]))
    base_rate = baseline(cfg, ds, device, args.epochs, args.workers)
    record = {
        "device": device_name(args.device),
        "cpus": torch.get_num_threads(), "torch": torch.__version__, "data": cfg.data.name,
        "train_images": len(ds.train), "batch_size": args.batch_size, "model": MODEL,
        "engine_images_per_sec": engine_rate, "baseline_images_per_sec": base_rate,
        "speedup": engine_rate / base_rate, "baseline_workers": args.workers,
    }
    if args.accuracy_epochs and cfg.data.name == "cifar10":
        acc_cfg = build_config({**raw, "data": {**raw["data"], "val_fraction": 0.1},
                                "train": {"epochs": args.accuracy_epochs, "batch_size": 128, "device": args.device},
                                "optim": {"name": "sgd", "lr": 0.05, "nesterov": True},
                                "sched": {"name": "cosine", "warmup_epochs": 1}})
        acc = fit(acc_cfg)
        record.update(accuracy_recipe=f"{args.accuracy_epochs} epochs, cnn 32/64/128 BN, SGD nesterov 0.05 cosine, "
                                      "crop+flip, batch 128", cifar10_mini_test_accuracy=acc.summary["test_accuracy"],
                      accuracy_seconds=acc.summary["seconds"])
    emit(record, args.out)


if __name__ == "__main__":
    main()
