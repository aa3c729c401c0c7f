"""Answer evaluation prompts with one local model in a process of its own.

Run alone, the process's resident-memory high-water mark (VmHWM) is that model's honest
peak memory: its weights, its KV cache and the runtime it needs, nothing left over from
another model. The parent writes a job file, runs ``python -m eval.answer_process JOB``,
and reads the answers and the measurements back. The job is an ``eval.contestants.AnswerJob``.

After answering, and after its peak memory is read, the child scores the teacher's answers
under the same model (teacher-forced NLL, ``eval.fidelity``) when the job carries them.

A job answers with a student (``kind: student``: base model + optional LoRA adapter,
through ``student.generation``'s batched transformers generation, or through vLLM with the adapter
as a LoRA request) or with a compressed variant (``kind: variant``: through the
compress stage's ``compress.variants.answer_with_variant``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from core.records import write_json
from eval.contestants import AnswerJob
from eval.fidelity import not_measured

log = logging.getLogger(__name__)


def answer_in_child(job: AnswerJob, work_dir: Path) -> tuple[list[dict], dict]:
    """Run one answering job in a child process (this module, run by the same Python); return its
    answers and its measurements (parameters, peak_memory_bytes, answer_wall_s, ...). Raises
    RuntimeError if it fails."""
    work_dir.mkdir(parents=True, exist_ok=True)
    job_path, result_path = work_dir / f"{job.label}_job.json", work_dir / f"{job.label}_result.json"
    result_path.unlink(missing_ok=True)
    write_json(job_path, {**job.to_json(), "result_path": str(result_path)})
    python, env = sys.executable, None
    if job.kind == "student" and job.student_backend == "vllm":
        # vLLM lives in an environment of its own (backends.vllm_env); the child runs there.
        from backends.vllm_env import env_for_project_in, require_vllm_python

        python = require_vllm_python()
        env = {**os.environ, **env_for_project_in(python)}
    done = subprocess.run([str(python), "-m", "eval.answer_process", str(job_path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if done.returncode != 0 or not result_path.is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"answering with {job.label} failed (exit {done.returncode}):\n{tail}")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    return result["answers"], result["efficiency"]


Fidelity = Callable[[], dict]  # the teacher's answers scored under the contestant (eval.fidelity)


def _answer_with_student(job: AnswerJob) -> tuple[list[dict], dict, Fidelity]:
    import torch

    from eval.fidelity import teacher_answer_nll
    from student.generation import answer_prompts, load_student

    adapter = Path(job.adapter) if job.adapter else None
    model, tokenizer = load_student(Path(job.base_model), adapter, job.trust_remote_code)
    started = time.perf_counter()
    answers = answer_prompts(model, tokenizer, job.items, job.prompt_format, job.max_new_tokens,
                             batch_size=job.batch_size, static_cache=job.static_cache, continuous=job.continuous,
                             cache_bucket=job.cache_bucket, prefill_rows=job.prefill_rows)
    efficiency = {"answer_wall_s": round(time.perf_counter() - started, 4),
                  "parameters": sum(p.numel() for p in model.parameters()), "batch_size": job.batch_size}
    if torch.cuda.is_available():
        efficiency["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated()
    return answers, efficiency, lambda: teacher_answer_nll(model, tokenizer, job.items, job.teacher_answers,
                                                           job.prompt_format, batch_size=job.batch_size)


def _answer_with_vllm(job: AnswerJob) -> tuple[list[dict], dict, Fidelity]:
    """The student served by vLLM in this process (`evaluate.student_backend: vllm`): the base
    model with the LoRA adapter as a LoRA request (nothing merged), the student's own prompt sent
    through the completions path, every prompt at once so that the engine batches them."""
    import asyncio

    from backends.base import ChatRequest
    from backends.vllm_inprocess import VLLMInProcessBackend
    from core.measure import process_tree_peak_memory
    from student.prompt_format import render_student_prompt

    tokenizer = None
    if job.prompt_format == "chat":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(job.base_model, trust_remote_code=job.trust_remote_code)
    adapter_config = Path(job.adapter) / "adapter_config.json" if job.adapter else None
    rank = json.loads(adapter_config.read_text())["r"] if adapter_config and adapter_config.is_file() else 64
    # vLLM takes only these maximum ranks.
    max_rank = next((r for r in (8, 16, 32, 64, 128, 256, 512) if r >= rank), rank)
    backend = VLLMInProcessBackend(job.base_model, api="completions", adapter_dir=job.adapter,
                                   max_lora_rank=max_rank, engine_args=job.vllm_engine_args or {})
    requests = [ChatRequest(key=item["id"], max_tokens=job.max_new_tokens, temperature=0.0, messages=[
        {"role": "user", "content": render_student_prompt(item["instruction"], item.get("input", ""),
                                                          job.prompt_format, tokenizer)}])
        for item in job.items]

    async def answer(request: ChatRequest) -> dict:
        began = time.perf_counter()
        reply = await backend.chat(request)
        return {"id": request.key, "answer": reply.text.strip(), "completion_tokens": reply.completion_tokens,
                "latency_s": round(time.perf_counter() - began, 4), "ttft_s": None}

    async def answer_all() -> list[dict]:
        return list(await asyncio.gather(*(answer(r) for r in requests)))

    started = time.perf_counter()
    answers = asyncio.run(answer_all())
    wall_s = time.perf_counter() - started
    # The weights and the KV cache live in vLLM's engine-core process, a child of this one:
    # its peak counts, read before the engine stops.
    peak = process_tree_peak_memory()
    backend.shutdown()
    efficiency = {"answer_wall_s": round(wall_s, 4), "batch_size": len(requests), "served_by": backend.identity,
                  "peak_memory_bytes": peak, "peak_memory_method": "VmHWM of a process that only loads this "
                  "model and answers, plus that of its vLLM engine-core process"}
    return answers, efficiency, lambda: not_measured(
        "answered through vLLM: the teacher-forced NLL is computed for transformers students and GGUF files")


def _variant_nll(job: AnswerJob) -> dict:
    """The teacher's answers scored under a compressed variant: a GGUF file through llama.cpp's
    logits, an in-process variant (dynamic int8, bitsandbytes) through transformers; loaded
    again here, after the answers and the peak memory were measured."""
    from transformers import AutoTokenizer

    from eval.fidelity import gguf_teacher_answer_nll, teacher_answer_nll

    variant = job.variant or {}
    kind = variant.get("kind")
    if kind == "gguf":
        tokenizer_dir = variant.get("tokenizer_dir")
        if not tokenizer_dir or not Path(tokenizer_dir).is_dir():
            return not_measured(f"the GGUF variant's tokenizer folder is missing ({tokenizer_dir})")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        return gguf_teacher_answer_nll(Path(variant["path"]), tokenizer, job.items, job.teacher_answers,
                                       job.prompt_format, threads=job.threads)
    if kind == "torch_int8":
        from compress.torch_int8 import load_torch_int8

        model, tokenizer = load_torch_int8(Path(variant["path"]))
    elif kind == "bnb":
        from compress.bnb import load_bnb

        model, tokenizer = load_bnb(Path(variant["path"]), variant["bits"])
    else:
        return not_measured(f"no teacher-forced scoring for variants of kind {kind!r}")
    return teacher_answer_nll(model, tokenizer, job.items, job.teacher_answers, job.prompt_format)


def _answer_with_variant(job: AnswerJob) -> tuple[list[dict], dict, Fidelity]:
    from compress.variants import answer_with_variant

    # Each variant times its own answering loop (answer_wall_s): loading, a llama.cpp server's
    # start and stop among it, is not answering time.
    answers, efficiency = answer_with_variant(job.variant, job.items, job.prompt_format, job.max_new_tokens,
                                              Path(job.cache_dir))
    return answers, efficiency, lambda: _variant_nll(job)


def main(job_path: str) -> None:
    """Answer one job file's prompts and write answers + measurements to its result_path."""
    from core.measure import process_peak_memory

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    data = json.loads(Path(job_path).read_text(encoding="utf-8"))
    job = AnswerJob.from_json(data)
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    if job.kind == "student":
        answer = _answer_with_vllm if job.student_backend == "vllm" else _answer_with_student
    else:
        answer = _answer_with_variant
    answers, efficiency, fidelity = answer(job)
    # A variant served by another process (a llama.cpp server) reports that process's peak.
    if efficiency.get("peak_memory_bytes") is None or (job.kind == "student" and job.student_backend != "vllm"):
        efficiency.update(peak_memory_bytes=process_peak_memory(),
                          peak_memory_method="VmHWM of a process that only loads this model and answers")
    # Fidelity comes after the peak memory is read, so scoring does not count as answering.
    if job.teacher_answers:
        started = time.perf_counter()
        efficiency["fidelity"] = {**fidelity(), "fidelity_wall_s": round(time.perf_counter() - started, 3)}
    write_json(Path(data["result_path"]), {"answers": answers, "efficiency": efficiency})


if __name__ == "__main__":
    main(sys.argv[1])
