"""rayclf: declarative image-classifier ablation sweeps on Ray."""

__version__ = "0.1.0"
