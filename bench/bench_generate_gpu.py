#!/usr/bin/env python
"""Benchmark: evaluation answer generation of a Llama-2-7B-shaped student on one GPU (new tokens/s).

The student has the Llama-2-7B shape (hidden 4096, 32 layers, 32 heads, intermediate 11008,
vocab 32000) with random bf16 weights built from a LlamaConfig on the GPU: nothing is
downloaded. Prompts are the project's own evaluation sets (Vicuna 80 + Self-Instruct 252) in
the Alpaca template, cycled to fill every batch, through the project's own answer path,
``student.generation.answer_prompts`` (length-sorted batches, left padding, greedy). The tokenizer
is a word-level one built from the sets' words (no tokenizer can be downloaded), so prompt
lengths are word counts, a little shorter than a real tokenizer's.

Random weights rarely produce the stop token, so nearly every answer runs to max_new_tokens:
tokens/s counts the new tokens actually returned (up to the first stop token), divided by the
wall time of the batches measured. Settings:

    plain-bN            dynamic KV cache, no compilation (what `generate` does by default)
    static-bN           static KV cache: transformers compiles the decoding step (its default
                        CompileConfig: reduce-overhead, i.e. CUDA graphs)
    static-fullgraph-bN the same with CompileConfig(fullgraph=True, dynamic=False)
    filled-bN           the static cache read only as far as the batch has filled it, rounded up to
                        64 tokens (`evaluate.static_cache_bucket: 64`); filledK-bN rounds to K
    static-pR-bN,       with the prompts prefilled R rows at a time, each group padded to its own
    filled-pR-bN        longest prompt (`evaluate.static_cache_prefill_rows: R`)
    cb-bN               continuous batching (`evaluate.continuous_batching: true`: transformers'
                        generate_batch, a paged KV cache read only as far as each request has
                        filled it, chunked prefill, finished requests replaced at once), up to N
                        requests decoding together

Every setting records a hash of each answer's tokens, and the parent reports how many answers
of each setting are identical to the first setting's for the same prompts (the measured batches
hold the same prompts whenever --batches and the batch size agree). The bandwidth figure: a
decoding step reads the weights (13.5 GB in bf16) and the filled KV cache of every row (0.5 MB a
token for this shape); the bytes a step must read at the measured rate, against the 4.3 TB/s a
device-to-device copy reached on this GPU kind (docs/benchmarks.md), is the fraction reported.

Each setting runs in its own process (an OOM or a compiled graph stays contained). A static
setting answers the same prompts twice: the first pass (compilation, CUDA graph capture) is
timed and reported apart as the warm-up; in an evaluation run it is paid once per run.

Run from the repository root (the project need not be installed: its packages import from
there, and each setting's process is started the same way, in the repository root):

Usage:  python -m bench.bench_generate_gpu [--only plain-b32,static-b128] [--batches 2]
            [--max-new-tokens 256] [--out DIR] [--tiny]
CPU smoke test of the code path (tiny model):
    python -m bench.bench_generate_gpu --tiny --only plain-b4,static-b4 --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import REPO

log = logging.getLogger("bench_generate_gpu")

LLAMA_2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096)
DEFAULT_SETTINGS = "plain-b32,plain-b128,static-b64,static-b128"


def word_level_tokenizer(texts: list[str], vocab_size: int):
    """A word-level fast tokenizer over the words of `texts`, filled up to `vocab_size` ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text)})
    vocab = {token: i for i, token in enumerate(specials + words[: vocab_size - len(specials)])}
    for i in range(len(vocab), vocab_size):
        vocab[f"<w{i}>"] = i
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def evaluation_items(count: int) -> list[dict]:
    """The project's Vicuna 80 and Self-Instruct 252 prompts, cycled to `count` items."""
    from eval.sets import load_eval_set

    pool = load_eval_set("vicuna_80", REPO / "none") + load_eval_set("self_instruct_252", REPO / "none")
    return [{**pool[i % len(pool)], "id": f"{pool[i % len(pool)]['id']}#{i}"} for i in range(count)]


