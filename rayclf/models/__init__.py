"""Model families: their options (``rayclf.models.options``, torch-free) and their builders (one module each).

Importing the package imports no torch: ``create_model`` and the rest load every family's builder on first use,
so a config can be validated (``rayclf.model_options``) without model code.
"""

from __future__ import annotations

from typing import Any

__all__ = ["count_params", "create_model", "list_models"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rayclf.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'rayclf.models' has no attribute {name!r}")
