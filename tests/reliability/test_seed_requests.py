"""Which requests carry their seed (`seed_requests`), against a scripted server that says it is
vLLM, or another one. On vLLM's CPU engine a seed at temperature > 0 in a prompt that chunked
prefill splits kills the engine (the real engine: tests/vllm_engine/); here only what is sent is
checked, and how often the server is asked what it is. The server is scripted because it must
be made to claim to be vLLM without running one (the real one takes ~4.6 GB and ~25 s to start).
"""

from __future__ import annotations

import pytest
from scripted_server import ScriptedServer

from backends.base import ChatRequest
from backends.openai_compat import OpenAICompatibleBackend
from backends.runner import run_requests
from core.records import Journal


def send(tmp_path, owned_by: str, policy: str, temperature: float) -> tuple[list, int]:
    """Four seeded requests, four in flight; the seeds the server saw and its GET /models count."""
    seen = []

    def reply(body: dict) -> str:
        seen.append(body.get("seed"))
        return "a reply"

    with ScriptedServer(reply, models=["m"], owned_by=owned_by) as server:
        backend = OpenAICompatibleBackend("m", [server.base_url], seed_requests=policy)
        requests = [ChatRequest(key=f"k{i}", messages=[{"role": "user", "content": "Say a colour."}], max_tokens=4,
                                temperature=temperature, seed=i) for i in range(4)]
        _, stats = run_requests(backend, requests, Journal(tmp_path / f"{owned_by}-{policy}-{temperature}.jsonl"),
                                max_in_flight=4)
        assert stats.succeeded == 4
        return sorted(seen, key=str), server.gets


@pytest.mark.parametrize(("owned_by", "policy", "temperature", "seeds", "asked"), [
    ("vllm", "auto", 1.0, [None] * 4, 1),  # vLLM at temperature > 0: no seed, and one question for all four
    ("vllm", "auto", 0.0, [0, 1, 2, 3], 0),  # at temperature 0 a seed is harmless: kept, nothing asked
    ("openai", "auto", 1.0, [0, 1, 2, 3], 1),  # another server keeps its seeds
    ("vllm", "always", 1.0, [0, 1, 2, 3], 0),  # a GPU server, or one without chunked prefill
    ("openai", "never", 0.0, [None] * 4, 0),
])
def test_seeds_are_sent_as_seed_requests_says(tmp_path, owned_by, policy, temperature, seeds, asked):
    assert send(tmp_path, owned_by, policy, temperature) == (seeds, asked)
