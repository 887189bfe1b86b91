"""The typed trial config: defaults, YAML loading, ``--set a.b=c`` overrides and friendly errors.

Every option a sweep can vary lives here (models add their own option classes through the model
registry), so a bad key or value is caught before any Ray worker starts, with a message that names
the key path, the value, what is allowed and the closest valid spelling.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from rayclf.model_options import ModelOptions, model_options_class
from rayclf.schema import ConfigError, Strict, UserError, closest

__all__ = ["ConfigError", "ModelOptions", "Strict", "TrialConfig", "UserError", "build_config", "closest"]


def _yaml_switch(value: Any) -> Any:
    """YAML 1.1 reads a bare ``on`` / ``off`` as true / false: take them as the words the user wrote."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_yaml_switch)]


# --------------------------------------------------------------------------------------------- data
DatasetName = Literal["synthetic", "cifar10", "cifar100", "cinic10", "imagefolder"]
DATASETS = get_args(DatasetName)


class SyntheticConfig(Strict):
    num_train: int = Field(2000, ge=10, le=10_000_000)
    num_test: int = Field(500, ge=10, le=10_000_000)
    num_classes: int = Field(10, ge=2, le=1000)
    image_size: int = Field(32, ge=8, le=512)
    noise: float = Field(2.0, ge=0.0, le=10.0, description="pixel noise relative to the class signal")
    difficulty: float = Field(
        0.5, ge=0.0, le=1.0, description="class overlap and nuisance transforms: 0 = clean class patterns (near "
                                         "100% accuracy), 0.5 = the quickstart's real study, 1 = hard")
    seed: int = Field(0, ge=0)


class DataConfig(Strict):
    name: DatasetName = "synthetic"
    root: str | None = Field(None, description="dataset folder; default $RAYCLF_DATA or ~/.cache/rayclf/data")
    download: bool = True
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    official_val: bool = Field(True, description="use the dataset's own validation split where it has one")
    split_seed: int = Field(0, ge=0, description="seed of the validation split and train_subset")
    train_subset: int | None = Field(None, ge=10, description="use only this many training images (stratified)")
    image_size: int | None = Field(None, ge=8, le=1024, description="imagefolder: resize images to this size")
    scale: Literal["standardize", "unit", "pixel_mean", "imagenet"] = Field(
        "standardize", description="model inputs: per-channel standardised, [0, 1] (x/255, Keras studies), "
                                   "[0, 1] minus the per-pixel training mean (Keras's cifar10_resnet), or "
                                   "standardised with ImageNet's mean/std (what ImageNet-pretrained weights expect)")
    validate_on: Literal["holdout", "test"] = Field(
        "holdout", description="holdout: a split of train (or the official one); test: train on all training "
                               "images and validate on the test set, as several reports did")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)


# ------------------------------------------------------------------------------------- augmentation
class _Op(Strict):
    p: float = Field(1.0, ge=0.0, le=1.0)


class FlipOp(Strict):
    p: float = Field(0.0, ge=0.0, le=1.0, description="probability; 0 turns the flip off")
    mode: Literal["random", "alternate"] = Field(
        "random", description="alternate (airbench): a random share p flipped in epoch 1, then every image's "
                              "flip toggles each epoch, so each image is seen both ways in any two epochs")


class CropOp(_Op):
    padding: int = Field(0, ge=0, le=64)
    padding_mode: Literal["zeros", "reflect", "edge"] = "zeros"


class RotateOp(_Op):
    degrees: float = Field(0.0, ge=0.0, le=180.0)


class ZoomOp(_Op):
    scale: tuple[float, float] = (1.0, 1.0)

    @model_validator(mode="after")
    def _ordered(self) -> ZoomOp:
        lo, hi = self.scale
        if not (0.1 <= lo <= hi <= 4.0):
            raise ValueError("scale must be [lo, hi] with 0.1 <= lo <= hi <= 4")
        return self


class ShiftOp(_Op):
    fraction: float = Field(0.0, ge=0.0, le=0.5)


class ColorOp(_Op):
    delta: float = Field(0.0, ge=0.0, le=1.0, description="max relative change, e.g. 0.2 = ±20%")


