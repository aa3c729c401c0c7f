"""A vLLM engine that dies mid-run, and the seeds that would kill it.

On vLLM's CPU engine a request with a seed at temperature > 0 whose prompt is split across
engine steps (chunked prefill) kills the engine ("CPU Generator does not use offset"): the
requests in flight get HTTP 500 "EngineCore encountered an issue" and the server exits (with
code 0). That reproduces an engine's death on demand. Here a server whose per-step token budget
holds the first five generation prompts whole but not the sixth answers five requests sent one
at a time with their seeds (`seed_requests: always`) and dies on the sixth: `distill generate`
stops at once (the circuit breaker trips on the dead engine's first reply) with an error naming
the endpoint and a non-zero exit, and the five replies stay in the journal.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import yaml
from vllm_support import SEEDS, STUDENT_NAME, generation_requests, prompt_tokens, run_in_own_group, server_alive

from backends.openai_compat import OpenAICompatibleBackend
from backends.runner import run_requests
from backends.vllm_env import VLLMServer
from core.records import Journal, iter_jsonl

GENERATE = dict(max_requests=6, requests_per_shard=6, max_tokens=32, target_records=1000)


def test_an_engine_that_dies_mid_run_stops_the_run_with_an_error_naming_the_endpoint(vllm_py, student_dir,
                                                                                        tmp_path):
    lengths = prompt_tokens(student_dir, generation_requests(6, **GENERATE))
    budget = max(lengths[:5])
    assert lengths[5] > budget  # the sixth prompt is the first one the engine must split
    # Without prefix caching every prompt is computed whole, so the budget alone decides the split.
    with VLLMServer(student_dir, STUDENT_NAME, dtype="bfloat16", python=vllm_py, log_path=tmp_path / "vllm.log",
                    extra_args=("--max-num-batched-tokens", str(budget), "--no-enable-prefix-caching")) as server:
        config = tmp_path / "dies.yaml"
        config.write_text(yaml.safe_dump({
            "name": "dies", "seed_tasks": str(SEEDS),
            "teacher": {"backend": "openai", "model": STUDENT_NAME, "base_urls": [server.base_url],
                        "max_in_flight": 1, "seed_requests": "always"},
            "generate": GENERATE}))
        started = time.monotonic()
        done = run_in_own_group([str(Path(sys.executable).parent / "distill"), "generate", str(config),
                                 "--run-dir", str(tmp_path / "run")], {**os.environ, "OMP_NUM_THREADS": "1"}, 900)
        took = time.monotonic() - started
        for _ in range(60):  # the server shuts itself down within a second or so
            if server.returncode is not None:
                break
            time.sleep(0.5)
        exit_code = server.returncode
    assert done.returncode == 3, done.stderr[-3000:]
    last_line = done.stderr.strip().splitlines()[-1]
    assert server.base_url in last_line and "vLLM engine" in last_line and "died" in last_line, done.stderr[-3000:]
    assert exit_code == 0  # vLLM's server exits "cleanly" when its engine dies
    assert "CPU Generator does not use offset" in (tmp_path / "vllm.log").read_text(errors="replace")
    entries = [entry for _, entry in iter_jsonl(tmp_path / "run" / "work" / "generate_requests.jsonl")]
    assert [e["key"] for e in entries] == [f"gen-{i:06d}" for i in range(6)]
    assert [e["ok"] for e in entries] == [True] * 5 + [False] and "died" in entries[5]["error"]
    # No retries against a dead server: the run stops once the engine's death is seen. (The
    # five replies take about 20 s on two cores; retrying would add minutes of backoff.)
    assert took < 600


def test_seeds_are_kept_and_reproducible_on_a_server_without_chunked_prefill(vllm_py, student_dir, tmp_path):
    """`seed_requests: always` to a server started with --no-enable-chunked-prefill: four seeded
    generation requests at temperature 1.0 at once leave the engine alive; sent again, one at a
    time (float32, no prefix cache: the same arithmetic each time), the same seeds give the same
    replies and other seeds other ones."""
    requests = [dataclasses.replace(r, max_tokens=16) for r in generation_requests(4, **GENERATE)]
    reseeded = [dataclasses.replace(r, seed=r.seed + 1) for r in requests]
    with VLLMServer(student_dir, STUDENT_NAME, dtype="float32", python=vllm_py, log_path=tmp_path / "vllm.log",
                    extra_args=("--no-enable-chunked-prefill", "--no-enable-prefix-caching")) as server:
        backend = OpenAICompatibleBackend(STUDENT_NAME, [server.base_url], seed_requests="always")
        replies = []
        for name, batch, window in (("together", requests, 4), ("first", requests, 1), ("again", requests, 1),
                                    ("reseeded", reseeded, 1)):
            outcomes, stats = run_requests(backend, batch, Journal(tmp_path / f"{name}.jsonl"), max_in_flight=window)
            assert stats.succeeded == 4, [o.error for o in outcomes]
            replies.append([o.text for o in outcomes])
        assert server_alive(server)
    _, first, again, reseeded_replies = replies
    assert first == again
    assert first != reseeded_replies
