"""The one interface every model backend implements.

A backend answers one chat request per call (one attempt, no retries); the request
runner (`backends.runner`) adds concurrency, retries, journaling and budgets on top, so
generation, rating and judging never know which backend they talk to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for; `key` identifies it across reruns."""

    key: str
    messages: list[dict]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    json_mode: bool = False
    json_schema: dict | None = None  # constrain the reply to this JSON schema (structured output)
    seed: int | None = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ChatReply:
    """What one successful attempt returned."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    endpoint: str


class BackendError(Exception):
    """A failed attempt. `retryable` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


@runtime_checkable
class ChatBackend(Protocol):
    """Answers chat requests; `identity` names the model for manifests and reports."""

    identity: str

    async def chat(self, request: ChatRequest) -> ChatReply:
        """Make one attempt at the request; raise BackendError on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