class CutoutOp(_Op):
    size: int = Field(0, ge=0, le=512)
    count: int = Field(1, ge=1, le=16)


class MixOp(_Op):
    alpha: float = Field(0.0, ge=0.0, le=100.0, description="Beta(α, α); 0 turns it off")


class CutMixOp(MixOp):
    per_sample: bool = Field(False, description=(
        "draw λ and the box per sample (the Keras CutMix example, seed 000's reference) instead of one λ per batch"))


class AugmentConfig(Strict):
    """Batched on-device augmentations; an op is on when its magnitude (or a flip's p) is non-zero."""

    crop: CropOp = Field(default_factory=CropOp)
    flip: FlipOp = Field(default_factory=FlipOp)
    vflip: FlipOp = Field(default_factory=FlipOp)
    rotate: RotateOp = Field(default_factory=RotateOp)
    zoom: ZoomOp = Field(default_factory=ZoomOp)
    shift: ShiftOp = Field(default_factory=ShiftOp)
    brightness: ColorOp = Field(default_factory=ColorOp)
    contrast: ColorOp = Field(default_factory=ColorOp)
    cutout: CutoutOp = Field(default_factory=CutoutOp)
    mixup: MixOp = Field(default_factory=MixOp)
    cutmix: CutMixOp = Field(default_factory=CutMixOp)
    double: bool = Field(False, description="append one augmented copy of the train set (offline mode)")


# ------------------------------------------------------------------------------------------- model
# ------------------------------------------------------------------------------------------- train
class EarlyStopping(Strict):
    patience: int = Field(0, ge=0, description="epochs without improvement before stopping; 0 = off")
    metric: Literal["val_accuracy", "val_loss", "train_loss", "train_accuracy"] = "val_loss"
    min_delta: float = Field(0.0, ge=0.0)
    restore_best: bool = Field(True, description="put the best epoch's weights back at the end (Keras: off)")


OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop", "adamax", "adagrad", "adadelta", "nadam", "radam"]
OPTIMIZERS = get_args(OptimizerName)


class Phase(Strict):
    """One transfer-learning phase: its own epochs, trainable scope, optimizer and LR."""

    epochs: int = Field(..., ge=1, le=10000)
    trainable: str = Field("all", description="all | head | last:K (the last K stages and the head)")
    optim: OptimizerName | None = Field(None, description="default: optim.name")
    lr: float | None = Field(None, gt=0, le=10)

    @model_validator(mode="after")
    def _scope(self) -> Phase:
        if not re.fullmatch(r"all|head|last:\d+", self.trainable):
            raise ValueError(f"trainable must be all, head or last:K, not {self.trainable!r}")
        return self


class LookaheadConfig(Strict):
    """airbench's weight averaging: every ``every`` steps from ``start_epoch`` the weights are pulled into a
    running average and reset to it (ρ = decay_base^every · progress^decay_pow, so it averages harder late)."""

    every: int = Field(0, ge=0, description="steps between updates; 0 = off")
    start_epoch: int = Field(3, ge=0)
    decay_base: float = Field(0.95, gt=0.0, lt=1.0)
    decay_pow: float = Field(3.0, ge=0.0)


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1, le=10000)
    batch_size: int = Field(128, ge=1, le=65536)
    eval_batch_size: int = Field(1000, ge=1, le=65536)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: Switch = "auto"
    compile: bool | Literal["auto"] = Field(False, description="torch.compile the model; auto = on CUDA only")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode; reduce-overhead adds CUDA graphs")
    tta: Literal["none", "flip", "flip_translate"] = Field(
        "none", description="test-time augmentation for val/test: mirror, or mirror + 1-pixel shifts (airbench)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    lookahead: LookaheadConfig = Field(default_factory=LookaheadConfig)
    grad_clip: float | None = Field(None, gt=0)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    checkpoint_every: int = Field(1, ge=0, description="epochs between checkpoints; 0 = only at the end")
    phases: list[Phase] = Field(default_factory=list)


class OptimConfig(Strict):
    name: OptimizerName = "sgd"
    lr: float = Field(0.05, gt=0.0, le=10.0)
    momentum: float | None = Field(None, ge=0.0, lt=1.0, description="default: 0.9 for sgd, 0 for rmsprop")
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0, le=1.0, description=(
        "every optimizer's but sgd's; adadelta keeps torch's 1e-6 while this stays at its default"))
    rho: float | None = Field(None, gt=0.0, lt=1.0, description="adadelta's ρ; default torch's 0.9 (Keras: 0.95)")
    initial_accumulator: float | None = Field(None, ge=0.0, le=10.0, description=(
        "adagrad's initial accumulator value; default torch's 0 (Keras: 0.1)"))
    decay_norm_and_bias: bool = Field(False, description="apply weight decay to biases and norm parameters too")
    norm_bias_lr_scale: float = Field(1.0, gt=0.0, le=1000.0, description=(
        "norm-layer biases train at lr × this and decay at weight_decay / this (airbench's bias scaler)"))
    fused: Switch = Field("auto", description="fused CUDA kernel (sgd/adam/adamw); auto = on GPU")


