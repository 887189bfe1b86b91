"""Each dataset → uint8 arrays (N×C×H×W), int64 labels and class names.

Downloads are checksummed (torchvision's download utilities); the official folder layouts are the
contract, so an existing ``cifar-10-batches-py`` folder is used as is. Folder-of-PNG datasets
(CINIC-10, imagefolder) are decoded once into a cached ``.npz`` per split, under a file lock, so
later trials load in about a second and N trials never decode at once.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from rayclf.config import DataConfig
from rayclf.data.catalog import DATASETS, DatasetInfo
from rayclf.data.prepare import Archive, DataError, ensure_extracted
from rayclf.storage import write_atomically


@dataclass
class Split:
    x: np.ndarray  # uint8, N×C×H×W
    y: np.ndarray  # int64, N

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> Split:
        return Split(self.x[idx], self.y[idx])


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: list[str]
    val: Split | None = None
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


def data_root(cfg: DataConfig) -> Path:
    """``data.root``, else ``$RAYCLF_DATA``, else ``~/.cache/rayclf/data``."""
    root = cfg.root or os.environ.get("RAYCLF_DATA") or Path.home() / ".cache" / "rayclf" / "data"
    return Path(root).expanduser()


# ------------------------------------------------------------------------------------- CIFAR
CIFAR10 = Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                  "c58f30108f718f92721af3b95e74349a")
CIFAR100 = Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                   "eb9058c3a382ffc7106e4002c42a8d85")


def _unpickle(path: Path, hint: str) -> dict:
    if not path.is_file():
        raise DataError(f"missing file {path}: {hint}.")
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as exc:
        raise DataError(f"file {path} is corrupt ({type(exc).__name__}: {exc}): {hint}.") from None


def _cifar_split(path: Path, label_key: str, hint: str) -> Split:
    d = _unpickle(path, hint)
    try:
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        # labels are optional (e.g. a private test batch to predict): missing ones are -1
        y = np.asarray(d[label_key] if label_key in d else [-1] * len(x), dtype=np.int64)
    except (KeyError, ValueError) as exc:
        raise DataError(f"file {path} is not in the official CIFAR layout ({exc}): {hint}.") from None
    if len(x) != len(y):
        raise DataError(f"file {path} has {len(x)} images but {len(y)} labels: {hint}.")
    return Split(x, y)


def _concat(splits: list[Split]) -> Split:
    return Split(np.concatenate([s.x for s in splits]), np.concatenate([s.y for s in splits]))


def official_folder(cfg: DataConfig, archive: Archive, folder: str) -> tuple[Path, str]:
    """The dataset's official folder (extracted, downloading the archive if needed) and a repair hint."""
    root = data_root(cfg)
    ensure_extracted(archive, root, folder, cfg.download)
    base = root / folder
    return base, f"restore it from the official archive {archive.filename} ({archive.url}) into {base}"


def _load_cifar(cfg: DataConfig, info: DatasetInfo, archive: Archive) -> Dataset:
    """A CIFAR python-version folder, its files and keys as ``data.catalog`` describes them."""
    assert info.folder and info.label_key and info.meta_file and info.classes_key
    base, hint = official_folder(cfg, archive, info.folder)
    train = _concat([_cifar_split(base / f, info.label_key, hint) for f in info.train_files])
    test = _concat([_cifar_split(base / f, info.label_key, hint) for f in info.test_files])
    classes = list(_unpickle(base / info.meta_file, hint)[info.classes_key])
    return Dataset(info.name, train, test, classes)


def load_cifar10(cfg: DataConfig) -> Dataset:
    return _load_cifar(cfg, DATASETS["cifar10"], CIFAR10)


def load_cifar100(cfg: DataConfig) -> Dataset:
    return _load_cifar(cfg, DATASETS["cifar100"], CIFAR100)


