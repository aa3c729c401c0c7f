"""The Batch API's file format: what backends.batch writes and reads, against a real implementation.

vLLM's `run_batch` (python -m vllm.entrypoints.openai.run_batch) reads an OpenAI Batch input file
and writes the output file OpenAI's service writes; here it runs the embedded student's weights
(SmolLM2-135M, a plain Hugging Face copy) on the CPU. Our writer makes the input, run_batch
answers it, our reader maps every output line back to its request. vLLM lives in an environment
of its own (`./setup.sh --vllm` makes `.venv-vllm`, or DISTILL_VLLM_PYTHON names one:
backends.vllm_env); without one the test (marked `vllm`) is skipped and says so. The HTTP
lifecycle (files, batches, expiry, cancel) is tested in test_batch_lifecycle.py.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from backends.base import BackendError, ChatReply, ChatRequest, RequestOutcome
from backends.batch import batch_line, read_result, split_lines
from backends.openai_compat import OpenAICompatibleBackend
from backends.vllm_env import PYTHON_VARIABLE, VLLM_VENV, vllm_python

VLLM_PYTHON = vllm_python() or VLLM_VENV / "bin" / "python"
MODEL = "smollm2-135m-instruct"


def test_batch_files_are_cut_at_the_line_and_byte_limits():
    lines = [(f"k{i}", batch_line(f"k{i}", "/v1/chat/completions", {"model": "m", "n": "x" * 40})) for i in range(7)]
    assert [len(group) for group in split_lines(lines, max_lines=3)] == [3, 3, 1]
    size = len(lines[0][1])
    assert [len(group) for group in split_lines(lines, max_bytes=2 * size)] == [2, 2, 2, 1]
    with pytest.raises(ValueError, match="k0"):
        list(split_lines(lines, max_bytes=size - 1))
    assert json.loads(lines[0][1]) == {"custom_id": "k0", "method": "POST", "url": "/v1/chat/completions",
                                       "body": {"model": "m", "n": "x" * 40}}


def test_batch_result_lines_of_every_documented_shape_are_read():
    backend = OpenAICompatibleBackend(MODEL, ["http://api.example/v1"])
    where = "http://api.example/v1"
    ok = {"id": "r1", "custom_id": "a", "error": None, "response": {"status_code": 200, "request_id": "q", "body": {
        "choices": [{"message": {"content": "Blue."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2}}}}
    key, reply = read_result(ok, backend.reply, where)
    assert key == "a" and reply == ChatReply("Blue.", "stop", 9, 2, where)
    expired = {"id": "r2", "custom_id": "b", "response": None,
               "error": {"code": "batch_expired", "message": "This request could not be executed before the window."}}
    key, failure = read_result(expired, backend.reply, where)
    assert key == "b" and failure.retryable and not failure.fatal and failure.kind == "batch_expired"
    throttled = {"custom_id": "c", "response": {"status_code": 429, "body": {"error": {"message": "slow down"}}}}
    assert read_result(throttled, backend.reply, where)[1].retryable
    no_model = {"custom_id": "d", "response": {"status_code": 404, "body": None},
                "error": {"error": {"message": "The model `x` does not exist.", "code": 404}}}  # vLLM's shape
    failure = read_result(no_model, backend.reply, where)[1]
    assert failure.fatal and not failure.retryable and failure.kind == "HTTP 404"
    odd = {"custom_id": "e", "response": {"status_code": 400, "body": None}, "error": "unknown URL"}
    failure = read_result(odd, backend.reply, where)[1]
    assert not failure.retryable and failure.status == 400


def vllm_available() -> str | None:
    """Why vLLM's run_batch cannot run here, or None."""
    if not VLLM_PYTHON.is_file():
        return f"no vLLM environment at {VLLM_PYTHON}: ./setup.sh --vllm makes one (or set {PYTHON_VARIABLE})"
    probe = subprocess.run([str(VLLM_PYTHON), "-c", "import vllm.entrypoints.openai.run_batch"],
                           capture_output=True, text=True, timeout=120)
    return None if probe.returncode == 0 else f"vLLM at {VLLM_PYTHON} does not import: {probe.stderr[-300:]}"


@pytest.mark.vllm
def test_batch_input_written_here_is_answered_by_vllm_run_batch_and_read_back(tmp_path, student_cache_dir):
    why = vllm_available()
    if why:
        pytest.skip(why)
    import prompts
    from filters.rate import RATING_TEMPLATE, rating_requests
    from filters.config import FilterConfig
    from student.embedded import ensure_plain_student

    model_dir = ensure_plain_student(student_cache_dir)
    backend = OpenAICompatibleBackend(MODEL, ["http://vllm-run-batch/v1"])
    record = {"id": "r0", "instruction": "Name a primary colour.", "input": "", "output": "Blue."}
    requests = [
        ChatRequest(key="plain", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8),
        ChatRequest(key="seeded", messages=[{"role": "user", "content": "Write a word."}], max_tokens=8,
                    temperature=1.0, seed=7),
        *rating_requests([record], prompts.load_template(RATING_TEMPLATE), FilterConfig(max_tokens=48)),
    ]
    lines = [batch_line(r.key, backend.api_path(r), backend.body(r)) for r in requests]
    unknown = dict(json.loads(lines[0]), custom_id="wrong-model")
    unknown["body"] = {**unknown["body"], "model": "no-such-model"}
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(lines) + (json.dumps(unknown) + "\n").encode())
    output = tmp_path / "out.jsonl"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.run_batch", "-i", str(source), "-o", str(output),
         "--model", str(model_dir), "--served-model-name", MODEL, "--dtype", "float32", "--max-model-len", "2048",
         "--enforce-eager"], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    results = {}
    for line in output.read_text().splitlines():
        key, result = read_result(json.loads(line), backend.reply, "vllm-run-batch")
        assert key not in results
        results[key] = result
    assert set(results) == {r.key for r in requests} | {"wrong-model"}
    for request in requests:
        reply = results[request.key]
        assert isinstance(reply, ChatReply), reply
        assert reply.text and reply.prompt_tokens > 0 and 0 < reply.completion_tokens <= request.max_tokens
        outcome = RequestOutcome.replied(request.key, request.meta, reply, 1, 0.0)
        assert RequestOutcome.from_journal(json.loads(json.dumps(outcome.to_journal()))) == outcome
    assert json.loads(results[requests[-1].key].text)["score"] is not None  # the schema was honoured
    failure = results["wrong-model"]
    assert isinstance(failure, BackendError) and failure.status == 404 and failure.fatal and not failure.retryable
