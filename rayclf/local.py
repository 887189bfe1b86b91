"""``rayclf train`` and ``rayclf predict`` on this machine: run the engine, write its outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayclf.config import TrialConfig, UserError, build_config
from rayclf.data.loader import DeviceLoader
from rayclf.data.sources import SOURCES, Split, decode_tree, list_classes
from rayclf.models import create_model
from rayclf.results import EPOCHS, clean, write_table
from rayclf.train.checkpoint import load_checkpoint
from rayclf.train.engine import TrialResult, evaluator_for, fit, resolve_device


class ConsoleReporter:
    """One line per epoch; on a terminal also a progress bar inside each epoch (steps, img/s, time left)."""

    def __init__(self, total_epochs: int, echo=print, terminal: bool | None = None):
        import sys

        self.total, self.echo = total_epochs, echo
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.bar: Any = None
        self.task: Any = None
        self.epoch_no = 1

    def step(self, done: int, steps: int, images: int) -> None:
        if not self.terminal:
            return
        if self.bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn(f"epoch {self.epoch_no}/{self.total}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                                transient=True)
            self.bar.start()
            self.task = self.bar.add_task("steps", total=steps, rate="–")
        elapsed = self.bar.tasks[0].elapsed or 0.0
        self.bar.update(self.task, completed=done, rate=f"{images / elapsed:,.0f}" if elapsed > 0 else "–")

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def epoch(self, m: dict[str, Any], checkpoint_dir: Path | None, final: bool = False) -> None:
        self._close_bar()
        self.epoch_no = int(m["epoch"]) + 1
        val = f"val loss {m['val_loss']:.4f} acc {m['val_accuracy']:.2%} | " if "val_loss" in m else ""
        self.echo(f"epoch {m['epoch']:>3}/{self.total} | train loss {m['train_loss']:.4f} acc "
                  f"{m['train_accuracy']:.2%} | {val}lr {m['lr']:.2e} | {m['epoch_seconds']:.1f}s "
                  f"{m['images_per_sec']:,.0f} img/s")

    def should_stop(self) -> bool:
        return False

    def end(self, s: dict[str, Any]) -> None:
        self._close_bar()

        def pct(v: Any) -> str:
            return f"{v:.2%}" if isinstance(v, float) and math.isfinite(v) else "n/a"

        self.echo(f"{s['status']}: {s['epochs']} epochs, test accuracy {pct(s['test_accuracy'])}, best val "
                  f"{pct(s['best_val_accuracy'])}, {s['params']:,} parameters, {s['seconds']:.1f}s")


def train_local(cfg: TrialConfig, out: Path, resume: Path | None = None, echo=print) -> TrialResult:
    """Train one config; write ``summary.json``, ``epochs.parquet``, ``config.yaml`` and the checkpoint."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    result = fit(cfg, ConsoleReporter(cfg.total_epochs(), echo), checkpoint_dir=out / "checkpoint", resume=resume)
    write_table([{k: clean(v) for k, v in h.items()} for h in result.history], str(out / EPOCHS))
    (out / "summary.json").write_text(json.dumps({k: clean(v) for k, v in result.summary.items()}, indent=2))
    return result


def _images_in(folder: Path) -> list[Path]:
    from rayclf.data.sources import IMAGE_EXTS

    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def load_predict_split(cfg: TrialConfig, data_root: Path, split: str, classes: list[str], size: int) -> Split:
    """The images to predict: a flat folder of images (unlabelled), a class-per-folder tree, or the
    training dataset's own layout (e.g. a ``cifar-10-batches-py`` folder) under ``data_root``."""
    from rayclf.data.sources import read_image

    flat = _images_in(data_root)
    if flat:
        return Split(np.stack([read_image(p, size) for p in flat]), np.full(len(flat), -1, dtype=np.int64))
    if cfg.data.name == "imagefolder":
        folder = data_root / split if (data_root / split).is_dir() else data_root
        found = list_classes(folder)
        if found != classes:
            raise UserError(f"{folder} has classes {found[:5]}, but the model was trained on {classes[:5]}.")
        return decode_tree(folder, classes, size, folder / ".rayclf-cache" / f"predict{size}.npz")
    data_cfg = cfg.data.model_copy(update={"root": str(data_root), "download": False})
    ds = SOURCES[cfg.data.name](data_cfg)
    chosen = {"train": ds.train, "test": ds.test, "val": ds.val}.get(split)
    if chosen is None:
        raise UserError(f"dataset {cfg.data.name} has no '{split}' split; use train or test.")
    return chosen


def predict(checkpoint: Path, data_root: Path, split: str = "test", batch_size: int | None = None,
            device: str = "auto") -> tuple[np.ndarray, np.ndarray, float | None]:
    """Predicted classes (and softmax probabilities) for a split; accuracy when labels exist.

    The model is rebuilt from the checkpoint alone (no pretrained download) and evaluated through the
    trial's own path (normalisation, precision, ``train.tta``), so on the test split it reproduces the
    trial's test accuracy."""
    state = load_checkpoint(checkpoint)
    cfg = build_config(state["config"])
    info = state["data"]
    c, h, _ = info["shape"]
    if not data_root.is_dir():
        raise UserError(f"--data-root {data_root} does not exist.")
    data = load_predict_split(cfg, data_root, split, info["classes"], h)
    dev = resolve_device(device)
    model = create_model(cfg.model.without_weights(), num_classes=len(info["classes"]), in_chans=c, image_size=h)
    model.load_state_dict(state["model"])
    evaluator = evaluator_for(cfg, model, info["mean"], info["std"], dev)
    loader = DeviceLoader(data, batch_size or cfg.train.eval_batch_size, dev, shuffle=False)
    probs = [torch.softmax(evaluator.logits(xb), 1).cpu() for xb, _ in loader]
    p = torch.cat(probs).numpy()
    preds = p.argmax(1)
    labelled = data.y >= 0
    acc = float((preds[labelled] == data.y[labelled]).mean()) if labelled.any() else None
    return preds, p, acc
