"""Errors that stop a command before or during work with a message naming what to fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


class StageInputError(ValueError):
    """A stage cannot start: its input is missing or unusable."""
