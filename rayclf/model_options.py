"""Model options: the base class every family's options extend, and the registry that finds a family's
options class by ``model.name`` (ours first, then any timm model name).

A leaf beside ``schema``: the trial config and the model families both import it, neither imports the other.
Families register their options here by name (``rayclf.models.options``, torch-free), their builders in
``rayclf.models.registry``: validating a config imports no torch and no model code (timm names excepted: only
timm knows them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rayclf.schema import ConfigError, Strict, closest

TIMM_FALLBACK = "timm"
_OPTIONS: dict[str, type[ModelOptions]] = {}


class ModelOptions(Strict):
    """Base of every model family's options; the registry picks the subclass by ``name``."""

    name: str = "cnn"
    init: Literal["default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform",
                  "normal", "zeros"] = "default"
    bn_momentum: float | None = Field(None, gt=0.0, lt=1.0, description=(
        "BatchNorm momentum in PyTorch's convention (Keras's 0.99 is 0.01); default: the layer's own (0.1)"))
    bn_eps: float | None = Field(None, gt=0.0, lt=1.0, description="BatchNorm epsilon; default: the layer's own")

    def loads_weights(self) -> bool:
        """Whether building the model loads pretrained weights (then ``init`` touches only new layers)."""
        return False

    def without_weights(self) -> ModelOptions:
        """The same architecture built without loading pretrained weights (a checkpoint supplies them)."""
        return self


def register_options(name: str, options: type[ModelOptions]) -> None:
    _OPTIONS[name] = options


def _load_families() -> None:
    import rayclf.models.options  # noqa: F401  (registers every family's options, without torch)


def model_options_class(name: Any, key: str = "model.name") -> type[ModelOptions]:
    """Options class for a model name: ours first, then any timm model name."""
    _load_families()
    if isinstance(name, str) and name in _OPTIONS and name != TIMM_FALLBACK:
        return _OPTIONS[name]
    if isinstance(name, str):
        import timm

        if timm.is_model(name):
            return _OPTIONS[TIMM_FALLBACK]
    candidates = sorted(n for n in _OPTIONS if n != TIMM_FALLBACK)
    hint = closest(str(name), candidates)
    if hint is None and isinstance(name, str):
        import timm

        hint = closest(name, timm.list_models())
    msg = (f"Invalid config: '{key}' = {name!r} is not a known model; choose one of: {', '.join(candidates)}, "
           "or any timm model name (e.g. resnet18, vgg19_bn).")
    raise ConfigError(msg + (f" Did you mean '{hint}'?" if hint else ""))
