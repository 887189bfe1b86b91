"""Shared by the benchmark scripts: print a result record and keep it as JSON under bench/results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(record: dict[str, Any], out: Path | None) -> None:
    print(json.dumps(record, indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2))
