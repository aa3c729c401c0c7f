"""The one interface every model backend implements.

A backend answers one chat request per call (one attempt, no retries); the request
runner (`backends.runner`) adds concurrency, retries, journaling and budgets on top, so
generation, rating and judging never know which backend they talk to.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from backends.config import ModelEndpoint


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
    # Text sent as is to the completions route, whatever the endpoint's `api` (no chat template
    # applied: it holds the template's own markup, as Magpie's pre-query prompt does); None: `messages`.
    raw_prompt: str | None = None


@dataclass(frozen=True)
class ChatReply:
    """What one successful attempt returned."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    endpoint: str


class BackendError(Exception):
    """A failed attempt. `retryable` says whether trying again may help; `fatal` that the endpoint
    itself cannot answer any request (nothing listening, the API key refused, the model or path
    unknown, a dead engine): the circuit breaker (backends.breaker) counts those. `final` that the
    endpoint itself said it can answer nothing more (vLLM's engine died: its server exits, an
    in-process engine refuses every later request): the breaker trips at once."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None, status: int | None = None,
                 fatal: bool = False, final: bool = False):
        super().__init__(message)
        self.retryable = retryable and not final
        self.retry_after = retry_after
        self.status = status
        self.fatal = fatal or final
        self.final = final

    @property
    def kind(self) -> str:
        """A short name for what went wrong ("HTTP 503", "APITimeoutError"), without the URL."""
        return f"HTTP {self.status}" if self.status else str(self).split(": ", 1)[-1]


# Far above any reply within a request's max_tokens; journal lines stay well under the
# record readers' line limit (core.records.MAX_LINE_BYTES) even with every character escaped.
MAX_REPLY_CHARS = 1_000_000


@dataclass(frozen=True)
class RequestOutcome:
    """What became of one request after its retries: the reply, or why it failed. Its journal
    line (`to_journal`) is what a rerun reads back (`from_journal`) instead of asking again."""

    key: str
    meta: dict
    ok: bool
    attempts: int = 1
    latency_s: float = 0.0
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    endpoint: str | None = None
    error: str | None = None
    attempt_errors: tuple[str, ...] = ()  # the kind of each failed attempt ("HTTP 503", ...)
    cut_from_chars: int | None = None  # a reply longer than MAX_REPLY_CHARS, cut to it

    @classmethod
    def replied(cls, request_key: str, meta: dict, reply: "ChatReply", attempts: int, latency_s: float,
                attempt_errors: list[str] | tuple[str, ...] = ()) -> "RequestOutcome":
        """A request that was answered (the reply cut at MAX_REPLY_CHARS if a server ignored max_tokens)."""
        text, finish_reason, cut = reply.text, reply.finish_reason, None
        if len(text) > MAX_REPLY_CHARS:
            # Keep what a reply cut at the limit would hold, so that one babbling reply cannot
            # make the journal unreadable on resume.
            cut, text, finish_reason = len(text), text[:MAX_REPLY_CHARS], "length"
        return cls(key=request_key, meta=meta, ok=True, attempts=attempts, latency_s=round(latency_s, 4),
                   text=text, finish_reason=finish_reason, prompt_tokens=reply.prompt_tokens,
                   completion_tokens=reply.completion_tokens, endpoint=reply.endpoint,
                   attempt_errors=tuple(attempt_errors), cut_from_chars=cut)

    @classmethod
    def failed(cls, request_key: str, meta: dict, error: str, attempts: int, latency_s: float,
               attempt_errors: list[str] | tuple[str, ...] = ()) -> "RequestOutcome":
        """A request that failed after its retries, with the last error."""
        return cls(key=request_key, meta=meta, ok=False, attempts=attempts, latency_s=round(latency_s, 4),
                   error=error, attempt_errors=tuple(attempt_errors))

    def to_journal(self) -> dict:
        """The journal line: the same keys in the same order as every earlier run wrote."""
        entry = {"key": self.key, "meta": self.meta, "attempts": self.attempts, "latency_s": self.latency_s}
        if self.attempt_errors:
            entry["attempt_errors"] = list(self.attempt_errors)
        if not self.ok:
            entry.update(ok=False, error=self.error)
            return entry
        if self.cut_from_chars is not None:
            entry["cut_from_chars"] = self.cut_from_chars
        entry.update(ok=True, text=self.text, finish_reason=self.finish_reason, prompt_tokens=self.prompt_tokens,
                     completion_tokens=self.completion_tokens, endpoint=self.endpoint)
        return entry

    @classmethod
    def from_journal(cls, entry: dict) -> "RequestOutcome":
        """An outcome read back from its journal line."""
        return cls(key=entry["key"], meta=entry.get("meta") or {}, ok=bool(entry.get("ok")),
                   attempts=entry.get("attempts", 1), latency_s=entry.get("latency_s", 0.0), text=entry.get("text"),
                   finish_reason=entry.get("finish_reason"), prompt_tokens=entry.get("prompt_tokens", 0) or 0,
                   completion_tokens=entry.get("completion_tokens", 0) or 0, endpoint=entry.get("endpoint"),
                   error=entry.get("error"), attempt_errors=tuple(entry.get("attempt_errors") or ()),
                   cut_from_chars=entry.get("cut_from_chars"))


@runtime_checkable
class ChatBackend(Protocol):
    """Answers chat requests; `identity` names the model for manifests and reports, `server_pid`
    is the local process serving it (None when it runs elsewhere or in this process)."""

    identity: str
    server_pid: int | None

    async def chat(self, request: ChatRequest) -> ChatReply:
        """Make one attempt at the request; raise BackendError on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class BackendKind(Protocol):
    """One kind of backend a config can name (`teacher.backend: NAME`): how to open it for an
    endpoint, and what the reports need to know about it. Registered in `backends.registry`."""

    name: str
    description: str

    def open(self, endpoint: "ModelEndpoint", log_dir: Path | None) -> contextlib.AbstractContextManager[ChatBackend]:
        """A context that yields a ready backend and releases what it started (a server) on exit."""
        ...

    def identity(self, endpoint: "ModelEndpoint") -> str:
        """A name for the model that does not change between runs (no ports, no keys)."""
        ...

    def runs_locally(self, endpoint: "ModelEndpoint") -> bool:
        """True when the model runs on this machine, so its cost is this machine's time."""
        ...

    def model_file(self, endpoint: "ModelEndpoint") -> Path | None:
        """The GGUF file the model is served from, when it is one on this machine (for its size
        and parameter count); else None."""
        ...
