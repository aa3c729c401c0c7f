"""The model backends, by the name a config gives in `teacher.backend` / `judge.backend`.

Each backend is one module with a `BackendKind` (how to open it for an endpoint, a stable
identity, whether it runs on this machine); adding one is that module and one line in
`BACKENDS`. The config validates names against this table, and every stage reaches its
models through `open_chat_backend`, so no other code knows which backends exist.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from backends.base import BackendKind, ChatBackend
from backends.embedded_server import EmbeddedKind
from backends.openai_compat import OpenAICompatibleKind
from backends.vllm_inprocess import VLLMInProcessKind

if TYPE_CHECKING:
    from backends.config import ModelEndpoint

BACKENDS: dict[str, BackendKind] = {kind.name: kind for kind in (
    EmbeddedKind(),
    OpenAICompatibleKind(),
    VLLMInProcessKind(),
)}


def backend_kind(name: str) -> BackendKind:
    """The registered backend called `name`; an unknown name is a ValueError listing the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None


def open_chat_backend(endpoint: "ModelEndpoint", log_dir: Path | None = None) -> contextlib.AbstractContextManager[ChatBackend]:
    """A context that yields a ready backend for the endpoint (an embedded server lives as long as it)."""
    return backend_kind(endpoint.backend).open(endpoint, log_dir)


def endpoint_identity(endpoint: "ModelEndpoint") -> str:
    """A name for the model behind an endpoint that does not change between runs (no ports, no keys)."""
    return backend_kind(endpoint.backend).identity(endpoint)


def model_file(endpoint: "ModelEndpoint") -> Path | None:
    """The GGUF file the endpoint's model is served from on this machine, or None."""
    return backend_kind(endpoint.backend).model_file(endpoint)


def runs_locally(endpoint: "ModelEndpoint") -> bool:
    """True when the endpoint's model runs on this machine (its cost is this machine's time)."""
    return backend_kind(endpoint.backend).runs_locally(endpoint)