# options of one optimizer only: set for another, they are refused (and compat: keras fills them only for it)
OPTIMIZER_ONLY = {"rho": "adadelta", "initial_accumulator": "adagrad"}


ScheduleName = Literal["constant", "step", "multistep", "exponential", "linear", "cosine", "cosine_restarts",
                       "onecycle", "plateau"]
SCHEDULES = get_args(ScheduleName)


class SchedConfig(Strict):
    name: ScheduleName = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    warmup_start: float = Field(0.1, gt=0.0, le=1.0, description="warmup starts at this fraction of the LR")
    step_size: float = Field(30.0, gt=0.0)
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75])
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    t0: float = Field(10.0, gt=0.0, description="cosine_restarts: first cycle length in epochs")
    t_mult: float = Field(1.0, ge=1.0)
    min_lr: float = Field(0.0, ge=0.0)
    pct_start: float = Field(0.25, gt=0.0, lt=1.0)
    div_factor: float = Field(25.0, ge=1.0)
    final_div_factor: float = Field(1e4, ge=1.0)
    milestone_factors: list[float] = Field(default_factory=list, description=(
        "multistep: the LR multiplier applied at each milestone (cumulative, e.g. [0.1, 0.1, 0.1, 0.5] for "
        "Keras's cifar10_resnet); empty = gamma at every milestone"))
    factor: float = Field(0.1, gt=0.0, lt=1.0, description="reduce-on-plateau: LR multiplier when it fires")
    patience: int = Field(5, ge=0, description=(
        "reduce-on-plateau: lower the LR once this many epochs in a row did not improve (Keras's rule: "
        "wait >= patience, so patience 2 lowers at the second bad epoch)"))
    plateau_metric: Literal["val_loss", "val_accuracy", "train_loss"] = "val_loss"
    plateau_min_delta: float = Field(0.0, ge=0.0, description="an improvement must beat the best by more than this")
    plateau_min_lr: float = Field(0.0, ge=0.0, description="reduce-on-plateau never lowers the LR below this")
    reduce_on_plateau: bool = Field(False, description=(
        "reduce-on-plateau on top of this schedule (name: plateau is constant + this)"))

    @model_validator(mode="after")
    def _factors(self) -> SchedConfig:
        if self.milestone_factors and len(self.milestone_factors) != len(self.milestones):
            raise ValueError(f"milestone_factors has {len(self.milestone_factors)} values for "
                             f"{len(self.milestones)} milestones; give one factor per milestone")
        if any(not 0 < f <= 10 for f in self.milestone_factors):
            raise ValueError("milestone_factors must be in (0, 10]")
        return self

    def plateau_on(self) -> bool:
        """Whether reduce-on-plateau watches a metric (alone, or on top of another schedule)."""
        return self.name == "plateau" or self.reduce_on_plateau


class RegConfig(Strict):
    """Weight penalties added to the loss, on conv/linear kernels only (never biases or norm weights)."""

    kind: Literal["none", "l1", "l2", "l1l2", "elastic"] = "none"
    l1: float = Field(0.0, ge=0.0, le=10.0)
    l2: float = Field(0.0, ge=0.0, le=10.0)
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="elastic net: share of L1 in the mix")
    lam: float = Field(0.0, ge=0.0, le=10.0, description="elastic net: overall strength λ")
    scope: Literal["all", "output", "conv"] = Field(
        "all", description="all kernels, the output layer only, or conv kernels only (Keras's cifar10_resnet)")
    in_val_loss: bool = Field(False, description="add the penalty to val/test loss too (Keras's evaluate does)")


