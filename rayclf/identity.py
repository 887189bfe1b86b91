"""What identifies a trial and an arm: the resolved settings that can change what is learned, and nothing else.

The rule is written here once. Every option of the trial config has a decision in ``RULES``: ``IN`` (it can
change the trained model or its measured values, so it is part of the identity), ``OUT`` (where or how often:
paths, download flags, checkpoint cadence, evaluation chunking, device placement and kernels; it never enters
the identity) or ``DATA`` (where the data lives: the dataset is identified by what it is instead, see
``data_identity``). Values enter resolved: an unset value and the value it resolves to (SGD's momentum None and
0.9) are one identity; a value the run ignores (momentum under Adam) is dropped. The world size (data-parallel
workers per trial) is part of it, since ``train.batch_size`` is per rank.

An identity is the hash of the model family's name, the compat, and the identity values that differ from that
family's defaults under that compat (so a release that adds an option with a default changes no id), with
``IDENTITY_VERSION`` and the semantics version.
``IDENTITY_VERSION`` is recorded in each sweep directory; a directory written under another (older) version
keeps computing its ids the way it was written (``trial_id(..., version=1)``), so nothing in it is re-keyed.

Version 1 (rayclf before this module): every non-default value of the config, paths, download flag, checkpoint
cadence, eval batch size and device included, world size left out, values as spelled (no resolution).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from rayclf.config import SEMANTICS_VERSION, TrialConfig, build_config, flatten

IDENTITY_VERSION = 2
LEGACY_VERSION = 1  # the implicit version of every sweep directory written before the store recorded one
VERSIONS = (LEGACY_VERSION, IDENTITY_VERSION)

Decision = Literal["in", "out", "data"]
IN: Decision = "in"
OUT: Decision = "out"
DATA: Decision = "data"


def _each(section: str, names: str, decision: Decision, why: str) -> dict[str, tuple[Decision, str]]:
    return {f"{section}.{n}": (decision, why) for n in names.split()}


# Every leaf option of TrialConfig (dotted, as ``config.flatten`` names it) → (decision, why). A prefix ending
# in "." decides a whole section whose options are open-ended (a model family registers its own).
# tests/test_identity.py fails when the config has an option without a decision here.
RULES: dict[str, tuple[Decision, str]] = {
    "seed": (IN, "draws the initial weights, the data order and the augmentations"),
    "compat": (IN, "picks the framework defaults every unset value takes"),
    "model.": (IN, "the network; every option a model family registers shapes it"),
    # data: what the model sees
    "data.name": (IN, "which dataset (a named one by name and version, an image folder by its content)"),
    "data.root": (DATA, "where the files are: moving them changes nothing; data_identity names the content"),
    "data.download": (OUT, "whether a missing archive may be fetched: the same checksummed files either way"),
    **_each("data", "val_fraction official_val split_seed train_subset image_size scale validate_on", IN,
            "which images train and validate, and how pixels are scaled"),
    **_each("data.synthetic", "num_train num_test num_classes image_size noise difficulty seed", IN,
            "the synthetic dataset's content (ignored unless data.name is synthetic)"),
    # augmentation: every op and its magnitude changes the training distribution
    **_each("augment", "double", IN, "appends an augmented copy of the train set"),
    **_each("augment.crop", "p padding padding_mode", IN, "random crops"),
    **_each("augment.flip", "p mode", IN, "horizontal flips"),
    **_each("augment.vflip", "p mode", IN, "vertical flips"),
    **_each("augment.rotate", "p degrees", IN, "rotations"),
    **_each("augment.zoom", "p scale", IN, "zooms"),
    **_each("augment.shift", "p fraction", IN, "shifts"),
    **_each("augment.brightness", "p delta", IN, "brightness jitter"),
    **_each("augment.contrast", "p delta", IN, "contrast jitter"),
    **_each("augment.cutout", "p size count", IN, "cutout"),
    **_each("augment.mixup", "p alpha", IN, "mixup"),
    **_each("augment.cutmix", "p alpha per_sample", IN, "cutmix"),
    # training recipe
    **_each("train", "epochs batch_size precision tta label_smoothing grad_clip phases", IN,
            "the recipe: length, per-rank batch, numeric precision, test-time augmentation, loss, clipping, "
            "transfer phases"),
    **_each("train.lookahead", "every start_epoch decay_base decay_pow", IN, "weight averaging"),
    **_each("train.early_stopping", "patience metric min_delta restore_best", IN,
            "when training stops and which weights are kept"),
    "train.eval_batch_size": (OUT, "evaluation chunking: the same predictions in fewer or more passes"),
    "train.device": (OUT, "placement: Tune gives the trial its device; where a pinned device decides the "
                          "recipe (precision auto on a pinned GPU is bf16) the resolved precision says so"),
    "train.channels_last": (OUT, "memory layout of the same tensors"),
    "train.compile": (OUT, "torch.compile runs the same model faster"),
    "train.compile_mode": (OUT, "how torch.compile optimises the same model"),
    "train.checkpoint_every": (OUT, "how often a checkpoint is written, not what is learned"),
    # optimizer, schedule, regularization
    **_each("optim", "name lr momentum nesterov weight_decay betas eps decay_norm_and_bias norm_bias_lr_scale",
            IN, "the optimizer and its hyper-parameters (resolved: an unset momentum is its optimizer's default)"),
    **_each("optim", "rho initial_accumulator", IN, "Adadelta's decay and Adagrad's starting accumulator (Keras "
            "defaults under compat: keras): they change every update"),
    "optim.fused": (OUT, "a single-kernel implementation of the same update"),
    **_each("sched", "name warmup_epochs warmup_start step_size milestones gamma t0 t_mult min_lr pct_start "
            "div_factor final_div_factor milestone_factors factor patience plateau_metric plateau_min_delta "
            "plateau_min_lr reduce_on_plateau", IN, "the learning-rate schedule"),
    **_each("reg", "kind l1 l2 alpha lam scope in_val_loss", IN, "weight penalties in the loss"),
}


def rule(key: str) -> tuple[Decision, str] | None:
    """The decision on one dotted option (its own entry, else its section's), or None when there is none."""
    if key in RULES:
        return RULES[key]
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        section = ".".join(parts[:n]) + "."
        if section in RULES:
            return RULES[section]
    return None


# ------------------------------------------------------------------------------------------ resolution
_MOMENTUM_DEFAULT = {"sgd": 0.9, "rmsprop": 0.0}  # train/optim.py's create_optimizer; others take no momentum
_BETAS = ("adam", "adamw", "adamax", "nadam", "radam")
_NO_EPS = ("sgd", "adadelta")


def _resolved(cfg: TrialConfig) -> dict[str, Any]:
    """The config's dotted values as the run uses them: defaults that resolve at run time spelled out, values
    the chosen optimizer or dataset ignores dropped (what ``train/optim.py`` and the data loaders do)."""
    values = flatten(cfg.to_dict())
    names = {cfg.optim.name} | {p.optim or cfg.optim.name for p in cfg.train.phases}
    values["optim.momentum"] = next((cfg.optim.momentum if cfg.optim.momentum is not None else _MOMENTUM_DEFAULT[n]
                                     for n in sorted(names) if n in _MOMENTUM_DEFAULT), None)
    if "sgd" not in names:
        values.pop("optim.nesterov")
    if not names & set(_BETAS):
        values.pop("optim.betas")
    if names <= set(_NO_EPS):
        values.pop("optim.eps")
    values["train.phases"] = [{**p, "optim": p["optim"] or cfg.optim.name, "lr": p["lr"] or cfg.optim.lr}
                              for p in values["train.phases"]]
    if cfg.train.precision == "auto" and cfg.train.device.startswith("cuda"):  # the engine's autocast_dtype:
        values["train.precision"] = "bf16"  # a pinned GPU makes precision auto bf16 (auto and cpu stay as spelled)
    if cfg.data.name != "synthetic":
        values = {k: v for k, v in values.items() if not k.startswith("data.synthetic.")}
    return values


@functools.lru_cache(maxsize=64)
def _defaults(model_name: str, compat: str) -> dict[str, Any]:
    """The resolved values of a config that sets only its model family and compat (cached per pair)."""
    return _resolved(build_config({"model": {"name": model_name}, "compat": compat}))


# ------------------------------------------------------------------------------------------ data
DATASET_VERSIONS = {"cifar10": 1, "cifar100": 1, "cinic10": 1}  # the published, md5-checked releases


def data_identity(cfg: TrialConfig) -> dict[str, Any]:
    """What the data is, wherever it lives: a named dataset by name and version; an image folder by a digest
    of its file list and sizes (moving it changes nothing, editing it does). An image folder the driver cannot
    see (not there yet, on another machine) is named by its resolved path instead."""
    name = cfg.data.name
    if name in DATASET_VERSIONS:
        return {"data.version": DATASET_VERSIONS[name]}
    if name == "imagefolder" and cfg.data.root:
        root = Path(cfg.data.root).expanduser().resolve()
        if root.is_dir():
            return {"data.content": folder_digest(str(root))}
        return {"data.root": str(root)}
    return {}


@functools.lru_cache(maxsize=16)
def folder_digest(root: str) -> str:
    """sha256 of the sorted (relative path, size) of every file under ``root``, hidden files and folders (the
    decoded-image cache) skipped. Cached per process: a plan hashes each folder once."""
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(folder, root)
        for f in sorted(files):
            if not f.startswith("."):
                h.update(f"{os.path.join(rel, f)}\0{os.path.getsize(os.path.join(folder, f))}\n".encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ identities
def identity_values(cfg: TrialConfig, world_size: int = 1, version: int = IDENTITY_VERSION) -> dict[str, Any]:
    """The values a trial's id hashes (seed included), under the identity rule of ``version``."""
    if version == LEGACY_VERSION:
        return _legacy_values(cfg)
    if version != IDENTITY_VERSION:
        raise ValueError(f"unknown identity version {version}; this rayclf knows {VERSIONS}")
    base = _defaults(cfg.model.name, cfg.compat)
    values = {k: v for k, v in _resolved(cfg).items()
              if _decision(k) == IN and (k not in base or base[k] != v)}
    # the defaults compared against are the family's under its compat: those two keys always enter, or a cnn
    # and an mlp (or a torch and a keras run) that keep their defaults would hash alike
    values.update({"model.name": cfg.model.name, "compat": cfg.compat})
    values.update(data_identity(cfg))
    if world_size != 1:
        values["world_size"] = world_size
    return values


def _decision(key: str) -> Decision:
    decided = rule(key)
    if decided is None:  # a config option without a decision must not silently stay out (or in)
        raise KeyError(f"config option {key} has no identity decision in rayclf.identity.RULES")
    return decided[0]


def trial_id(cfg: TrialConfig, world_size: int = 1, version: int = IDENTITY_VERSION) -> str:
    """A trial's content address: the hash of its identity values (seed included)."""
    if version == LEGACY_VERSION:
        blob = {"semantics": SEMANTICS_VERSION, "values": _legacy_values(cfg)}
    else:
        blob = {"identity": version, "semantics": SEMANTICS_VERSION,
                "values": identity_values(cfg, world_size, version)}
    text = json.dumps(blob, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def arm_id(cfg: TrialConfig, world_size: int = 1, version: int = IDENTITY_VERSION) -> str:
    """An arm's content address: its trials' config with the seed at its default. Two arms of a sweep that
    resolve to one identity are one arm, whatever their labels."""
    seed = TrialConfig.model_fields["seed"].default
    return trial_id(cfg.model_copy(update={"seed": seed}), world_size, version)


# ------------------------------------------------------------------------------------------ version 1
@functools.lru_cache(maxsize=64)
def _legacy_defaults(model_name: str) -> dict[str, Any]:
    return flatten(build_config({"model": {"name": model_name}}).to_dict())


def _legacy_values(cfg: TrialConfig) -> dict[str, Any]:
    """Version 1: the (dotted) values that differ from the model family's defaults, as spelled."""
    base = _legacy_defaults(cfg.model.name)
    return {k: v for k, v in flatten(cfg.to_dict()).items() if k not in base or base[k] != v}


def store_version(meta: Mapping[str, Any]) -> int:
    """The identity version a sweep directory's ``_store.json`` records: a store written before versions were
    recorded is version 1; a fresh one (no metadata yet) takes this rayclf's."""
    if not meta:
        return IDENTITY_VERSION
    return int(meta.get("identity", LEGACY_VERSION))
