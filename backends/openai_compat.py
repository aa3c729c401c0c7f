"""Backend for the OpenAI API and any OpenAI-compatible server (vLLM, llama.cpp, llm-katan).

Several base URLs of one model (replicas) share the load round-robin. The openai client's
own retries are off: the request runner owns retries, so every attempt is counted.
"""

from __future__ import annotations

import functools
import itertools
import os
import ssl

import httpx
import httpx2
import openai

from backends.base import BackendError, ChatReply, ChatRequest


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
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._next = itertools.cycle(range(len(self._urls)))
        self.model = model
        self.api = api
        # llama.cpp's server takes a schema inside json_object; OpenAI and vLLM take json_schema.
        self.schema_style = schema_style
        self.identity = f"openai-compatible:{model}@" + ",".join(self._urls)

    def _client(self, url: str) -> openai.AsyncOpenAI:
        # httpx connections belong to the event loop that opened them; every stage runs its
        # own loop, so clients are opened lazily and closed by aclose() at the loop's end.
        if url not in self._clients:
            # openai's own httpx2 transport: the legacy httpx pool spent ~3x the CPU per request
            # at 64 in flight (bench/bench_request_path.py).
            limits = httpx2.Limits(max_connections=self._max_connections, max_keepalive_connections=self._max_connections)
            self._clients[url] = openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=url,
                timeout=self._timeout_s,
                max_retries=0,
                http_client=openai.DefaultAsyncHttpx2Client(limits=limits, timeout=self._timeout_s,
                                                            verify=_tls_context()),
            )
        return self._clients[url]

    async def chat(self, request: ChatRequest) -> ChatReply:
        url = self._urls[next(self._next)]
        client = self._client(url)
        extra = {}
        if request.json_schema is not None and self.schema_style == "llama.cpp":
            extra["response_format"] = {"type": "json_object", "schema": request.json_schema}
        elif request.json_schema is not None:
            extra["response_format"] = {"type": "json_schema",
                                        "json_schema": {"name": "reply", "schema": request.json_schema}}
        elif request.json_mode:
            extra["response_format"] = {"type": "json_object"}
        if request.seed is not None:
            extra["seed"] = request.seed
        try:
            if self.api == "completions":
                # A completion-style teacher continues the prompt text itself.
                response = await client.completions.create(
                    model=self.model,
                    prompt="\n\n".join(m["content"] for m in request.messages),
                    max_tokens=request.max_tokens,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    **({"seed": request.seed} if request.seed is not None else {}),
                )
            else:
                response = await client.chat.completions.create(
                    model=self.model,
                    messages=request.messages,
                    max_tokens=request.max_tokens,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    **extra,
                )
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
        if not response.choices:
            raise BackendError(f"{url}: reply without choices", retryable=True)
        choice = response.choices[0]
        usage = response.usage
        text = choice.text if self.api == "completions" else choice.message.content
        return ChatReply(
            text=text or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            endpoint=url,
        )

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()
