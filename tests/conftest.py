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
    from bench.harness import start_katan

    started = []

    def start(*flags: str) -> str:
        server = start_katan(*flags, stats_file=tmp_path / f"katan-{len(started)}.json")
        started.append(server)
        return server.url

    yield start
    for server in started:
        server.stop()
