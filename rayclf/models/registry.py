"""Model registry in the style of timm: families register an options class and a builder by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from rayclf.model_options import TIMM_FALLBACK, ModelOptions, model_options_class, register_options


@dataclass(frozen=True)
class ModelEntry:
    options: type[ModelOptions]
    build: Callable[..., nn.Module]


_REGISTRY: dict[str, ModelEntry] = {}
__all__ = ["create_model", "list_models", "model_options_class", "register_model"]


def register_model(name: str, options: type[ModelOptions]) -> Callable[[Callable[..., nn.Module]], Callable]:
    """Decorator: ``@register_model("cnn", CNNOptions)`` on ``build(opts, num_classes, in_chans, size)``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelEntry(options, fn)
        register_options(name, options)
        return fn

    return wrap


def list_models() -> list[str]:
    _load_families()
    return sorted(n for n in _REGISTRY if n != TIMM_FALLBACK)


def _load_families() -> None:
    import rayclf.models.families  # noqa: F401  (registers every family's builder)


def create_model(opts: ModelOptions, num_classes: int, in_chans: int = 3, image_size: int = 32) -> nn.Module:
    """Build the model an options object describes, then apply its weight init.

    With pretrained weights loaded, ``init`` applies only to the layers they do not cover (the model's
    ``new_modules``, e.g. a replacement head), never to the pretrained ones."""
    from rayclf.models.hooks import hooks
    from rayclf.models.layers import init_weights

    _load_families()
    entry = _REGISTRY.get(opts.name) or _REGISTRY[TIMM_FALLBACK]
    model = entry.build(opts, num_classes=num_classes, in_chans=in_chans, image_size=image_size)
    targets = hooks(model).new_modules() if opts.loads_weights() else [model]
    for module in targets:
        if opts.init != "default":
            init_weights(module, opts.init)
        set_batchnorm(module, opts.bn_momentum, opts.bn_eps)
    return model


def set_batchnorm(model: nn.Module, momentum: float | None, eps: float | None) -> None:
    """BatchNorm momentum/epsilon of the layers the study creates (e.g. Keras's 0.99 / 1e-3 under compat: keras)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if momentum is not None:
                m.momentum = momentum
            if eps is not None:
                m.eps = eps


def count_params(model: nn.Module) -> int:
    """Trainable parameter count (the figure studies report)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