# ----------------------------------------------------------------------- folders of images (cached)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def read_image(path: Path, size: int | None) -> np.ndarray:
    """One image file as uint8 C×H×W (RGB), resized to ``size`` when given (training and ``rayclf predict``)."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    try:
        img = decode_image(torch.from_numpy(np.fromfile(path, dtype=np.uint8)), mode=ImageReadMode.RGB)
    except Exception as exc:
        raise DataError(f"cannot decode image {path} ({exc}); remove or replace the file.") from None
    if size is not None and tuple(img.shape[1:]) != (size, size):
        img = torch.nn.functional.interpolate(img[None].float(), size=(size, size), mode="bilinear",
                                              antialias=True, align_corners=False)[0]
        img = img.round().clamp(0, 255).to(torch.uint8)
    return img.numpy()


def list_classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def decode_tree(folder: Path, classes: list[str], size: int | None, cache: Path) -> Split:
    """Decode a class-per-folder tree once into ``cache`` (.npz); later calls just load the arrays."""
    if cache.is_file():
        with np.load(cache) as z:
            return Split(z["x"], z["y"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):
        if cache.is_file():  # another process decoded it while we waited
            return decode_tree(folder, classes, size, cache)
        xs, ys = [], []
        for label, name in enumerate(classes):
            sub = folder / name
            files = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_EXTS) if sub.is_dir() else []
            xs += [read_image(p, size) for p in files]
            ys += [label] * len(files)
        if not xs:
            raise DataError(f"no images found under {folder} (expected one sub-folder per class with "
                            f"{', '.join(IMAGE_EXTS)} files).")
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise DataError(f"images under {folder} have different sizes {sorted(shapes)[:3]}…; "
                            "set data.image_size to resize them.")
        split = Split(np.stack(xs), np.asarray(ys, dtype=np.int64))

        def write(fs: object, tmp: str) -> None:
            with open(tmp, "wb") as f:  # the cache is always local: a plain file object numpy can seek
                np.savez(f, x=split.x, y=split.y)

        write_atomically(str(cache), write)
        return split


CINIC10 = Archive("https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz", "CINIC-10.tar.gz",
                  "6ee4d0c996905fe93221de577967a372", flat=True)
CINIC_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_cinic10(cfg: DataConfig) -> Dataset:
    info = DATASETS["cinic10"]
    root, folder = data_root(cfg), str(info.folder)
    base = root / folder
    names = {"train": info.train_files[0], "val": info.val_files[0], "test": info.test_files[0]}
    cached = all((base / "cache" / f"{s}.npz").is_file() for s in names.values())
    if not cached and not all((base / s).is_dir() for s in names.values()):
        ensure_extracted(CINIC10, root, folder, cfg.download)
    splits = {k: decode_tree(base / s, CINIC_CLASSES, info.image_size, base / "cache" / f"{s}.npz")
              for k, s in names.items()}
    return Dataset("cinic10", splits["train"], splits["test"], CINIC_CLASSES, val=splits["val"])


def load_imagefolder(cfg: DataConfig) -> Dataset:
    """``root/{train,val|valid,test}/<class>/*.png``, or one class-per-folder tree split by seed."""
    if not cfg.root:
        raise DataError("data.name=imagefolder needs data.root: a folder with one sub-folder per class "
                        "(or train/ and test/ folders of them).")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist; point it at a class-per-folder image tree.")
    size = cfg.image_size
    cache = root / ".rayclf-cache" / f"size{size or 'native'}"
    if (root / "train").is_dir():
        classes = list_classes(root / "train")
        train = decode_tree(root / "train", classes, size, cache / "train.npz")
        val_dir = next((root / v for v in ("val", "valid") if (root / v).is_dir()), None)
        val = decode_tree(val_dir, classes, size, cache / "val.npz") if val_dir else None
        if not (root / "test").is_dir():
            raise DataError(f"{root} has train/ but no test/ folder; add one (same class sub-folders).")
        test = decode_tree(root / "test", classes, size, cache / "test.npz")
        return Dataset("imagefolder", train, test, classes, val=val)
    classes = list_classes(root)
    everything = decode_tree(root, classes, size, cache / "all.npz")
    keep, held = stratified_split(everything.y, 0.2, seed=0)
    return Dataset("imagefolder", everything.take(keep), everything.take(held), classes)


# ------------------------------------------------------------------------------------- synthetic
def load_synthetic(cfg: DataConfig) -> Dataset:
    """Deterministic and learnable, but not trivially: each class is a faint smooth colour pattern over a
    shared background, randomly shifted and scaled per image and buried in pixel noise.

    ``difficulty`` (d) makes it a study rather than a formality: every image also carries a random other
    class's pattern at d × its own strength (class overlap), is shifted by up to (1 + d)·size/8 pixels,
    mirrored with probability d/2 and has its contrast and brightness jittered by ±d/2 (nuisance
    transforms an augmentation can teach invariance to)."""
    s = cfg.synthetic
    rng = np.random.default_rng(s.seed)
    size, d = s.image_size, s.difficulty
    reps = -(-size // 4)

    def smooth(n: int) -> np.ndarray:
        return np.kron(rng.normal(size=(n, 3, 4, 4)), np.ones((1, 1, reps, reps)))[:, :, :size, :size]

    background, templates = smooth(1)[0], smooth(s.num_classes)

    def make(n: int, gen: np.random.Generator) -> Split:
        y = np.arange(n, dtype=np.int64) % s.num_classes
        gen.shuffle(y)
        other = (y + gen.integers(1, s.num_classes, size=n)) % s.num_classes  # never the image's own class
        amp = gen.uniform(0.5, 1.5, size=(n, 1, 1, 1))
        x = background + 0.6 * amp * (templates[y] + d * gen.uniform(0.5, 1.0, size=(n, 1, 1, 1)) * templates[other])
        reach = round((1 + d) * size / 8)
        shifts = gen.integers(-reach, reach + 1, size=(n, 2))
        mirror = gen.random(n) < d / 2
        for i, (dy, dx) in enumerate(shifts):  # generation only: happens once per dataset
            x[i] = np.roll(x[i], (int(dy), int(dx)), axis=(1, 2))
            if mirror[i]:
                x[i] = x[i, :, :, ::-1]
        contrast = 1 + d / 2 * gen.uniform(-1, 1, size=(n, 1, 1, 1))
        brightness = d / 2 * gen.uniform(-1, 1, size=(n, 3, 1, 1))
        x = 128 + 32 * (contrast * x + brightness) + 32 * s.noise * gen.normal(size=x.shape)
        return Split(np.clip(x, 0, 255).astype(np.uint8), y)

    train = make(s.num_train, np.random.default_rng([s.seed, 1]))
    test = make(s.num_test, np.random.default_rng([s.seed, 2]))
    return Dataset("synthetic", train, test, [f"class_{i}" for i in range(s.num_classes)])


# ------------------------------------------------------------------------------------- assembly
SOURCES: dict[str, Callable[[DataConfig], Dataset]] = {
    "synthetic": load_synthetic,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "cinic10": load_cinic10,
    "imagefolder": load_imagefolder,
}


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): ``fraction`` of every class held out, chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_held = round(len(idx) * fraction)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, computed in chunks to bound memory."""
    n, c = x.shape[:2]
    total, total_sq, count = np.zeros(c), np.zeros(c), 0
    for start in range(0, n, 8192):
        chunk = x[start:start + 8192].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += (chunk**2).sum(axis=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_dataset(cfg: DataConfig) -> Dataset:
    """The configured dataset with train/val/test splits and normalisation statistics.

    Validation comes from the dataset's own split when it has one (and ``official_val``), else a
    stratified ``val_fraction`` of train. ``train_subset`` keeps a stratified subset. Both use
    ``data.split_seed``, not the trial seed, so every seed of an arm sees the same split.
    """
    seed = cfg.split_seed
    ds = SOURCES[cfg.name](cfg)
    if cfg.train_subset is not None and cfg.train_subset < len(ds.train):
        keep, _ = stratified_split(ds.train.y, 1 - cfg.train_subset / len(ds.train), seed)
        ds.train = ds.train.take(keep)
    if cfg.validate_on == "test":  # the report's protocol: every training image trains, the test set validates
        ds.val = ds.test
    elif ds.val is None or not cfg.official_val:
        if ds.val is not None:
            ds.val = None
        if cfg.val_fraction > 0:
            keep, held = stratified_split(ds.train.y, cfg.val_fraction, seed)
            ds.train, ds.val = ds.train.take(keep), ds.train.take(held)
    ds.mean, ds.std = input_scaling(cfg.scale, ds.train.x)
    return ds


def input_scaling(scale: str, x: np.ndarray) -> tuple[Any, Any]:
    """(mean, std) in [0, 1] units for ``data.scale``: per-channel statistics (standardize), none (unit: the
    model sees x/255, as Keras studies fed it), the per-pixel training mean with std 1 (pixel_mean), or ImageNet's
    RGB statistics (imagenet: the inputs ImageNet-pretrained weights were trained on)."""
    c = x.shape[1]
    if scale == "unit":
        return (0.0,) * c, (1.0,) * c
    if scale == "imagenet":
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        if c != len(IMAGENET_DEFAULT_MEAN):
            raise DataError(f"data.scale = imagenet needs RGB images, not {c} channels; use standardize.")
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    if scale == "pixel_mean":
        total = np.zeros(x.shape[1:])
        for start in range(0, len(x), 8192):
            total += x[start:start + 8192].astype(np.float64).sum(0) / 255.0
        return (total / max(len(x), 1)).tolist(), (1.0,) * c
    return channel_stats(x)


def prepare_dataset(cfg: DataConfig) -> None:
    """Download, verify and decode once (used by the sweep driver on every node before trials start)."""
    SOURCES[cfg.name](cfg)
