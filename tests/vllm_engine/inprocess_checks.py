"""The in-process vLLM backend (backends.vllm_inprocess) on the real CPU engine, run by
test_vllm_inprocess_engine.py with the vLLM environment's Python (vLLM cannot be imported by the
project's own environment: see backends/vllm_env.py).

usage: python inprocess_checks.py IN.json OUT.json

IN.json holds the requests to send (ChatRequest fields) and the model and adapter directories;
OUT.json gets what came back. vLLM's engine core is a process started by spawn on the CPU, so
this script, like any that opens the engine, runs its work under `if __name__ == "__main__":`.

Two engines, one after the other:
- the student with its LoRA adapter, the completions API and the CPU defaults (chunked prefill
  off, so seeds are kept): greedy student answers, and seeded generation requests at
  temperature 1.0, four at once, then again one at a time for reproducibility;
- the student alone through the chat API with chunked prefill on (a 256-token step budget that
  splits every generation prompt) under `seed_requests: auto`: seeds are left out, so the same
  seeded requests leave the engine alive; a rating request held to the judge's JSON schema; then
  the engine-core process is killed while the request runner (with the pipeline's circuit
  breaker) is mid-run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

STARTED = time.monotonic()


def engine_core_pids() -> list[int]:
    """The engine-core processes this one started (vLLM names them VLLM::EngineCore)."""
    import psutil

    return [child.pid for child in psutil.Process().children(recursive=True)
            if "EngineCore" in " ".join(child.cmdline() or [child.name()])]


async def send(backend, requests, journal_path: Path, window: int, on_outcome=None) -> list[dict]:
    from backends.breaker import CircuitBreaker
    from backends.runner import run_requests_async
    from core.records import Journal

    # The pipeline's request path: a circuit breaker per endpoint (a window of 16 attempts).
    outcomes, _ = await run_requests_async(backend, requests, Journal(journal_path), max_in_flight=window,
                                           on_outcome=on_outcome, breaker=CircuitBreaker(16, backend.identity))
    return [outcome.to_journal() for outcome in outcomes]


def run_then_shut_down(backend, work_through) -> None:
    """Run the coroutine function on one event loop (the engine serves the loop of its first
    request), then stop the engine, whatever happened."""
    try:
        asyncio.run(work_through())
    finally:
        backend.shutdown()


def student_engine(job: dict, work: Path) -> dict:
    from backends.base import ChatRequest
    from backends.vllm_inprocess import VLLMInProcessBackend

    backend = VLLMInProcessBackend(job["student_dir"], api="completions", adapter_dir=job["adapter_dir"],
                                   max_lora_rank=8, engine_args={"dtype": "float32", "max_model_len": 2048})
    answers = [ChatRequest(**r) for r in job["student_requests"]]
    generation = [ChatRequest(**r) for r in job["generation_requests"]]

    seen: dict = {"engine_args": backend.engine_args, "send_seeds": backend.send_seeds,
                  "identity": backend.identity, "seconds": {"start": round(time.monotonic() - STARTED, 1)}}

    async def work_through() -> None:
        for name, requests, window in (("answers", answers, 8), ("generation_together", generation, 4),
                                       ("generation_first", generation, 1), ("generation_again", generation, 1)):
            began = time.monotonic()
            seen[name] = await send(backend, requests, work / f"{name}.jsonl", window)
            seen["seconds"][name] = round(time.monotonic() - began, 1)
        seen["errored"] = backend._engine.errored

    run_then_shut_down(backend, work_through)
    return seen


def chunked_engine(job: dict, work: Path) -> dict:
    from backends.base import ChatRequest
    from core.errors import EndpointError
    from backends.vllm_inprocess import VLLMInProcessBackend

    began = time.monotonic()
    backend = VLLMInProcessBackend(job["student_dir"], api="chat", seed_requests="auto", engine_args={
        "dtype": "bfloat16", "max_model_len": 2048, "enable_chunked_prefill": True, "max_num_batched_tokens": 256,
        "enforce_eager": True})  # no torch.compile warm-up: ready in ~25 s, not ~100 s
    generation = [ChatRequest(**r) for r in job["generation_requests"]]
    rating = [ChatRequest(**r) for r in job["rating_requests"]]
    seen: dict = {"engine_args": backend.engine_args, "send_seeds": backend.send_seeds,
                  "seconds": {"start": round(time.monotonic() - began, 1)}}

    def kill_engine_core(outcome) -> None:
        if not seen.get("killed"):
            seen["killed"] = engine_core_pids()
            for pid in seen["killed"]:
                os.kill(pid, signal.SIGKILL)

    async def work_through() -> None:
        began = time.monotonic()
        seen["generation"] = await send(backend, generation, work / "chunked.jsonl", 4)
        seen["errored_after_seeded_generation"] = backend._engine.errored
        seen["rating"] = await send(backend, rating, work / "rating.jsonl", 4)
        seen["seconds"]["generation_and_rating"] = round(time.monotonic() - began, 1)
        started = time.monotonic()
        try:
            await send(backend, generation, work / "killed.jsonl", 1, on_outcome=kill_engine_core)
        except EndpointError as exc:  # the breaker tripped on the dead engine's first failure
            seen["death"] = {"message": str(exc), "seconds": round(time.monotonic() - started, 1)}
        journal = work / "killed.jsonl"
        seen["journal_after_death"] = [(entry["key"], entry["ok"], entry.get("error"))
                                       for entry in map(json.loads, journal.read_text().splitlines())]

    run_then_shut_down(backend, work_through)
    return seen


def main(job_path: str, out_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    work = Path(out_path).parent / "work"
    work.mkdir(parents=True, exist_ok=True)
    seen = {"student": student_engine(job, work)}
    seen["chunked"] = chunked_engine(job, work)
    Path(out_path).write_text(json.dumps(seen, default=str))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
