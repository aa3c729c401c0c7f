"""Backend for the OpenAI API and any OpenAI-compatible server (vLLM, llama.cpp, llm-katan).

Several base URLs of one model (replicas) share the load round-robin. The openai client's
own retries are off: the request runner owns retries, so every attempt is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import httpx
import httpx2
import openai

from backends.base import BackendError, ChatReply, ChatRequest
from core.errors import ConfigError, EndpointError

if TYPE_CHECKING:
    from backends.config import ModelEndpoint

log = logging.getLogger(__name__)

# vLLM's reply to the requests in flight once its engine has died; the server exits right after.
ENGINE_DEAD = "EngineCore encountered an issue"


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def cannot_connect(exc: BaseException) -> str | None:
    """Why no connection could be opened at all ("connection refused", "cannot connect": a name
    that does not resolve, no route), or None when one was opened and then failed or timed out."""
    causes = list(_causes(exc))
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return "connection refused"
    if any(isinstance(cause, (httpx.ConnectError, httpx2.ConnectError)) for cause in causes):
        return "cannot connect"
    return None


def http_failure(url: str, status: int, code: str | None = None, message: str | None = None,
                 retry_after: float | None = None) -> BackendError:
    """The BackendError for an HTTP error reply (online, or one line of a batch's output).

    Retryable: 408, 409, 429 and 5xx. Fatal (the endpoint cannot answer any request, so the
    circuit breaker counts it): 401 and 403 (the key refused), 404 (the model or path unknown),
    429 insufficient_quota (no credit left) and vLLM's dead-engine 500. The server's own words are
    kept only where they cannot carry the key (never for 401 and 403)."""
    message = (message or "").strip().replace("\n", " ")[:200]
    if status in (401, 403):
        return BackendError(f"{url}: HTTP {status} (the API key was refused)", False, None, status, fatal=True)
    if status == 404:
        return BackendError(f"{url}: HTTP 404 (model or path not found{': ' + message if message else ''})",
                            False, None, status, fatal=True)
    if status == 429 and code == "insufficient_quota":
        return BackendError(f"{url}: HTTP 429 (insufficient_quota: no credit left)", False, None, status, fatal=True)
    if status >= 500 and ENGINE_DEAD in message:
        return BackendError(f"{url}: HTTP {status} (the vLLM engine behind this endpoint died and its server stops: "
                            f"{message})", False, None, status, final=True)
    retryable = status in (408, 409, 429) or status >= 500
    return BackendError(f"{url}: HTTP {status}", retryable, retry_after, status)


def _status_error(url: str, exc: openai.APIStatusError) -> BackendError:
    body = exc.body if isinstance(exc.body, dict) else {}
    return http_failure(url, exc.status_code, str(body.get("code") or "") or None, str(body.get("message") or ""),
                        _retry_after_seconds(exc.response.headers))


def _connection_error(url: str, exc: openai.APIConnectionError) -> BackendError:
    why = None if isinstance(exc, openai.APITimeoutError) else cannot_connect(exc)
    if why is not None:
        # Retryable (a server restarting answers again soon), but counted by the circuit breaker.
        return BackendError(f"{url}: {type(exc).__name__}: {why}", retryable=True, fatal=True)
    return BackendError(f"{url}: {type(exc).__name__}", retryable=True)


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
        # Per-request seeds at temperature > 0: always, never, or auto: not to a vLLM server (on
        # vLLM's CPU engine such a seed kills the engine under chunked prefill). auto asks each
        # server, once, at its first such request (`_seeds_ok`).
        self.seed_requests = seed_requests
        self._seeds_allowed: dict[str, bool] = {}
        self._probes: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future] = {}
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
        send_seed = request.seed is not None and self.seed_requests != "never" and (
            request.temperature <= 0 or await self._seeds_ok(url, client))
        try:
            # The documented low-level `post` with the body as the API defines it, and the reply
            # read as plain JSON: the SDK's per-request type transform and model construction
            # cost more CPU than the rest of a request (bench/bench_request_path.py).
            data = await client.post(self._path(request), body=self._body(request, send_seed), cast_to=object)
        except openai.APIStatusError as exc:
            raise _status_error(url, exc) from None
        except openai.APIConnectionError as exc:
            raise _connection_error(url, exc) from None
        except (httpx.HTTPError, httpx2.HTTPError, ValueError) as exc:
            # A reply that is not the JSON the API promises (cut connection, proxy page).
            raise BackendError(f"{url}: unreadable reply: {type(exc).__name__}", retryable=True) from None
        return self._reply(data, url, self._completes(request))

    def _completes(self, request: ChatRequest) -> bool:
        """Whether the request goes to the completions route (the endpoint's api, or a raw prompt)."""
        return self.api == "completions" or request.raw_prompt is not None

    def _path(self, request: ChatRequest) -> str:
        return "/completions" if self._completes(request) else "/chat/completions"

    async def _seeds_ok(self, url: str, client: openai.AsyncOpenAI) -> bool:
        """Whether requests to `url` at temperature > 0 may carry their seed (see seed_requests)."""
        if self.seed_requests != "auto":
            return self.seed_requests == "always"
        if url not in self._seeds_allowed:
            key = (asyncio.get_running_loop(), url)
            probe = self._probes.get(key)
            if probe is None or probe.done():  # one question at a time, however many requests wait for it
                probe = self._probes[key] = asyncio.ensure_future(self._served_by_vllm(url, client))
            vllm = await asyncio.shield(probe)
            if vllm is None:  # no answer now: this request goes without its seed (always safe); ask again later
                return False
            self._seeds_allowed[url] = not vllm
        return self._seeds_allowed[url]

    async def _served_by_vllm(self, url: str, client: openai.AsyncOpenAI) -> bool | None:
        """Whether the server says it is vLLM (`owned_by: vllm` in its /models list); None when it
        could not be asked (not reachable now). A server without a model list is not vLLM."""
        try:
            listing = await client.get("/models", cast_to=object)
        except openai.APIStatusError:
            return False
        except (openai.APIConnectionError, httpx.HTTPError, httpx2.HTTPError, ValueError):
            return None
        models = listing.get("data") if isinstance(listing, dict) else None
        if any(isinstance(m, dict) and m.get("owned_by") == "vllm" for m in models or []):
            log.info("%s is a vLLM server: requests at temperature > 0 go without their seeds (seed_requests: "
                     "auto; such a seed kills vLLM's CPU engine under chunked prefill). Set seed_requests: always "
                     "for a GPU server or one started with --no-enable-chunked-prefill", url)
            return True
        return False

    def api_path(self, request: ChatRequest) -> str:
        """The API's path for `request` as a batch line names it ("/v1/chat/completions")."""
        return "/v1" + self._path(request)

    @property
    def base_url(self) -> str:
        """The first endpoint (the one that holds files and batches in batch mode)."""
        return self._urls[0]

    def body(self, request: ChatRequest) -> dict:
        """The request body the API defines (the same online and in a batch file)."""
        return self._body(request)

    def reply(self, data, url: str) -> ChatReply:
        """A reply body read as the API defines it (chat or completions, by its shape); BackendError
        when it is not one."""
        return self._reply(data, url, None)

    def sync_client(self, url: str, connect_timeout_s: float = 10.0) -> openai.OpenAI:
        """A blocking client for one URL (preflight checks and the Batch API's files and batches);
        the caller closes it. No retries of its own: its callers own theirs."""
        timeout = httpx2.Timeout(self._timeout_s, connect=min(connect_timeout_s, self._timeout_s))
        return openai.OpenAI(api_key=self._api_key, base_url=url, timeout=timeout, max_retries=0,
                             http_client=openai.DefaultHttpx2Client(timeout=timeout, verify=_tls_context()))

    def preflight(self, name: str, batch: bool = False) -> list[str]:
        """Check every URL before a stage spends anything: it answers, it accepts the key, it lists
        the model (where the server has a model list), one one-token request is answered, and, for
        batch mode, it has a Batch API. Raises EndpointError (or ConfigError for a model the server
        does not list), naming `name` (the config key: teacher, judge) and the URL; returns warnings."""
        warnings = []
        for url in self._urls:
            with self.sync_client(url) as client:
                warning = self._preflight_url(client, url, name, batch)
            if warning:
                warnings.append(warning)
        return warnings

    def _preflight_url(self, client: openai.OpenAI, url: str, name: str, batch: bool) -> str | None:
        def refused(what: str, failure: BackendError) -> EndpointError:
            return EndpointError(f"{name}: {what} failed: {failure}; nothing was sent by the stage")

        try:
            listing = client.get("/models", cast_to=object)
        except openai.APIStatusError as exc:
            failure = _status_error(url, exc)
            if exc.status_code in (401, 403):
                raise refused("GET /models", failure) from None
            listing = None  # this server has no model list (llama.cpp's answers one; a bare proxy may not)
        except openai.APIConnectionError as exc:
            raise refused("GET /models", _connection_error(url, exc)) from None
        models = [entry.get("id") for entry in (listing or {}).get("data") or [] if isinstance(entry, dict)] \
            if isinstance(listing, dict) else []
        if models and self.model not in models:
            shown = ", ".join(sorted(str(m) for m in models)[:20])
            raise ConfigError(f"key '{name}.model': {url} does not serve {self.model!r}; it lists: {shown}")
        tiny = ChatRequest(key="preflight", messages=[{"role": "user", "content": "Reply with the word OK."}],
                           max_tokens=1, temperature=0.0)
        warning = None
        for attempt in range(1, 4):
            try:
                self._reply(client.post(self._path(tiny), body=self._body(tiny), cast_to=object), url,
                            self._completes(tiny))
                break
            except openai.APIStatusError as exc:
                failure = _status_error(url, exc)
            except openai.APIConnectionError as exc:
                failure = _connection_error(url, exc)
            except BackendError as exc:  # a reply that is not the API's
                failure = exc
            if failure.fatal or not failure.retryable:
                raise refused("a one-token request", failure)
            if attempt == 3:
                if failure.status == 429:  # rate limited, but reachable and accepting the key
                    warning = f"{name}: {url} answers 429 (rate limited) to a one-token request; going on"
                    break
                raise refused("a one-token request (3 attempts)", failure)
            time.sleep(min(failure.retry_after or attempt, 10.0))
        if batch:
            try:
                client.get("/batches", options={"params": {"limit": 1}}, cast_to=object)
            except openai.APIStatusError as exc:
                raise EndpointError(f"{name}: {url} has no Batch API (GET /batches: HTTP {exc.status_code}); "
                                    f"mode: batch needs one (OpenAI's)") from None
            except openai.APIConnectionError as exc:
                raise refused("GET /batches", _connection_error(url, exc)) from None
        return warning

    def _body(self, request: ChatRequest, send_seed: bool = True) -> dict:
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
        if request.seed is not None and send_seed:
            body["seed"] = request.seed
        return body

    def _reply(self, data, url: str, completion: bool | None) -> ChatReply:
        """The reply's text, finish reason and usage; a reply of another shape is retryable.
        `completion`: a completions reply (None: whichever the choice's shape says)."""
        try:
            choice = data["choices"][0]
            if completion is None:
                completion = "message" not in choice
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
                                      max_connections=endpoint.max_in_flight, api=endpoint.api,
                                      seed_requests=endpoint.seed_requests)

    def preflight(self, endpoint: "ModelEndpoint", name: str) -> list[str]:
        """The endpoint's URLs checked before a stage spends anything (see OpenAICompatibleBackend.preflight)."""
        backend = OpenAICompatibleBackend(endpoint.model, endpoint.base_urls, endpoint.api_key_env, endpoint.timeout_s,
                                          api=endpoint.api)
        return backend.preflight(name, batch=endpoint.mode == "batch")

    def identity(self, endpoint: "ModelEndpoint") -> str:
        return url_identity(endpoint)

    def runs_locally(self, endpoint: "ModelEndpoint") -> bool:
        return False

    def model_file(self, endpoint: "ModelEndpoint") -> Path | None:
        return None
