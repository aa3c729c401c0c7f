"""Answer evaluation prompts with one compressed variant, in the shape the evaluate stage
uses for the student: per-item ``{id, answer, completion_tokens, latency_s, ttft_s}`` and
the variant's measured cost (parameters, peak memory, load time); `compress.variants`
dispatches to these by the variant's kind.

* ``gguf`` variants are served by llama.cpp (``backends.embedded_server.EmbeddedServer``
  on the variant's file) and prompted through the completions API with the student's own
  prompt (the Alpaca template it was trained on), greedy, one request at a time, streamed
  so the first token's time is seen. Peak memory is the server process's VmHWM.
* ``torch_int8`` and ``bnb`` variants are loaded in this process and answer through the
  student's own generation loop (``student.generation.answer_prompts``). Peak memory is this
  process's VmHWM, reset just before loading where Linux allows (``/proc/self/clear_refs``);
  on CUDA, the GPU's peak allocation too.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from core.measure import gguf_parameter_count, process_peak_memory, reset_peak_memory
from student.prompt_format import render_student_prompt

log = logging.getLogger(__name__)


def _prompts(items: list[dict], prompt_format: str, tokenizer_dir: str | None) -> list[str]:
    """The student's prompt for each item (the chat format needs the variant's tokenizer)."""
    tokenizer = None
    if prompt_format == "chat":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return [render_student_prompt(item["instruction"], item.get("input", ""), prompt_format, tokenizer)
            for item in items]


def complete_streamed(base_url: str, prompt: str, max_new_tokens: int, timeout_s: float = 600.0) -> dict:
    """One greedy completion from an OpenAI-compatible server, streamed: the text, the number of
    streamed pieces (one per token, except that a character split over several tokens
    arrives as one piece), the time to the first piece and to the last."""
    import httpx

    # Greedy, as the student answers: llama-cpp-python's server would otherwise apply its
    # default repeat penalty (1.1) and the answers would differ from the student's for that alone.
    body = {"prompt": prompt, "max_tokens": max_new_tokens, "temperature": 0.0, "top_k": 1, "repeat_penalty": 1.0,
            "stream": True}
    pieces, text, first = 0, [], None
    started = time.perf_counter()
    with httpx.stream("POST", f"{base_url}/completions", json=body, timeout=timeout_s) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[len("data: "):])["choices"][0]
            if choice.get("text"):
                first = first if first is not None else time.perf_counter() - started
                text.append(choice["text"])
            if choice.get("finish_reason") is None:
                pieces += 1
    return {"text": "".join(text), "tokens": pieces, "ttft_s": first, "latency_s": time.perf_counter() - started}


def answer_with_gguf(variant: dict, items: list[dict], prompt_format: str, max_new_tokens: int) -> tuple[list[dict], dict]:
    """A GGUF variant served by llama.cpp, prompted one request at a time and streamed; peak memory
    is the server process's."""
    from backends.embedded_server import EmbeddedServer

    prompts = _prompts(items, prompt_format, variant.get("tokenizer_dir"))
    path = Path(variant["path"])
    answers = []
    started = time.perf_counter()
    # server_threads: the teacher's llama.cpp threads, set by the evaluate stage, so both are costed alike
    with EmbeddedServer(path, context_length=variant.get("context_length", 2048),
                        threads=variant.get("server_threads")) as server:
        load_s = time.perf_counter() - started
        answering = time.perf_counter()
        for item, prompt in zip(items, prompts):
            reply = complete_streamed(server.base_url, prompt, max_new_tokens)
            answers.append({"id": item["id"], "answer": reply["text"].strip(), "completion_tokens": reply["tokens"],
                            "latency_s": round(reply["latency_s"], 4),
                            "ttft_s": round(reply["ttft_s"], 4) if reply["ttft_s"] is not None else None})
        answer_wall_s = time.perf_counter() - answering  # the server's start and stop are not answering time
        peak = process_peak_memory(server.pid)
    return answers, {"parameters": gguf_parameter_count(path), "peak_memory_bytes": peak, "load_s": round(load_s, 3),
                     "answer_wall_s": round(answer_wall_s, 4),
                     "peak_memory_method": "VmHWM of the llama.cpp server process serving this file",
                     "server_threads": server.threads}


def answer_in_process(variant: dict, items: list[dict], prompt_format: str, max_new_tokens: int) -> tuple[list[dict], dict]:
    """A torch_int8 or bitsandbytes variant loaded in this process; peak memory is this process's."""
    import torch

    from student.generation import answer_prompts

    reset = reset_peak_memory()
    started = time.perf_counter()
    if variant["kind"] == "torch_int8":
        from compress.torch_int8 import load_torch_int8

        model, tokenizer = load_torch_int8(Path(variant["path"]))
    else:
        from compress.bnb import load_bnb

        torch.cuda.reset_peak_memory_stats()
        model, tokenizer = load_bnb(Path(variant["path"]), variant["bits"])
    load_s = time.perf_counter() - started
    answering = time.perf_counter()
    answers = answer_prompts(model, tokenizer, items, prompt_format, max_new_tokens)
    answer_wall_s = time.perf_counter() - answering
    parameters = sum(p.numel() for p in model.parameters())
    if variant["kind"] == "bnb":
        from compress.bnb import parameter_count

        parameters = parameter_count(model)
    if variant["kind"] == "torch_int8":  # int8 linears hold their weights outside parameters()
        from compress.torch_int8 import int8_linears

        tied = getattr(model.config, "tie_word_embeddings", False)  # lm_head is then a copy of the embeddings
        parameters += sum(module.weight().numel() for name, module in int8_linears(model).items()
                          if not (tied and name == "lm_head"))
    efficiency = {"parameters": parameters, "load_s": round(load_s, 3), "answer_wall_s": round(answer_wall_s, 4),
                  "peak_memory_bytes": process_peak_memory(),
                  "peak_memory_method": ("VmHWM of this process, reset before loading the variant" if reset
                                         else "VmHWM of this process over its lifetime (reset not allowed)")}
    if variant["kind"] == "bnb":
        efficiency["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated()
    return answers, efficiency