Compat = Literal["torch", "keras"]


class TrialConfig(Strict):
    seed: int = Field(0, ge=0, le=2**31 - 1)
    compat: Compat = Field("torch", description=(
        "framework defaults for every value the config does not set: torch (PyTorch's) or keras (see KERAS)"))
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: SerializeAsAny[ModelOptions] = Field(default_factory=ModelOptions)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sched: SchedConfig = Field(default_factory=SchedConfig)
    reg: RegConfig = Field(default_factory=RegConfig)

    @field_validator("model", mode="before")
    @classmethod
    def _family_options(cls, value: Any) -> Any:
        """A plain mapping becomes its family's own options class (picked by ``name``), so a config
        round-trips through ``model_validate(cfg.to_dict())``."""
        if isinstance(value, Mapping):
            name = value.get("name", ModelOptions.model_fields["name"].default)
            return model_options_class(name).model_validate(dict(value))
        return value

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every resolved value (defaults included)."""
        return self.model_dump(mode="json")

    def total_epochs(self) -> int:
        """Epochs the trial trains: the sum of its phases, or ``train.epochs``."""
        return sum(p.epochs for p in self.train.phases) or self.train.epochs


# Bumped only when the meaning of a default (or of a stored result) changes: trial ids (rayclf.identity) and
# sweep directories of another version are then refused instead of silently matched.
# 3: reduce-on-plateau lowers the LR at wait >= patience (Keras's rule; was PyTorch's wait > patience).
SEMANTICS_VERSION = 3


# ------------------------------------------------------------------------------- loading, errors
def _section_class(loc: tuple[Any, ...], root: type[BaseModel], model_cls: type[BaseModel]) -> type[BaseModel] | None:
    """The config class that owns the key at ``loc`` (for listing valid sibling keys)."""
    cls: type[BaseModel] | None = root
    for part in loc[:-1]:
        if cls is None or not isinstance(part, str):
            if isinstance(part, int):  # list index: stay on the list's item class
                continue
            return None
        if cls is TrialConfig and part == "model":
            cls = model_cls
            continue
        field = cls.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        args = getattr(ann, "__args__", ())
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        elif args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            cls = args[0]  # list[Item] or Item | None
        else:
            return None
    return cls


def describe_error(err: Mapping[str, Any], root: type[BaseModel] = TrialConfig,
                   model_cls: type[BaseModel] = ModelOptions, prefix: str = "") -> str:
    """One sentence for one pydantic error: key path, value, what is allowed, closest spelling."""
    loc = tuple(err["loc"])
    path = prefix + ".".join(str(p) for p in loc)
    value = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        cls = _section_class(loc, root, model_cls)
        allowed = sorted(cls.model_fields) if cls else []
        hint = closest(str(loc[-1]), allowed)
        msg = f"unknown key '{path}'."
        if allowed:
            msg += f" Allowed keys here: {', '.join(allowed)}."
        return msg + (f" Did you mean '{hint}'?" if hint else "")
    if kind == "unknown_key":  # an open set of keys (a registry's): the validator says which are allowed
        ctx = err.get("ctx", {})
        path = f"{path}.{ctx['key']}" if path else str(ctx["key"])
        hint = closest(str(ctx["key"]), ctx["allowed"])
        msg = f"unknown key '{path}'. Allowed keys here: {', '.join(ctx['allowed'])}."
        return msg + (f" Did you mean '{hint}'?" if hint else "")
    if kind in ("literal_error", "enum"):
        allowed = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
        hint = closest(str(value), allowed)
        msg = f"'{path}' = {value!r} is not allowed; choose one of: {', '.join(allowed)}."
        return msg + (f" Did you mean '{hint}'?" if hint else "")
    return f"'{path}' = {value!r}: {err['msg']}."


def validation_message(exc: ValidationError, root: type[BaseModel], prefix: str = "") -> str:
    return "Invalid config: " + " ".join(describe_error(e, root, ModelOptions, prefix)
                                         for e in exc.errors(include_url=False))


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=value`` → ("a.b", YAML-parsed value), so numbers, lists and booleans keep their types."""
    if "=" not in item:
        raise ConfigError(f"--set expects key.path=value, got {item!r}.")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(f"--set key {key!r} is not a dotted key path like train.epochs.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return key, value


def set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b] = value`` for key ``a.b``, creating sections as needed."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    tree = copy.deepcopy(dict(raw))
    for key, value in overrides.items():
        set_path(tree, key, value)
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist (looked in {p.resolve().parent}).")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{p}' is not a text (UTF-8) file: byte {exc.start} cannot be decoded. "
                          "Pass a YAML config or sweep file.") from None
    except OSError as exc:
        raise ConfigError(f"config file '{p}' cannot be read: {exc.strerror or exc}.") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{p}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys, not {type(data).__name__}.")
    return data


