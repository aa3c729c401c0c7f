"""Requests/s and completion tokens/s of the embedded student served by vLLM and by llama.cpp,
through the project's request path, at a few windows in flight, for docs/benchmarks.md.

The same student prompts (the first N questions of vicuna_80 in the student's Alpaca template,
sent to the completions API, greedy, max_tokens 128) go through `backends.runner.run_requests`
with an `OpenAICompatibleBackend` to each server in turn, never both at once:

- llama.cpp: the embedded SmolLM2-135M GGUF (Q4_1) behind llama-cpp-python's server, as the
  pipeline starts it (one thread on a 2-core machine; it answers one request at a time);
- vLLM: the same weights dequantized (the student's HF directory) behind vLLM's OpenAI server
  from the vLLM environment (`./setup.sh --vllm`), bfloat16, compiled (torch.compile; ~100 s
  to start on 2 cores) unless --vllm-eager.

One warm-up request per server, then each window in turn.

Usage: .venv/bin/python -m bench.bench_vllm_vs_llamacpp [-n 16] [--windows 1,2,8] [--max-tokens 128]
       [--vllm-eager] [--vllm-dtype bfloat16] [--only vllm|llama.cpp]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from backends.base import ChatRequest  # noqa: E402
from backends.embedded_server import EMBEDDED_MODEL_ALIAS, EmbeddedServer  # noqa: E402
from backends.openai_compat import OpenAICompatibleBackend  # noqa: E402
from backends.runner import run_requests  # noqa: E402
from backends.vllm_env import VLLMServer  # noqa: E402
from bench.harness import machine_line, markdown_table  # noqa: E402
from core.records import Journal  # noqa: E402
from eval.sets import load_eval_set  # noqa: E402
from student.embedded import ensure_plain_student  # noqa: E402
from student.prompt_format import render_student_prompt  # noqa: E402


def student_requests(count: int, max_tokens: int, offset: int) -> list[ChatRequest]:
    """`count` student prompts (vicuna_80 from `offset`, wrapping), greedy."""
    items = load_eval_set("vicuna_80", Path(tempfile.gettempdir()) / "no-heldout")
    return [ChatRequest(key=f"q{offset + i}", max_tokens=max_tokens, messages=[{"role": "user", "content":
            render_student_prompt(item["instruction"], item.get("input", ""), "alpaca")}])
            for i, item in enumerate(items[(offset + j) % len(items)] for j in range(count))]


def measure(label: str, backend: OpenAICompatibleBackend, windows: list[int], count: int, max_tokens: int,
            scratch: Path) -> list[tuple]:
    run_requests(backend, student_requests(1, max_tokens, 79), Journal(scratch / f"{label}-warm.jsonl"))
    rows = []
    for window in windows:
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        outcomes, stats = run_requests(backend, student_requests(count, max_tokens, 0),
                                       Journal(scratch / f"{label}-{window}.jsonl"), max_in_flight=window)
        wall = time.perf_counter() - started
        if stats.failed:
            raise RuntimeError(f"{label}, {window} in flight: {stats.failed} requests failed: "
                               f"{next(o.error for o in outcomes if not o.ok)}")
        tokens = sum(o.completion_tokens for o in outcomes)
        rows.append((label, window, f"{stats.succeeded / wall:.3f}", f"{tokens / wall:.1f}",
                     f"{tokens / stats.succeeded:.0f}", f"{wall:.1f}", f"{load_before:.1f}–{os.getloadavg()[0]:.1f}"))
        print(" | ".join(map(str, rows[-1])), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=16, help="requests per window")
    parser.add_argument("--windows", default="1,2,8", help="requests in flight to try")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--vllm-eager", action="store_true", help="start vLLM with --enforce-eager")
    parser.add_argument("--vllm-dtype", default="bfloat16")
    parser.add_argument("--only", choices=["vllm", "llama.cpp"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    windows = [int(w) for w in args.windows.split(",")]
    print(f"{machine_line()}; {args.n} requests per window, max_tokens {args.max_tokens}, greedy; "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        if args.only != "vllm":
            with EmbeddedServer(context_length=2048, log_path=scratch / "llama.log") as server:
                backend = OpenAICompatibleBackend(EMBEDDED_MODEL_ALIAS, [server.base_url], api="completions")
                rows += measure(f"llama.cpp (GGUF Q4_1, {server.threads} thread)", backend, windows, args.n,
                                args.max_tokens, scratch)
        if args.only != "llama.cpp":
            mode = "eager" if args.vllm_eager else "compiled"
            started = time.perf_counter()
            student = ensure_plain_student(Path.home() / ".cache" / "distill")
            with VLLMServer(student, "student", dtype=args.vllm_dtype, enforce_eager=args.vllm_eager,
                            log_path=scratch / "vllm.log") as server:
                ready = time.perf_counter() - started
                backend = OpenAICompatibleBackend("student", [server.base_url], api="completions")
                rows += measure(f"vLLM ({args.vllm_dtype}, {mode}; ready in {ready:.0f} s)", backend, windows,
                                args.n, args.max_tokens, scratch)
    print()
    print(markdown_table(("server", "in flight", "requests/s", "completion tokens/s", "mean completion tokens",
                          "wall s", "load average"), rows))


if __name__ == "__main__":
    main()
