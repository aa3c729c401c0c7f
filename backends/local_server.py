"""A model server run as a child process on a free loopback port (llama.cpp's for the embedded
teacher, vLLM's OpenAI server): started, waited for until `/v1/models` answers, and stopped,
with its whole process group, when the `with` block ends, whether the work finished, failed
or was interrupted with Ctrl-C. On Linux the server is also stopped when its parent dies,
even by SIGKILL, so no server is left running behind a killed run.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from core.net import free_port

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to stop us when the pipeline process dies, even
    by SIGKILL, so no server is left running behind a killed run."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() and atexit still cover normal exits


class LocalServer:
    """Context manager running `command(port)` and yielding itself once the server answers at
    `base_url`. Subclasses say what to run (`command`), what to call it in messages (`name`)
    and what to add to its environment (`extra_env`)."""

    name = "server"

    def __init__(self, log_path: Path | None = None, startup_timeout_s: float = 180.0):
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.port: int | None = None
        self._process: subprocess.Popen | None = None
        self._log_handle = None

    def command(self, port: int) -> list[str]:
        """The command line that serves the model on 127.0.0.1:port."""
        raise NotImplementedError

    def extra_env(self) -> dict[str, str]:
        """Environment variables the server needs on top of ours."""
        return {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (for measuring its memory), else None."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The server's exit code once it has exited on its own, else None."""
        return self._process.poll() if self._process is not None else None

    def _see_log(self) -> str:
        return f"; see {self.log_path}" if self.log_path else ""

    def start(self) -> str:
        """Start the server and wait until it answers; return its base URL."""
        self.port = free_port()
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = self.log_path.open("ab")
        log.info("starting %s on 127.0.0.1:%d", self.name, self.port)
        self._process = subprocess.Popen(
            self.command(self.port),
            stdout=self._log_handle or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.extra_env()},
            start_new_session=True,  # Ctrl-C reaches us, and we stop the server in order
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise RuntimeError(f"{self.name} server exited with code {code} at start{self._see_log()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        log.info("%s ready at %s", self.name, self.base_url)
                        return self.base_url
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} server did not answer within {self.startup_timeout_s:.0f} s{self._see_log()}")

    def stop(self) -> None:
        """Stop the server's process group (terminate, then kill after 10 s); safe to call twice."""
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
            log.info("%s stopped", self.name)
        elif process is not None:
            # Exited on its own (a vLLM server whose engine died exits with 0): children it
            # left in its process group go too.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
