"""Checkpoint files: written atomically, read back with ``weights_only=True`` (no arbitrary pickles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rayclf.storage import write_atomically
from rayclf.train import CHECKPOINT_FILE


def save_checkpoint(state: dict[str, Any], folder: Path) -> Path:
    path = folder / CHECKPOINT_FILE

    def write(fs: Any, tmp: str) -> None:
        with fs.open_output_stream(tmp) as f:
            torch.save(state, f)

    write_atomically(str(path), write)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file (or the checkpoint inside a folder) safely."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        from rayclf.config import UserError

        raise UserError(f"checkpoint {path} does not exist.")
    return torch.load(path, map_location=map_location, weights_only=True)
