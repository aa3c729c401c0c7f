"""A stand-in for the `vllm` package, for tests of the code that drives vLLM's engine.

vLLM cannot run on the CPU-only machines these tests run on (it needs a GPU, and its wheels
are not installable in the test image). The stand-in implements only the documented surface
the project uses (AsyncEngineArgs, AsyncLLMEngine.from_engine_args, generate as an async
stream of RequestOutputs, SamplingParams, StructuredOutputsParams, LoRARequest) and records
what it was given. The protocol vLLM's server speaks is tested for real through llama.cpp and
llm-katan elsewhere.
"""

import sys
import types
from dataclasses import dataclass, field


@dataclass
class _Completion:
    text: str
    finish_reason: str
    token_ids: list


@dataclass
class _RequestOutput:
    prompt_token_ids: list
    outputs: list = field(default_factory=list)


class _Engine:
    def __init__(self, args):
        self.args = args
        self.calls = []

    @classmethod
    def from_engine_args(cls, args):
        return cls(args)

    async def get_tokenizer(self):
        class Tokenizer:
            def apply_chat_template(self, messages, tokenize, add_generation_prompt):
                assert tokenize is False and add_generation_prompt is True
                return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        return Tokenizer()

    async def generate(self, prompt, params, request_id, lora_request=None):
        self.calls.append({"prompt": prompt, "params": params, "request_id": request_id, "lora": lora_request})
        if prompt.endswith("FAIL<assistant>"):
            raise RuntimeError("CUDA out of memory")
        yield _RequestOutput([1, 2, 3], [_Completion("par", None, [7])])
        yield _RequestOutput([1, 2, 3], [_Completion("partial answer", "stop", [7, 8])])


def install_vllm_standin(monkeypatch) -> types.ModuleType:
    """Put the stand-in modules in sys.modules for the duration of a test."""
    vllm = types.ModuleType("vllm")
    vllm.AsyncEngineArgs = lambda **kwargs: kwargs
    vllm.AsyncLLMEngine = _Engine
    vllm.SamplingParams = lambda **kwargs: ("SamplingParams", kwargs)
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.StructuredOutputsParams = lambda **kwargs: ("StructuredOutputsParams", kwargs)
    lora = types.ModuleType("vllm.lora")
    lora_request = types.ModuleType("vllm.lora.request")
    lora_request.LoRARequest = lambda name, lora_id, path: ("LoRARequest", name, lora_id, path)
    for name, module in {"vllm": vllm, "vllm.sampling_params": sampling, "vllm.lora": lora,
                         "vllm.lora.request": lora_request}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return vllm
