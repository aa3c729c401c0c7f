"""llm-katan, a third-party OpenAI-compatible test server, started for benchmarks and tests.

`llm-katan -m echo -b echo` answers every chat request at once with the request's own text
and can inject faults (error rates, rate limits, latency, timeouts). One process group per
server, so stopping it also stops uvicorn's workers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MODEL = "echo"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class KatanServer:
    process: subprocess.Popen
    url: str  # the OpenAI base URL, ending in /v1
    command: list[str]

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) used so far by the server and its workers."""
        import psutil

        total = 0.0
        try:
            root = psutil.Process(self.process.pid)
            for proc in [root, *root.children(recursive=True)]:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        return total

    def stop(self) -> None:
        """Stop the server's whole process group (its uvicorn workers included)."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def start_katan(*flags: str, stats_file: str | Path, workers: int = 1, startup_s: float = 60.0) -> KatanServer:
    """Start an echo server on a free port with extra llm-katan flags; wait until it answers."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "llm-katan"), "-m", MODEL, "-b", "echo", "-p", str(port),
               "-h", "127.0.0.1", "--disable-dashboard", "--stats-file", str(stats_file),
               "--log-level", "warning", "-w", str(workers), *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    server = KatanServer(process, f"http://127.0.0.1:{port}/v1", command)
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llm-katan exited with {process.returncode}: {' '.join(command)}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server
        except OSError:
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"llm-katan did not start in {startup_s:.0f} s: {' '.join(command)}")
