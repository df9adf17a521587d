"""What every config section shares: the error, the enums and the positive-number check."""

from __future__ import annotations

from enum import Enum


class ConfigError(ValueError):
    """A configuration value is not allowed; the message is one sentence naming key and value."""


class OnInvalid(str, Enum):
    error = "error"
    skip = "skip"


class Mode(str, Enum):
    frozen = "frozen"
    lora = "lora"
    full = "full"


COMPONENTS = ("vision", "projector", "language")


def positive(key: str, value: float) -> None:
    """Refuse a value of `key` that is not positive, in one sentence."""
    if value <= 0:
        raise ConfigError(f"{key}={value} is not allowed: use a positive value.")
