"""Every model family's options: what a config may set for each ``model.name``, with no torch or model code.

Validating a config (``rayclf validate``, a sweep file's driver before Ray starts) needs only these classes; the
builders (``rayclf.models.cnn`` …) import torch when a trial first builds a model. Each class registers here by
its family's name (``rayclf.model_options.register_options``); the builder registers under the same name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rayclf.model_options import TIMM_FALLBACK, ModelOptions, register_options

Activation = Literal["relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid", "silu"]
Pool = Literal["max", "avg", "none"]
NormPlace = Literal["none", "before", "after"]
HeadDropout = Literal["every", "output"]
Padding = Literal["same", "valid"]


def check_dropout(rates: float | list[float], count: int, what: str) -> None:
    """One dropout rate, or a list of exactly ``count`` (one per ``what``), each in [0, 1)."""
    if isinstance(rates, list) and len(rates) != count:
        raise ValueError(f"dropout has {len(rates)} rates for {count} {what}")
    if any(not 0.0 <= r < 1.0 for r in (rates if isinstance(rates, list) else [rates])):
        raise ValueError("dropout rates must be in [0, 1)")


class CNNOptions(ModelOptions):
    name: Literal["cnn"] = "cnn"
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1, max_length=12)
    convs_per_block: int = Field(1, ge=1, le=8)
    kernel_size: int | list[int] = Field(3, description="one size, or one per block (e.g. [5, 3, 3, 3])")
    stride: int | list[int] = Field(1, description="of each block's first conv: one, or one per block")
    padding: Padding | list[Padding] = Field("same", description="same | valid (none): one, or one per block")
    pool: Pool = "max"
    pool_every: int = Field(1, ge=1, description="pool after every k-th block")
    activation: Activation = "relu"
    leaky_slope: float = Field(0.1, ge=0.0, le=1.0)
    norm: NormPlace = "none"
    dropout: float | list[float] = Field(0.0, description="one rate or one per block, placed by dropout_at")
    dropout_at: Literal["block", "conv"] = Field("block", description="block: after the block's pooling; conv: "
                                                                      "after each conv's activation (and norm)")
    head: list[int] = Field(default_factory=list, description="hidden dense widths before the output layer")
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    head_dropout_at: HeadDropout = Field("every", description=(
        "every: a dropout before each dense layer of the head; output: one, before the output layer only"))
    global_pool: bool = Field(False, description="global average pool instead of flatten")

    @model_validator(mode="after")
    def _check(self) -> CNNOptions:
        check_dropout(self.dropout, len(self.widths), "blocks")
        for key, lo, hi in (("kernel_size", 1, 7), ("stride", 1, 4)):
            values = self.per_block(key)
            if len(values) != len(self.widths) or any(not lo <= v <= hi for v in values):
                raise ValueError(f"{key} must be one value or one per block ({len(self.widths)}), each in {lo}..{hi}")
        if len(self.per_block("padding")) != len(self.widths):
            raise ValueError(f"padding must be one value or one per block ({len(self.widths)})")
        return self

    def per_block(self, key: str) -> list:
        """A per-block option as one value per block (a single value repeats)."""
        value = getattr(self, key)
        return list(value) if isinstance(value, list) else [value] * len(self.widths)

    def block_dropout(self) -> list[float]:
        return self.per_block("dropout")


class VGGOptions(ModelOptions):
    name: Literal["vgg_baseline"] = "vgg_baseline"
    blocks: int = Field(3, ge=1, le=5)
    width: int = Field(32, ge=1, le=1024, description="filters of the first block; doubled per block")
    convs_per_block: int = Field(2, ge=1, le=4)
    kernel_size: int = Field(3, ge=1, le=7)
    activation: Activation = "relu"
    leaky_slope: float = Field(0.01, ge=0.0, le=1.0)
    norm: NormPlace = "none"
    dropout: float | list[float] = Field(0.0, description="one rate or one per block, placed by dropout_at")
    dropout_at: Literal["block", "conv"] = Field("block", description="block: after the block's pooling; conv: "
                                                                      "after each conv's activation (and norm)")
    head: list[int] = Field(default_factory=list)
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    head_dropout_at: HeadDropout = Field("every", description=(
        "every: a dropout before each dense layer of the head; output: one, before the output layer only"))

    @model_validator(mode="after")
    def _check(self) -> VGGOptions:
        check_dropout(self.dropout, self.blocks, "blocks")  # at config time, not when the trial builds its net
        return self


class MLPOptions(ModelOptions):
    name: Literal["mlp"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [512, 256], max_length=16)
    activation: Activation = "relu"
    leaky_slope: float = Field(0.01, ge=0.0, le=1.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False


class ResNetCustomOptions(ModelOptions):
    name: Literal["resnet_custom"] = "resnet_custom"
    blocks: int = Field(3, ge=1, le=12, description="number of residual blocks")
    kernel_size: int = Field(3, ge=2, le=7)
    width: int = Field(64, ge=4, le=1024, description="filters of the stem and first block")
    widen: bool = Field(False, description="double the filters after every pooling")
    pool: Pool = "max"
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="after each block")
    activation: Activation = "relu"
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    residual_add: Literal["before_act", "after_act"] = Field(
        "before_act", description="where a block adds its input: before its last activation (ResNet v1), or "
                                  "after it (BN + activation after each conv, then the sum)")


class ResNetCifarOptions(ModelOptions):
    name: Literal["resnet_cifar"] = "resnet_cifar"
    depth: int = Field(20, description="6n+2: 20, 32, 44, 56, 110, …")
    width: int = Field(16, ge=4, le=256, description="filters of the first stack (then ×2, ×4)")
    dropout: float | list[float] = Field(0.0, description="one rate between the stacks, or one per stack "
                                                          "(after stack 1, 2, 3), e.g. [0, 0.1, 0.2]")
    conv_bias: bool = Field(False, description="biases on every conv (Keras's Conv2D default, as in its "
                                               "cifar10_resnet example)")
    shortcut_norm: bool = Field(True, description="BatchNorm after the 1×1 projection shortcut (Keras's "
                                                  "cifar10_resnet v1 has none)")

    @field_validator("dropout")
    @classmethod
    def _rates(cls, v: float | list[float]) -> float | list[float]:
        check_dropout(v, 3, "stacks")
        return v

    def stack_dropout(self) -> list[float]:
        return list(self.dropout) if isinstance(self.dropout, list) else [self.dropout, self.dropout, 0.0]

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: int) -> int:
        if v < 8 or (v - 2) % 6:
            raise ValueError("depth must be 6n+2 (20, 32, 44, 56, 110, …)")
        return v


class AirbenchOptions(ModelOptions):
    name: Literal["airbench"] = "airbench"
    widths: tuple[int, int, int] = (64, 256, 256)
    whiten_kernel: int = Field(2, ge=1, le=5, description="patch size of the whitening layer")
    whiten_eps: float = Field(5e-4, gt=0, description="added to the patch-covariance eigenvalues")
    whiten_samples: int = Field(5000, ge=100, description="training images used to estimate the whitening")
    whiten_bias_epochs: int | None = Field(3, ge=0, description="freeze the whitening bias after this many epochs")
    bn_momentum: float = Field(0.4, gt=0, le=1, description="PyTorch convention (airbench's 0.6 = 1 - 0.4)")
    bn_eps: float = Field(1e-12, gt=0)
    scale: float = Field(1 / 9, gt=0, description="logit scaling")


class TimmOptions(ModelOptions):
    name: str = Field(..., description="any timm model name, e.g. resnet18, vgg19, vgg19_bn")
    pretrained: bool = False
    checkpoint: str | None = Field(None, description="local weights file (.pth / .safetensors) for offline use")
    resize: int | None = Field(None, ge=8, le=1024, description="resize inputs to this size, e.g. 224")
    head: list[int] = Field(default_factory=list, description="hidden widths of a replacement dense head")
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    head_dropout_at: HeadDropout = Field("every", description=(
        "every: a dropout before each dense layer of the head; output: one, before the output layer only"))
    head_activation: Activation = "relu"
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="timm's own classifier dropout")
    cifar_stem: bool = Field(False, description="ResNets: 3×3 stride-1 stem without max-pool for 32×32 inputs")

    def loads_weights(self) -> bool:
        return self.pretrained or bool(self.checkpoint)

    def without_weights(self) -> TimmOptions:
        return self.model_copy(update={"pretrained": False, "checkpoint": None})

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        import timm

        if not timm.is_model(v):
            raise ValueError(f"{v!r} is not a timm model name")
        return v


FAMILIES: dict[str, type[ModelOptions]] = {
    "cnn": CNNOptions, "vgg_baseline": VGGOptions, "mlp": MLPOptions, "resnet_custom": ResNetCustomOptions,
    "resnet_cifar": ResNetCifarOptions, "airbench": AirbenchOptions, TIMM_FALLBACK: TimmOptions}
for _name, _options in FAMILIES.items():
    register_options(_name, _options)
