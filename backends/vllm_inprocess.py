"""Backend for vLLM running inside this process (`backend: vllm` in a config).

Written against vLLM's documented engine API (vLLM >= 0.12): `AsyncEngineArgs` +
`AsyncLLMEngine.from_engine_args`, `engine.generate(prompt, SamplingParams, request_id,
lora_request=...)` as an async stream of `RequestOutput`s, structured output through
`SamplingParams(structured_outputs=StructuredOutputsParams(json=...))` (the `guided_*`
fields it replaced were removed in 0.12), LoRA adapters through `LoRARequest(name, id, path)`
with `enable_lora=True`. The engine batches concurrent requests itself, so the runner's
window of requests in flight feeds it directly: set `max_in_flight` in the hundreds.

vLLM is an optional extra (`pip install -e .[vllm]`) and needs a GPU; it cannot run on the
CPU-only machines this project is tested on, where the protocol vLLM's server speaks is
exercised through llama.cpp and llm-katan instead, and this module's mapping of requests
onto the engine is tested against a stand-in of the engine (tests/backends/test_vllm_inprocess.py).
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from backends.base import BackendError, ChatReply, ChatRequest
from backends.openai_compat import url_identity

if TYPE_CHECKING:
    from backends.config import ModelEndpoint


class VLLMInProcessBackend:
    """Chat (or completion) requests answered by an in-process vLLM engine, optionally
    through a LoRA adapter on top of the base model."""

    def __init__(self, model: str, *, api: str = "chat", adapter_dir: str | Path | None = None,
                 max_lora_rank: int = 64, engine_args: dict[str, Any] | None = None):
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError as exc:
            raise RuntimeError("backend 'vllm' needs vLLM (>= 0.12) on a GPU machine: pip install -e .[vllm]") from exc
        settings = dict(engine_args or {})
        if adapter_dir is not None:
            settings.setdefault("enable_lora", True)
            settings.setdefault("max_lora_rank", max_lora_rank)
        self._engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=model, **settings))
        self._sampling_params = SamplingParams
        self._structured = StructuredOutputsParams
        self._lora = None
        if adapter_dir is not None:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest(Path(adapter_dir).name, 1, str(adapter_dir))
        self._tokenizer = None
        self.api = api
        self.model = model
        self.identity = f"vllm:{model}" + (f"+lora:{Path(adapter_dir).name}" if adapter_dir else "")
        self.server_pid: int | None = None  # the engine runs in this process

    async def _prompt(self, messages: list[dict]) -> str:
        """The text the engine continues: the chat template applied, or the plain prompt for
        `api: completions` (as the OpenAI-compatible backend joins the messages)."""
        if self.api == "completions":
            return "\n\n".join(m["content"] for m in messages)
        if self._tokenizer is None:
            self._tokenizer = await self._engine.get_tokenizer()
        return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def sampling_params(self, request: ChatRequest):
        """vLLM's sampling parameters for one request."""
        params: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": request.temperature,
                                  "top_p": request.top_p, "seed": request.seed}
        if request.json_schema is not None:
            params["structured_outputs"] = self._structured(json=request.json_schema)
        elif request.json_mode:
            params["structured_outputs"] = self._structured(json_object=True)
        return self._sampling_params(**params)

    async def chat(self, request: ChatRequest) -> ChatReply:
        prompt = request.raw_prompt if request.raw_prompt is not None else await self._prompt(request.messages)
        final = None
        try:
            async for output in self._engine.generate(prompt, self.sampling_params(request), str(uuid.uuid4()),
                                                      lora_request=self._lora):
                final = output
        except Exception as exc:  # the engine's own errors carry no HTTP status
            # A dead engine fails every request after it: the circuit breaker stops the stage.
            dead = type(exc).__name__ == "EngineDeadError" or bool(getattr(self._engine, "errored", False))
            raise BackendError(f"vllm: {type(exc).__name__}: {exc}", retryable=False, fatal=dead) from exc
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


class VLLMInProcessKind:
    """`backend: vllm`: a vLLM engine in this process; `model` is a local path."""

    name = "vllm"
    description = ("vLLM in-process (pip install -e \".[vllm]\", vLLM >= 0.12, GPU); engine_args go to "
                   "its AsyncEngineArgs")

    @contextlib.contextmanager
    def open(self, endpoint: "ModelEndpoint", log_dir: Path | None = None) -> Iterator[VLLMInProcessBackend]:
        yield VLLMInProcessBackend(endpoint.model, api=endpoint.api, engine_args=endpoint.engine_args)

    def identity(self, endpoint: "ModelEndpoint") -> str:
        return url_identity(endpoint)

    def runs_locally(self, endpoint: "ModelEndpoint") -> bool:
        return not endpoint.base_urls

    def model_file(self, endpoint: "ModelEndpoint") -> Path | None:
        return None
