"""The leaf every config module builds on: the user-error types, the strict base model, spelling hints.

It imports nothing from rayclf, so the trial config, the model-options registry and every model family can
share it without importing each other.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict


class UserError(Exception):
    """A problem the user can fix (bad config, missing data); the CLI prints it and exits with code 2."""


class ConfigError(UserError, ValueError):
    """A configuration value or file is wrong."""


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on construction."""

    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=())


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid spelling, or None when nothing is close."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return match[0] if match else None