def build_config(raw: Mapping[str, Any], prefix: str = "") -> TrialConfig:
    """Validate a raw dict into a TrialConfig, resolving the model family's own option class."""
    raw = dict(raw)
    model_raw = raw.pop("model", None) or {}
    if not isinstance(model_raw, dict):
        raise ConfigError(f"Invalid config: '{prefix}model' must be a mapping with a 'name', not {model_raw!r}.")
    model_raw = dict(model_raw)
    model_raw.setdefault("name", ModelOptions.model_fields["name"].default)
    model_cls = model_options_class(model_raw["name"], key=f"{prefix}model.name")
    messages: list[str] = []
    model_opts: ModelOptions | None = None
    try:
        model_opts = model_cls.model_validate(model_raw)
    except ValidationError as exc:
        messages += [describe_error({**e, "loc": ("model", *e["loc"])}, TrialConfig, model_cls, prefix)
                     for e in exc.errors(include_url=False)]
    try:
        cfg = TrialConfig.model_validate(raw)
    except ValidationError as exc:
        messages += [describe_error(e, TrialConfig, model_cls, prefix) for e in exc.errors(include_url=False)]
    if messages:
        raise ConfigError("Invalid config: " + " ".join(messages))
    cfg.model = model_opts  # type: ignore[assignment]
    if cfg.compat == "keras":
        apply_keras_defaults(cfg)
    ignored = ignored_options(cfg, prefix)
    if ignored:
        raise ConfigError("Invalid config: " + " ".join(ignored))
    return cfg


# compat: keras — the Keras/TensorFlow defaults the Keras-based studies ran with (section, key, value).
KERAS: tuple[tuple[str, str, Any], ...] = (
    ("model", "init", "xavier_uniform"),          # glorot_uniform kernels, zero biases (layers the study creates)
    ("model", "bn_momentum", 0.01),               # BatchNormalization(momentum=0.99) in PyTorch's convention
    ("model", "bn_eps", 1e-3),
    ("model", "leaky_slope", 0.3),                # LeakyReLU(alpha=0.3)
    ("optim", "eps", 1e-7),                       # every optimizer's epsilon (Adam ... Adagrad, Adadelta)
    ("optim", "rho", 0.95),                       # Adadelta(rho=0.95); only where adadelta trains
    ("optim", "initial_accumulator", 0.1),        # Adagrad(initial_accumulator_value=0.1); only where adagrad
    ("optim", "momentum", 0.0),                   # SGD(momentum=0.0), RMSprop(momentum=0.0)
    ("early_stopping", "restore_best", False),    # EarlyStopping(restore_best_weights=False)
    ("reg", "in_val_loss", True),                 # evaluate()'s loss includes the regularisation losses
    ("data", "scale", "unit"),                    # x / 255, no standardisation
    ("sched", "plateau_min_delta", 1e-4),         # ReduceLROnPlateau(min_delta=1e-4)
)


