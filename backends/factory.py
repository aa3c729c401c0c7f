"""Turn a config's model endpoint into a running chat backend."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from backends.base import ChatBackend
from backends.embedded_server import EMBEDDED_MODEL_ALIAS, EmbeddedServer
from backends.openai_compat import OpenAICompatibleBackend
from backends.runner import Prices
from distill.config import ModelEndpoint


def prices_of(endpoint: ModelEndpoint) -> Prices:
    """The endpoint's prices per million tokens."""
    return Prices(endpoint.price_input_per_mtok, endpoint.price_output_per_mtok)


@contextlib.contextmanager
def open_chat_backend(endpoint: ModelEndpoint, log_dir: Path | None = None) -> Iterator[ChatBackend]:
    """Yield a backend for the endpoint; an embedded teacher's server lives as long as the block."""
    if endpoint.backend == "embedded" and not endpoint.base_urls:
        log_path = log_dir / "embedded_server.log" if log_dir else None
        with EmbeddedServer(context_length=endpoint.context_length, log_path=log_path) as server:
            yield OpenAICompatibleBackend(
                EMBEDDED_MODEL_ALIAS, [server.base_url], timeout_s=endpoint.timeout_s,
                max_connections=endpoint.max_in_flight, api=endpoint.api, schema_style="llama.cpp",
            )
        return
    if endpoint.backend == "vllm":
        from backends.vllm_inprocess import VLLMInProcessBackend

        yield VLLMInProcessBackend(endpoint.model, api=endpoint.api, engine_args=endpoint.engine_args)
        return
    yield OpenAICompatibleBackend(
        endpoint.model, endpoint.base_urls, endpoint.api_key_env, endpoint.timeout_s,
        max_connections=endpoint.max_in_flight, api=endpoint.api,
    )
