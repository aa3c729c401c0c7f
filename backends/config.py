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
    context_length: int = Field(4096, ge=256, description="Context window of the embedded server.")
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
        """The endpoint's prices per million tokens."""
        return Prices(self.price_input_per_mtok, self.price_output_per_mtok)

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
