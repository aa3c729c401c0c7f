"""How to reach a model (teacher or judge), and the token and money budget every request counts against."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from backends.registry import BACKENDS
from backends.runner import Prices
from core.settings import Settings


class ModelEndpoint(Settings):
    """How to reach a model that answers chat requests (teacher or judge)."""

    backend: str = Field(
        "embedded",
        description="The backend's name in backends.registry: "
        + "; ".join(f"{name}: {kind.description}" for name, kind in BACKENDS.items()) + ".",
    )
    model: str = Field("smollm2-135m-instruct", description="Model name sent with each request.")
    api: Literal["chat", "completions"] = Field(
        "chat",
        description="chat: the prompt is sent as a user message; completions: the teacher continues "
        "the prompt text (completion-style models, as in the original Alpaca run).",
    )
    base_urls: list[str] = Field(
        default_factory=list,
        description="OpenAI-compatible endpoints that share the load (replicas of one model). "
        "Empty with backend openai means the OpenAI API.",
    )
    api_key_env: str | None = Field(
        None, description="Name of the environment variable that holds the API key (never the key itself)."
    )
    max_in_flight: int = Field(4, ge=1, le=4096, description="Requests in flight at once, across endpoints.")
    timeout_s: float = Field(180.0, gt=0, description="Timeout of one wait for data from the server; a whole attempt may take twice this.")
    max_retries: int = Field(5, ge=0, le=50, description="Retries of a failed request (429, 5xx, timeouts).")
    price_input_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    price_output_per_mtok: float = Field(0.0, ge=0, description="USD per million completion tokens.")
    mode: Literal["online", "batch"] = Field(
        "online",
        description="online: requests are sent as they are planned, max_in_flight at a time; batch: they go "
        "into files of the OpenAI Batch API (backend openai only), run as batches within 24 h at the batch "
        "prices, and their results are journaled like online replies (see README, 'Batch mode').",
    )
    batch_price_input_per_mtok: float | None = Field(
        None, ge=0, description="USD per million prompt tokens through the Batch API; empty: half of "
        "price_input_per_mtok (OpenAI's batch discount).")
    batch_price_output_per_mtok: float | None = Field(
        None, ge=0, description="USD per million completion tokens through the Batch API; empty: half of "
        "price_output_per_mtok.")
    batch_max_requests: int = Field(
        50_000, ge=1, le=50_000, description="Requests per batch file (the Batch API takes at most 50,000 "
        "lines and 200 MB a file; a file is also cut before 200 MB).")
    batch_wave_requests: int | None = Field(
        None, ge=1, description="Batch mode: requests a stage submits before it waits for their results and "
        "decides whether to plan more (generation stops at its target only between waves). Empty: everything "
        "the stage plans at once (generate: up to generate.max_requests).")
    batch_poll_s: float = Field(60.0, gt=0, le=3600, description="Seconds between two looks at a batch's status.")
    breaker_window: int = Field(
        16, ge=1, le=100_000, description="The circuit breaker's window: a stage stops at once, with the "
        "endpoint and the cause named, after this many attempts in a row (and at least max_in_flight) failed "
        "for a cause retrying cannot fix (401, 403, 404, insufficient quota, connection refused, a dead engine).")
    preflight: bool = Field(
        True, description="Before a stage sends anything, check the endpoint: it answers, accepts the key, "
        "lists the model (where the server lists models) and answers one one-token request (not charged to "
        "the budget). Not needed for the embedded teacher started here.")
    context_length: int = Field(4096, ge=256, description="Context window of the embedded server.")
    threads: int | None = Field(
        None, ge=1, le=512,
        description="Threads of the embedded llama.cpp server (prompts and decoding), and of the llama.cpp servers "
        "that answer for GGUF variants in the evaluate stage, so both are costed alike. Default: one per core "
        "less one, left to the pipeline (llama.cpp's threads spin while they wait; with one per core and other "
        "work on the machine it ran ten times slower; in the demo's own generate stage on 2 cores, 2 threads "
        "were 1.45x slower than 1, docs/benchmarks.md). For machines where that rule is wrong: many cores, or "
        "nothing else on them.",
    )
    seed_requests: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Whether requests carry their per-request seed. auto: yes, except to vLLM (a server whose "
        "/models names vllm as owner gets none at temperature > 0; the in-process engine on a CPU runs without "
        "chunked prefill and keeps them), since on vLLM's CPU engine a seed at temperature > 0 with chunked "
        "prefill kills the engine; always: every seed sent (a GPU server, or a CPU one started with "
        "--no-enable-chunked-prefill); never: none sent.",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="backend vllm only: keyword arguments for vLLM's AsyncEngineArgs "
        "(tensor_parallel_size, gpu_memory_utilization, max_model_len, ...).",
    )

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, name: str) -> str:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
        return name

    def prices(self) -> Prices:
        """What a request through this endpoint costs per million tokens, in its mode."""
        return self.batch_prices() if self.mode == "batch" else self.online_prices()

    def online_prices(self) -> Prices:
        """The online API's prices per million tokens."""
        return Prices(self.price_input_per_mtok, self.price_output_per_mtok)

    def batch_prices(self) -> Prices:
        """The Batch API's prices per million tokens (half the online ones unless set)."""
        return Prices(self.price_input_per_mtok / 2 if self.batch_price_input_per_mtok is None
                      else self.batch_price_input_per_mtok,
                      self.price_output_per_mtok / 2 if self.batch_price_output_per_mtok is None
                      else self.batch_price_output_per_mtok)

    @property
    def priced(self) -> bool:
        """True when the config gives the endpoint a price."""
        return bool(self.price_input_per_mtok or self.price_output_per_mtok)

    @model_validator(mode="after")
    def _batch_needs_openai(self) -> "ModelEndpoint":
        if self.mode == "batch" and self.backend != "openai":
            raise ValueError(f"mode batch needs backend openai (the OpenAI Batch API); backend is {self.backend}")
        return self

    @model_validator(mode="after")
    def _engine_args_need_vllm(self) -> "ModelEndpoint":
        if self.engine_args and self.backend != "vllm":
            raise ValueError(f"engine_args is for backend vllm only (backend is {self.backend})")
        return self

    @model_validator(mode="after")
    def _no_credentials_in_urls(self) -> "ModelEndpoint":
        # Secrets come only from the environment: a URL is copied into manifests, summaries,
        # logs and model cards, so one that carries a password or a key is refused here.
        from urllib.parse import parse_qsl, urlsplit

        for url in self.base_urls:
            parts = urlsplit(url)
            if parts.username or parts.password:
                raise ValueError(f"base_urls: {parts.scheme}://…@{parts.hostname}: credentials in a URL are not "
                                 "accepted; put the key in an environment variable named by api_key_env")
            secret = [name for name, _ in parse_qsl(parts.query)
                      if any(word in name.lower() for word in ("key", "token", "secret", "password", "sig"))]
            if secret:
                raise ValueError(f"base_urls: {parts.hostname}: query parameter {secret[0]!r} looks like a "
                                 "credential; put the key in an environment variable named by api_key_env")
        return self


class BudgetConfig(Settings):
    """Limits that stop requests cleanly; everything so far is kept."""

    max_tokens: int | None = Field(None, ge=1, description="Prompt + completion tokens across all stages.")
    max_cost_usd: float | None = Field(None, ge=0, description="USD across all stages (from the endpoints' prices).")
