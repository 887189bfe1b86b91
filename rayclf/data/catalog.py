"""What each dataset is, in one place: sizes, class counts, image size and the official files, for the loaders
(``data.sources``), the dry run's estimates and size checks (``sweep.plan``) and calibration. Plain data, no
heavy imports, so the driver can read it without loading torch or a dataset."""

from __future__ import annotations

from dataclasses import dataclass

from rayclf.config import DataConfig


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset as published. ``None``: not fixed by the dataset (an image folder's size or classes)."""

    name: str
    num_classes: int | None
    image_size: int | None  # side of the square images the models see
    train_size: int | None  # official training images
    test_size: int | None
    val_size: int | None = None  # the official validation split, where the dataset has one
    folder: str | None = None  # under data.root
    train_files: tuple[str, ...] = ()  # CIFAR pickles, or split folders of a folder-of-images dataset
    test_files: tuple[str, ...] = ()
    val_files: tuple[str, ...] = ()
    label_key: str | None = None  # the label list's key in a CIFAR pickle
    meta_file: str | None = None
    classes_key: str | None = None  # the class names' key in ``meta_file``


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 32, 50_000, 10_000, folder="cifar-10-batches-py",
                           train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
                           label_key="labels", meta_file="batches.meta", classes_key="label_names"),
    "cifar100": DatasetInfo("cifar100", 100, 32, 50_000, 10_000, folder="cifar-100-python", train_files=("train",),
                            test_files=("test",), label_key="fine_labels", meta_file="meta",
                            classes_key="fine_label_names"),
    "cinic10": DatasetInfo("cinic10", 10, 32, 90_000, 90_000, val_size=90_000, folder="cinic-10",
                           train_files=("train",), test_files=("test",), val_files=("valid",)),
    "imagefolder": DatasetInfo("imagefolder", None, None, None, None),
    "synthetic": DatasetInfo("synthetic", None, None, None, None),
}


def describe(cfg: DataConfig) -> DatasetInfo:
    """The configured dataset's description: a synthetic dataset's sizes come from its config, an image
    folder's image size from ``data.image_size``."""
    info = DATASETS[cfg.name]
    if cfg.name == "synthetic":
        s = cfg.synthetic
        return DatasetInfo("synthetic", s.num_classes, s.image_size, s.num_train, s.num_test)
    if cfg.name == "imagefolder" and cfg.image_size:
        return DatasetInfo("imagefolder", None, cfg.image_size, None, None)
    return info


def split_sizes(cfg: DataConfig, train_total: int) -> tuple[int, int]:
    """(training images, validation images) per epoch from ``train_total`` official training images, as
    ``data.sources.load_dataset`` splits them (subset, held-out fraction, official validation, test)."""
    info = describe(cfg)
    n = min(train_total, cfg.train_subset) if cfg.train_subset else train_total
    if cfg.validate_on == "test":
        return n, info.test_size or 0
    if info.val_size is not None and cfg.official_val:
        return n, info.val_size
    held = round(n * cfg.val_fraction)
    return n - held, held
