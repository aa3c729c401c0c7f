"""The in-process vLLM backend's mapping of requests onto vLLM's engine API.

A stand-in for the `vllm` package (tests/vllm_standin.py) is installed in sys.modules, because
vLLM itself cannot run on this CPU-only machine (it needs a GPU, and its wheels are not installable in
the test image). The stand-in implements only the documented surface the backend uses
(AsyncEngineArgs, AsyncLLMEngine.from_engine_args, generate as an async stream, SamplingParams,
StructuredOutputsParams, LoRARequest) and records what it was given; the protocol vLLM's
server speaks is tested for real through llama.cpp and llm-katan in the other backend tests.
"""

import asyncio
import sys

import pytest
from vllm_standin import install_vllm_standin

from backends.base import BackendError, ChatRequest


@pytest.fixture
def fake_vllm(monkeypatch):
    return install_vllm_standin(monkeypatch)


def test_chat_request_goes_through_the_chat_template_with_structured_output(fake_vllm):
    from backends.vllm_inprocess import VLLMInProcessBackend

    backend = VLLMInProcessBackend("/models/teacher", engine_args={"tensor_parallel_size": 2})
    assert backend._engine.args == {"model": "/models/teacher", "tensor_parallel_size": 2}
    schema = {"type": "object", "properties": {"score": {"type": "number"}}}
    request = ChatRequest(key="k", messages=[{"role": "user", "content": "rate"}], max_tokens=32,
                          temperature=0.5, top_p=0.9, seed=3, json_schema=schema)
    reply = asyncio.run(backend.chat(request))
    assert (reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens) == \
           ("partial answer", "stop", 3, 2)
    call = backend._engine.calls[0]
    assert call["prompt"] == "<user>rate<assistant>"
    assert call["params"] == ("SamplingParams", {
        "max_tokens": 32, "temperature": 0.5, "top_p": 0.9, "seed": 3,
        "structured_outputs": ("StructuredOutputsParams", {"json": schema})})
    assert call["lora"] is None
    json_mode = ChatRequest(key="j", messages=[{"role": "user", "content": "x"}], max_tokens=8, json_mode=True)
    assert backend.sampling_params(json_mode)[1]["structured_outputs"] == ("StructuredOutputsParams",
                                                                           {"json_object": True})


def test_completions_api_and_a_lora_adapter(fake_vllm, tmp_path):
    from backends.vllm_inprocess import VLLMInProcessBackend

    adapter = tmp_path / "adapter"
    backend = VLLMInProcessBackend("/models/student", api="completions", adapter_dir=adapter, max_lora_rank=16)
    assert backend._engine.args == {"model": "/models/student", "enable_lora": True, "max_lora_rank": 16}
    assert backend.identity == "vllm:/models/student+lora:adapter"
    request = ChatRequest(key="k", messages=[{"role": "user", "content": "Below is an instruction."}], max_tokens=8)
    asyncio.run(backend.chat(request))
    call = backend._engine.calls[0]
    assert call["prompt"] == "Below is an instruction."  # no chat template in completion mode
    assert call["lora"] == ("LoRARequest", "adapter", 1, str(adapter))


def test_engine_errors_become_backend_errors(fake_vllm):
    from backends.vllm_inprocess import VLLMInProcessBackend

    backend = VLLMInProcessBackend("/models/teacher")
    with pytest.raises(BackendError, match="CUDA out of memory") as error:
        asyncio.run(backend.chat(ChatRequest(key="k", messages=[{"role": "user", "content": "FAIL"}], max_tokens=8)))
    assert error.value.retryable is False


def test_without_vllm_the_error_says_how_to_install(monkeypatch):
    from backends.vllm_inprocess import VLLMInProcessBackend

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(RuntimeError, match=r"pip install -e \.\[vllm\]"):
        VLLMInProcessBackend("/models/teacher")
