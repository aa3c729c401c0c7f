"""Backend for the OpenAI API and any OpenAI-compatible server (vLLM, llama.cpp, llm-katan).

Several base URLs of one model (replicas) share the load round-robin. The openai client's
own retries are off: the request runner owns retries, so every attempt is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import ssl
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import httpx
import httpx2
import openai

from backends.base import BackendError, ChatReply, ChatRequest

if TYPE_CHECKING:
    from backends.config import ModelEndpoint

log = logging.getLogger(__name__)

# What vLLM's OpenAI server answers every request in flight when its engine dies (HTTP 500);
# the server then shuts down (and exits with code 0), so no later request can succeed.
VLLM_ENGINE_DEAD = "EngineCore encountered an issue"


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
        seed_requests: str = "always",
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
        # Per-request seeds at temperature > 0, by URL: always, never, or auto: not to a vLLM
        # server (on vLLM's CPU engine such a seed kills the engine under chunked prefill). auto
        # asks each server here, once, before any request is timed.
        self.seed_requests = seed_requests
        self._seeds_allowed = {url: seed_requests == "always"
                               or (seed_requests == "auto" and not self._served_by_vllm(url)) for url in self._urls}
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
        send_seed = self.seed_requests != "never" and (self._seeds_allowed[url] or request.temperature <= 0)
        try:
            # The documented low-level `post` with the body as the API defines it, and the reply
            # read as plain JSON: the SDK's per-request type transform and model construction
            # cost more CPU than the rest of a request (bench/bench_request_path.py).
            data = await client.post(self._path, body=self._body(request, send_seed), cast_to=object)
        except openai.APIStatusError as exc:
            status = exc.status_code
            if status == 500 and VLLM_ENGINE_DEAD in f"{exc.body} {exc.message}":
                raise BackendError(f"{url}: HTTP 500: the vLLM engine behind this endpoint died "
                                   f"({VLLM_ENGINE_DEAD}; its server log has the cause) and its server stops: "
                                   "no later request can be answered", retryable=False, status=status,
                                   fatal=True) from None
            retryable = status in (408, 409, 429) or status >= 500
            raise BackendError(
                f"{url}: HTTP {status}", retryable, _retry_after_seconds(exc.response.headers), status
            ) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise BackendError(f"{url}: {type(exc).__name__}", retryable=True) from None
        except (httpx.HTTPError, httpx2.HTTPError, ValueError) as exc:
            # A reply that is not the JSON the API promises (cut connection, proxy page).
            raise BackendError(f"{url}: unreadable reply: {type(exc).__name__}", retryable=True) from None
        return self._reply(data, url)

    @property
    def _path(self) -> str:
        return "/completions" if self.api == "completions" else "/chat/completions"

    def _served_by_vllm(self, url: str) -> bool:
        """Whether the server at `url` says it is vLLM (`owned_by: vllm` in its /models list). A
        server that cannot say in time is taken for another: its requests keep their seeds."""
        ask = urllib.request.Request(f"{url.rstrip('/')}/models", headers={"Authorization": f"Bearer {self._api_key}"})
        try:
            with urllib.request.urlopen(ask, timeout=min(self._timeout_s, 10.0), context=_tls_context()) as reply:
                models = json.loads(reply.read(1 << 20)).get("data") or []
        except Exception:  # noqa: BLE001 - unreachable, not JSON, not a list: not known to be vLLM
            return False
        if any(isinstance(m, dict) and m.get("owned_by") == "vllm" for m in models):
            log.info("%s is a vLLM server: requests go without their seeds (seed_requests: auto; a seed at "
                     "temperature > 0 kills vLLM's CPU engine under chunked prefill). Set seed_requests: always "
                     "for a GPU server or one started with --no-enable-chunked-prefill", url)
            return True
        return False

    def _body(self, request: ChatRequest, send_seed: bool = True) -> dict:
        """The request body of the chat (or completions) API."""
        body = {"model": self.model, "max_tokens": request.max_tokens, "temperature": request.temperature,
                "top_p": request.top_p}
        if self.api == "completions":
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
        if request.seed is not None and send_seed:
            body["seed"] = request.seed
        return body

    def _reply(self, data, url: str) -> ChatReply:
        """The reply's text, finish reason and usage; a reply of another shape is retryable."""
        try:
            choice = data["choices"][0]
            text = choice["text"] if self.api == "completions" else choice["message"]["content"]
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
            raise BackendError(f"{url}: unreadable reply: not a {self.api} reply", retryable=True) from None

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
                                      max_connections=endpoint.max_in_flight, api=endpoint.api,
                                      seed_requests=endpoint.seed_requests)

    def identity(self, endpoint: "ModelEndpoint") -> str:
        return url_identity(endpoint)

    def runs_locally(self, endpoint: "ModelEndpoint") -> bool:
        return False

    def model_file(self, endpoint: "ModelEndpoint") -> Path | None:
        return None
