"""What the benchmark scripts share: the llm-katan server they measure against, CPU and memory
readings, the rounds that time several variants fairly, tables and a line about the machine.

llm-katan (`llm-katan -m echo -b echo`) is a third-party OpenAI-compatible test server that
answers every chat request at once with the request's own text and can inject faults (error
rates, rate limits, latency, timeouts); the tests start it through here too. One process group
per server, so stopping it also stops uvicorn's workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from core.net import free_port

MODEL = "echo"
REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The real data sets beside the checkout (../shared/data), or $SELFINSTRUCT_DATA_DIR."""
    return Path(os.environ.get("SELFINSTRUCT_DATA_DIR") or REPO.parent / "shared" / "data")


def machine_line() -> str:
    """Python, architecture, CPUs and memory of this machine, for the top of a benchmark's output."""
    memory = ""
    with contextlib.suppress(ImportError):
        import psutil

        memory = f", {psutil.virtual_memory().total / 2**30:.0f} GiB"
    return f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs{memory}"


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and all its children."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return total


def rss_mb() -> float:
    """This process's resident memory, MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def malloc_trim() -> None:
    """Hand freed heap memory back to the OS, so RSS shows what is still held."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def interleaved_rounds(names: Sequence[str], repeats: int, run_one: Callable[[str, str, bool], None]) -> None:
    """Time several variants fairly: each once as a warm-up, then `repeats` rounds of all of them,
    the order rotating every round so that drift in the machine's load hits every variant alike.
    `run_one(name, label, timed)` runs one variant and records it when `timed`."""
    for name in names:
        run_one(name, "warm-up", False)
    for i in range(repeats):
        for name in list(names[i % len(names):]) + list(names[:i % len(names)]):
            run_one(name, f"round {i + 1}", True)


def medians(rows: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """The median of each column of the timed rows of one variant."""
    return tuple(statistics.median(column) for column in zip(*rows))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table, as docs/benchmarks.md holds them."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class KatanServer:
    process: subprocess.Popen
    url: str  # the OpenAI base URL, ending in /v1
    command: list[str]

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) used so far by the server and its workers."""
        return process_tree_cpu_seconds(self.process.pid)

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
