"""Shared by the benchmark scripts: the device's name, and a result record printed and kept as JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def device_name(device: str | None = None) -> str:
    """The GPU's name, or the CPU and its core count: what every figure is recorded with."""
    import torch

    if torch.cuda.is_available() and (device is None or device.startswith("cuda")):
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} × {os.cpu_count()} cores"


def emit(record: dict[str, Any], out: Path | None) -> None:
    print(json.dumps(record, indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2))
