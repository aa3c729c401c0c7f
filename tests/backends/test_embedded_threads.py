"""`teacher.threads`: the embedded llama.cpp server runs with that many threads, and the evaluate
stage serves the GGUF variants with the same number, so teacher and variants are costed alike."""

import asyncio
from pathlib import Path

import pytest

from backends.base import ChatRequest
from backends.config import ModelEndpoint
from backends.registry import open_chat_backend
from eval.contestants import Contestant
from pipeline.config import PipelineConfig
from pipeline.stages.evaluate import answer_job

REPO = Path(__file__).resolve().parents[2]


def _server_arguments(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@pytest.mark.server
def test_the_embedded_server_runs_with_the_configured_threads(tmp_path):
    endpoint = ModelEndpoint(backend="embedded", threads=2, context_length=1024)
    with open_chat_backend(endpoint, tmp_path) as backend:
        arguments = _server_arguments(backend.server_pid)
        for flag in ("--n_threads", "--n_threads_batch"):
            assert arguments[arguments.index(flag) + 1] == "2", (flag, arguments)
        reply = asyncio.run(backend.chat(ChatRequest(key="k", messages=[{"role": "user", "content": "Say yes."}],
                                                     max_tokens=4, temperature=0.0)))
        assert reply.text and reply.completion_tokens >= 1


def test_threads_must_be_positive():
    with pytest.raises(ValueError, match="threads"):
        ModelEndpoint(backend="embedded", threads=0)


def test_gguf_variants_are_served_with_the_teachers_threads():
    config = PipelineConfig(name="t", seed_tasks=REPO / "data" / "seed_tasks.jsonl",
                            teacher={"backend": "embedded", "threads": 2})
    variant = Contestant(label="gguf_q4_0", kind="variant", identity="gguf_q4_0",
                         variant={"kind": "gguf", "path": "/x.gguf", "label": "gguf_q4_0"})
    job = answer_job(variant, [], config, Path("/tmp"))
    assert job.variant["server_threads"] == 2 and job.variant["path"] == "/x.gguf"
    assert variant.variant.get("server_threads") is None  # the run's own record is not changed
