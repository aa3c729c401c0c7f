"""Errors that stop a command before or during work with a message naming what to fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


class StageInputError(ValueError):
    """A stage cannot start: its input is missing or unusable."""


class EndpointError(RuntimeError):
    """A model endpoint cannot answer: nothing listens there, it refuses the API key, it does not
    serve the model, its engine died, or a batch of it failed. The message names the endpoint and
    the cause; what was answered before is kept in the journals, so a rerun resumes."""


class StageFailed(RuntimeError):
    """A stage ran but kept nothing because its requests failed; it is not marked finished, so a
    rerun (once the endpoint is fixed) runs it again and reuses every reply already journaled."""
