"""Backend for vLLM running inside this process (`backend: vllm` in a config).

Written against vLLM's documented AsyncLLMEngine API: the engine batches concurrent
requests itself, so the runner's window of requests in flight feeds it directly. vLLM is
an optional extra (`pip install -e .[vllm]`) and needs a GPU; it cannot run on the CPU-only
machines this project is tested on, where the same protocol is exercised through vLLM's
OpenAI-compatible server stand-ins (llama.cpp, llm-katan) instead.
"""

from __future__ import annotations

import uuid

from backends.base import BackendError, ChatReply, ChatRequest


class VLLMInProcessBackend:
    """Chat requests answered by an in-process vLLM engine."""

    def __init__(self, model: str, max_model_len: int | None = None, trust_remote_code: bool = False):
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
        except ImportError as exc:
            raise RuntimeError("backend 'vllm' needs the vllm extra: pip install -e .[vllm]") from exc
        args = AsyncEngineArgs(model=model, max_model_len=max_model_len, trust_remote_code=trust_remote_code)
        self._engine = AsyncLLMEngine.from_engine_args(args)
        self._sampling_params = SamplingParams
        self._tokenizer = None
        self.model = model
        self.identity = f"vllm:{model}"

    async def _render(self, messages: list[dict]) -> str:
        if self._tokenizer is None:
            self._tokenizer = await self._engine.get_tokenizer()
        return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    async def chat(self, request: ChatRequest) -> ChatReply:
        prompt = await self._render(request.messages)
        params = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
        }
        if request.json_mode:
            from vllm.sampling_params import GuidedDecodingParams

            params["guided_decoding"] = GuidedDecodingParams(json_object=True)
        final = None
        try:
            async for output in self._engine.generate(prompt, self._sampling_params(**params), str(uuid.uuid4())):
                final = output
        except Exception as exc:  # the engine's own errors carry no HTTP status
            raise BackendError(f"vllm: {type(exc).__name__}: {exc}", retryable=False) from exc
        if final is None or not final.outputs:
            raise BackendError("vllm: no output", retryable=True)
        completion = final.outputs[0]
        return ChatReply(
            text=completion.text,
            finish_reason=completion.finish_reason,
            prompt_tokens=len(final.prompt_token_ids or []),
            completion_tokens=len(completion.token_ids),
            endpoint="in-process",
        )

    async def aclose(self) -> None:
        """The engine lives as long as the backend; nothing per event loop to close."""

