"""Shared test setup: Prefect in ephemeral mode with its own home, no telemetry, offline hubs."""

import os
import tempfile
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="distill-tests-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.pop("PREFECT_API_URL", None)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def student_cache_dir() -> Path:
    """Where the dequantized embedded student is built once for the whole test session."""
    path = Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def katan(tmp_path):
    """Start llm-katan's echo server (a real third-party OpenAI-compatible server) with fault flags."""
    import subprocess
    import sys
    import time
    import urllib.request

    from backends.embedded_server import free_port

    started = []

    def start(*flags: str) -> str:
        port = free_port()
        katan_bin = Path(sys.executable).parent / "llm-katan"
        process = subprocess.Popen(
            [str(katan_bin), "-m", "echo", "-b", "echo", "-p", str(port), "-h", "127.0.0.1",
             "--stats-file", str(tmp_path / f"katan-{port}.json"), "--disable-dashboard", *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                return url
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("llm-katan did not start")

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)