def apply_keras_defaults(cfg: TrialConfig) -> None:
    """Fill the Keras defaults into every value the config does not set itself (pydantic's fields_set), so a
    study file overrides any of them by writing it out."""
    sections = {"model": cfg.model, "optim": cfg.optim, "early_stopping": cfg.train.early_stopping,
                "reg": cfg.reg, "data": cfg.data, "sched": cfg.sched}
    uses = optimizers_used(cfg)
    for section, key, value in KERAS:
        target = sections[section]
        if key not in type(target).model_fields or key in target.model_fields_set:
            continue
        owner = OPTIMIZER_ONLY.get(key) if section == "optim" else None
        if owner is not None and owner not in uses:
            continue  # another optimizer's option: it would change the identity and nothing else
        setattr(target, key, value)


def optimizers_used(cfg: TrialConfig) -> set[str]:
    """The optimizers the trial trains with: each phase's, or ``optim.name``."""
    return {p.optim or cfg.optim.name for p in cfg.train.phases} or {cfg.optim.name}


OFFICIAL_VAL = ("cinic10", "imagefolder")  # datasets that may ship their own validation split
FLOORED = ("linear", "cosine", "cosine_restarts")  # schedules that decay towards sched.min_lr


def ignored_options(cfg: TrialConfig, prefix: str = "") -> list[str]:
    """Values that would be accepted and then silently have no effect: each is an error, with the fix."""
    out: list[str] = []
    d, sched, es = cfg.data, cfg.sched, cfg.train.early_stopping
    if d.image_size is not None and d.name != "imagefolder":
        out.append(f"'{prefix}data.image_size' = {d.image_size} only resizes imagefolder datasets, not "
                   f"'{d.name}'; remove it (models that need another size have model.resize).")
    phases = cfg.train.phases
    optimizers = optimizers_used(cfg)
    for key, owner in OPTIMIZER_ONLY.items():
        if getattr(cfg.optim, key) is not None and owner not in optimizers:
            out.append(f"'{prefix}optim.{key}' = {getattr(cfg.optim, key)} only applies to optim.name = {owner}, "
                       f"not {', '.join(sorted(optimizers))}; remove it or choose {owner}.")
    if sched.name == "onecycle" and sched.warmup_epochs > 0:
        out.append(f"'{prefix}sched.warmup_epochs' = {sched.warmup_epochs} has no effect with sched.name = "
                   "onecycle, which warms up by itself over sched.pct_start; remove it or choose another schedule.")
    if d.validate_on == "test" and "val_fraction" in d.model_fields_set:
        out.append(f"'{prefix}data.val_fraction' = {d.val_fraction} has no effect with data.validate_on = test "
                   "(all training images train, the test set validates); remove one of them.")
    no_val = d.validate_on != "test" and d.val_fraction == 0 and not (d.official_val and d.name in OFFICIAL_VAL)
    if no_val and es.patience and es.metric.startswith("val_"):
        out.append(f"'{prefix}train.early_stopping.metric' = '{es.metric}' would never fire: there is no "
                   "validation split (data.val_fraction = 0); set data.val_fraction > 0 or use train_loss.")
    if no_val and sched.plateau_on() and sched.plateau_metric.startswith("val_"):
        out.append(f"'{prefix}sched.plateau_metric' = '{sched.plateau_metric}' would never fire: there is no "
                   "validation split (data.val_fraction = 0); set data.val_fraction > 0 or use train_loss.")
    if sched.milestone_factors and sched.name != "multistep":
        out.append(f"'{prefix}sched.milestone_factors' = {sched.milestone_factors} only applies to sched.name = "
                   f"multistep, not '{sched.name}'; remove it or choose multistep.")
    lrs = [p.lr or cfg.optim.lr for p in phases] or [cfg.optim.lr]
    if sched.name in FLOORED and sched.min_lr > min(lrs):
        out.append(f"'{prefix}sched.min_lr' = {sched.min_lr} is above the learning rate {min(lrs)}, so the "
                   f"{sched.name} schedule would raise the LR instead of decaying it; choose a min_lr below it.")
    return out


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> TrialConfig:
    """YAML file (optional) + ``--set`` overrides → validated TrialConfig."""
    raw = read_yaml(path) if path else {}
    parsed = dict(parse_override(o) for o in overrides)
    return build_config(apply_overrides(raw, parsed))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → dotted keys (lists stay values): the column names of results tables."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