def run_setting(name: str, args) -> dict:
    """Build the model, answer `args.batches` batches (after a warm-up batch when compiling), measure."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from student.generation import answer_prompts, answer_prompts_continuous

    kind, bucket, variant, prefill_rows, batch = re.fullmatch(
        r"(plain|static|cb|filled)(\d+)?(-fullgraph)?(?:-p(\d+))?-b(\d+)", name).groups()
    batch, prefill_rows = int(batch), int(prefill_rows or 0)
    bucket = (int(bucket or 64) if kind == "filled" else 0)
    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**(TINY if args.tiny else LLAMA_2_7B)),
                                                 dtype=torch.bfloat16 if cuda else torch.float32)
    model.eval()
    if variant:
        from transformers.generation.configuration_utils import CompileConfig

        # One graph for the whole decoding step, fixed shapes: CUDA graphs cover every kernel.
        model.generation_config.compile_config = CompileConfig(fullgraph=True, dynamic=False)
    items = evaluation_items(batch * args.batches)
    tokenizer = word_level_tokenizer([i["instruction"] + " " + i.get("input", "") for i in items], 32000)
    result = {"setting": name, "batch_size": batch, "static_cache": kind in ("static", "filled"),
              "cache_bucket": bucket, "prefill_rows": prefill_rows, "prompts": len(items),
              "max_new_tokens": args.max_new_tokens}

    def answer(chunk: list[dict]) -> tuple[float, list[dict]]:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        if kind == "cb":  # one engine for both passes: its CUDA graphs are captured in the warm-up pass
            answers = answer_prompts_continuous(model, tokenizer, chunk, "alpaca", args.max_new_tokens,
                                                max_requests=batch, persistent=True)
        else:
            answers = answer_prompts(model, tokenizer, chunk, "alpaca", args.max_new_tokens, batch_size=batch,
                                     static_cache=kind in ("static", "filled"), cache_bucket=bucket,
                                     prefill_rows=prefill_rows)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started, answers

    if kind in ("static", "filled", "cb"):
        # The same prompts once before, so the shapes match: compilation is timed apart.
        seconds, answers = answer(items)
        result["warmup_s"] = round(seconds, 2)
        result["warmup_tokens_per_s"] = round(sum(a["completion_tokens"] for a in answers) / seconds, 1)
    seconds, answers = answer(items)
    new_tokens = sum(a["completion_tokens"] for a in answers)
    result.update(
        measured_prompts=len(answers), new_tokens=new_tokens, seconds=round(seconds, 2),
        tokens_per_s=round(new_tokens / seconds, 1),
        mean_ttft_s=round(sum(a["ttft_s"] for a in answers) / len(answers), 3),
        p95_latency_s=sorted(a["latency_s"] for a in answers)[int(0.95 * (len(answers) - 1))],
        decode_ms_per_step=round(1000 * max((a["latency_s"] - a["ttft_s"]) / max(1, a["completion_tokens"] - 1)
                                            for a in answers), 2),
        prompt_tokens_max=max(len(tokenizer(i["instruction"] + " " + i.get("input", ""))["input_ids"])
                              for i in items),
    )
    result["answer_hashes"] = [hashlib.sha256(a["answer"].encode("utf-8")).hexdigest()[:16] for a in answers]
    # Where two settings' answers part: each answer's first 64 words, compared word by word.
    result["answer_heads"] = [a["answer"].split()[:64] for a in answers]
    from student.generation import encode_prompts

    prompt_lengths = [len(ids) for ids in encode_prompts(tokenizer, items, "alpaca")]
    result.update(bandwidth_share(model, answers, batch, seconds, sum(prompt_lengths) / len(prompt_lengths)))
    if cuda:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["gpu"] = torch.cuda.get_device_name()
    from torch._dynamo.utils import counters

    result["dynamo"] = {key: dict(value) for key, value in counters.items() if key in ("stats", "graph_break")}
    result["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
    if kind == "cb":
        model.destroy_cached_continuous_batching_manager()
    return result


COPY_BANDWIDTH = 4.3e12  # bytes/s a device-to-device copy reached on the H200 (docs/benchmarks.md)


def bandwidth_share(model, answers: list[dict], batch: int, seconds: float, mean_prompt_tokens: float) -> dict:
    """What the decoding steps must read (weights + each row's filled KV cache), at the measured
    rate, as a share of the GPU's copy bandwidth. Steps are counted as new tokens / rows decoding."""
    config = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * (
        config.hidden_size // config.num_attention_heads) * next(model.parameters()).element_size()
    new_tokens = sum(a["completion_tokens"] for a in answers)
    steps = new_tokens / max(1, min(batch, len(answers)))
    mean_context = mean_prompt_tokens + new_tokens / max(1, len(answers)) / 2  # the cache's mean fill while decoding
    bytes_per_step = weight_bytes + min(batch, len(answers)) * mean_context * kv_per_token
    return {"decode_steps_per_s": round(steps / seconds, 2), "gb_read_per_step": round(bytes_per_step / 1e9, 2),
            "copy_bandwidth_share": round(bytes_per_step * steps / seconds / COPY_BANDWIDTH, 3)}


def agreement(results: list[dict]) -> None:
    """Print how many answers of each setting equal the first setting's, prompt by prompt."""
    from student.prompt_format import common_prefix_length

    reference = next((r for r in results if r.get("answer_hashes")), None)
    for result in results:
        if reference is None or result is reference or not result.get("answer_hashes"):
            continue
        pairs = list(zip(reference["answer_hashes"], result["answer_hashes"]))
        same = sum(a == b for a, b in pairs)
        shared = [common_prefix_length(a, b)
                  for a, b in zip(reference.get("answer_heads", []), result.get("answer_heads", []))]
        heads = ""
        if shared:
            result["equal_leading_words_median"] = statistics.median(shared)
            heads = f"; the first {result['equal_leading_words_median']:.0f} words equal (median of the first 64)"
        print(f"{result['setting']}: {same} of {len(pairs)} answers identical to {reference['setting']}'s{heads}",
              flush=True)
        result["identical_to_first"] = [same, len(pairs)]


def main() -> None:
    """Run each setting in its own process and print one JSON line per setting."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=DEFAULT_SETTINGS)
    parser.add_argument("--batches", type=int, default=2, help="measured batches per setting")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, to check the code path")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.one:
        print("RESULT " + json.dumps(run_setting(args.one, args)), flush=True)
        return
    results = []
    for name in args.only.split(","):
        command = [sys.executable, "-m", "bench.bench_generate_gpu", "--one", name, "--batches", str(args.batches),
                   "--max-new-tokens", str(args.max_new_tokens), *(["--tiny"] if args.tiny else [])]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), cwd=REPO)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.log").write_text(done.stderr[-200_000:])
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if lines:
            result = json.loads(lines[-1][len("RESULT "):])
        else:
            tail = done.stderr.strip().splitlines()[-3:]
            result = {"setting": name, "error": " | ".join(tail)}
        result["process_s"] = round(time.perf_counter() - started, 1)
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k not in ("answer_hashes", "answer_heads")}), flush=True)
    agreement(results)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_generate_gpu.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
