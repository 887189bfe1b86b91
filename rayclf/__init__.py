"""rayclf: declarative image-classifier ablation sweeps on Ray.

In a notebook: ``sweep = rayclf.open_sweep("runs/quickstart")`` (see ``rayclf.api``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayclf.api import SweepResults, open_sweep

__version__ = "0.1.0"
__all__ = ["SweepResults", "open_sweep"]


def __getattr__(name: str) -> Any:
    """``rayclf.open_sweep`` without importing pandas and the report into every Ray worker that imports rayclf."""
    if name in __all__:
        from rayclf import api

        return getattr(api, name)
    raise AttributeError(f"module 'rayclf' has no attribute {name!r}")
