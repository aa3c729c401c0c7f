"""Backend for the OpenAI API and any OpenAI-compatible server (vLLM, llama.cpp, llm-katan).

Several base URLs of one model (replicas) share the load round-robin. The openai client's
own retries are off: the request runner owns retries, so every attempt is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import httpx
import httpx2
import openai

from backends.base import BackendError, ChatReply, ChatRequest

if TYPE_CHECKING:
    from backends.config import ModelEndpoint


def _retry_after_seconds(headers: httpx.Headers | None) -> float | None:
    if not headers:
        return None
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; the runner's own backoff applies


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """One TLS context (the certifi bundle, as httpx's default) shared by every client: building
    one costs ~20 ms of CPU, and each stage's event loop opens clients of its own."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class OpenAICompatibleBackend:
    """Chat completions through the openai client against one or more endpoints."""

    def __init__(
        self,
        model: str,
        base_urls: list[str] | None = None,
        api_key_env: str | None = None,
        timeout_s: float = 120.0,
        max_connections: int = 64,
        api: str = "chat",
        schema_style: str = "openai",
    ):
        api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not api_key:
            raise ValueError(f"environment variable {api_key_env} (named by api_key_env) is not set")
        # Local servers accept any key; the openai client insists on one.
        api_key = api_key or "not-needed"
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._urls = list(base_urls or ["https://api.openai.com/v1"])
        self._clients: dict[tuple[asyncio.AbstractEventLoop, str], openai.AsyncOpenAI] = {}
        self._next = itertools.cycle(range(len(self._urls)))
        self.model = model
        self.api = api
        # llama.cpp's server takes a schema inside json_object; OpenAI and vLLM take json_schema.
        self.schema_style = schema_style
        self.identity = f"openai-compatible:{model}@" + ",".join(self._urls)
        self.server_pid: int | None = None  # the server runs elsewhere (set by whoever started one)

    def _client(self, url: str) -> openai.AsyncOpenAI:
        # httpx connections belong to the event loop that opened them: a run sends on one loop
        # (backends.request_loop), but a single call of run_requests runs one of its own. So a
        # client is opened lazily per loop and closed by aclose() on that loop.
        key = (asyncio.get_running_loop(), url)
        if key not in self._clients:
            # openai's own httpx2 transport: the legacy httpx pool spent ~3x the CPU per request
            # at 64 in flight (bench/bench_request_path.py).
            limits = httpx2.Limits(max_connections=self._max_connections, max_keepalive_connections=self._max_connections)
            self._clients[key] = openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=url,
                timeout=self._timeout_s,
                max_retries=0,
                http_client=openai.DefaultAsyncHttpx2Client(limits=limits, timeout=self._timeout_s,
                                                            verify=_tls_context()),
            )
        return self._clients[key]

    async def chat(self, request: ChatRequest) -> ChatReply:
        url = self._urls[next(self._next)]
        client = self._client(url)
        try:
            # The documented low-level `post` with the body as the API defines it, and the reply
            # read as plain JSON: the SDK's per-request type transform and model construction
            # cost more CPU than the rest of a request (bench/bench_request_path.py).
            data = await client.post(self._path(request), body=self._body(request), cast_to=object)
        except openai.APIStatusError as exc:
            status = exc.status_code
            retryable = status in (408, 409, 429) or status >= 500
            raise BackendError(
                f"{url}: HTTP {status}", retryable, _retry_after_seconds(exc.response.headers), status
            ) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise BackendError(f"{url}: {type(exc).__name__}", retryable=True) from None
        except (httpx.HTTPError, httpx2.HTTPError, ValueError) as exc:
            # A reply that is not the JSON the API promises (cut connection, proxy page).
            raise BackendError(f"{url}: unreadable reply: {type(exc).__name__}", retryable=True) from None
        return self._reply(data, url, self._completes(request))

    def _completes(self, request: ChatRequest) -> bool:
        """Whether the request goes to the completions route (the endpoint's api, or a raw prompt)."""
        return self.api == "completions" or request.raw_prompt is not None

    def _path(self, request: ChatRequest) -> str:
        return "/completions" if self._completes(request) else "/chat/completions"

    def _body(self, request: ChatRequest) -> dict:
        """The request body of the chat (or completions) API."""
        body = {"model": self.model, "max_tokens": request.max_tokens, "temperature": request.temperature,
                "top_p": request.top_p}
        if request.raw_prompt is not None:
            body["prompt"] = request.raw_prompt
        elif self.api == "completions":
            # A completion-style teacher continues the prompt text itself.
            body["prompt"] = "\n\n".join(m["content"] for m in request.messages)
        else:
            body["messages"] = request.messages
            if request.json_schema is not None and self.schema_style == "llama.cpp":
                body["response_format"] = {"type": "json_object", "schema": request.json_schema}
            elif request.json_schema is not None:
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": "reply", "schema": request.json_schema}}
            elif request.json_mode:
                body["response_format"] = {"type": "json_object"}
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    def _reply(self, data, url: str, completion: bool) -> ChatReply:
        """The reply's text, finish reason and usage; a reply of another shape is retryable."""
        try:
            choice = data["choices"][0]
            text = choice["text"] if completion else choice["message"]["content"]
            usage = data.get("usage") or {}
            if text is not None and not isinstance(text, str):
                raise TypeError(text)
            return ChatReply(
                text=text or "",
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=usage.get("prompt_tokens") or 0,
                completion_tokens=usage.get("completion_tokens") or 0,
                endpoint=url,
            )
        except (KeyError, IndexError, TypeError, AttributeError):
            if isinstance(data, dict) and not data.get("choices"):
                raise BackendError(f"{url}: reply without choices", retryable=True) from None
            kind = "completions" if completion else "chat"
            raise BackendError(f"{url}: unreadable reply: not a {kind} reply", retryable=True) from None

    async def aclose(self) -> None:
        """Close the clients opened on the running loop (those of other loops stay theirs)."""
        loop = asyncio.get_running_loop()
        for key in [key for key in self._clients if key[0] is loop]:
            await self._clients.pop(key).close()


def url_identity(endpoint: "ModelEndpoint") -> str:
    """A stable name for a model reached over HTTP: backend, model and where (never a key)."""
    where = ",".join(endpoint.base_urls) or "api.openai.com"
    return f"{endpoint.backend}:{endpoint.model}@{where}"


class OpenAICompatibleKind:
    """`backend: openai`: OpenAI, or any OpenAI-compatible server at `base_urls`."""

    name = "openai"
    description = ("OpenAI, or any OpenAI-compatible server (vLLM, llama.cpp, ...) via base_urls; "
                   "several URLs share the load")

    @contextlib.contextmanager
    def open(self, endpoint: "ModelEndpoint", log_dir: Path | None = None) -> Iterator[OpenAICompatibleBackend]:
        yield OpenAICompatibleBackend(endpoint.model, endpoint.base_urls, endpoint.api_key_env, endpoint.timeout_s,
                                      max_connections=endpoint.max_in_flight, api=endpoint.api)

    def identity(self, endpoint: "ModelEndpoint") -> str:
        return url_identity(endpoint)

    def runs_locally(self, endpoint: "ModelEndpoint") -> bool:
        return False

    def model_file(self, endpoint: "ModelEndpoint") -> Path | None:
        return None
