#!/usr/bin/env python
"""Benchmark: the fine-tuned embedded student against its compressed variants, on this machine.

The student is SmolLM2-135M (the embedded one) with a LoRA adapter: ``--adapter DIR``, or
one trained here for a few real trl steps on seed tasks. It is merged, then made into
the variants (GGUF F16 / Q8_0 / Q4_K_M / Q4_0 served by llama.cpp, PyTorch dynamic int8),
and every model answers the same Vicuna prompts, greedy, one at a time:

* size on disk, parameters, peak memory (the student and the int8 model each in a fresh
  process, its VmHWM; GGUF files: the llama.cpp server process's VmHWM);
* tokens/s, p50 / p95 latency per answer, p50 time to the first token;
* how close each variant's answers are to the student's (exact matches, mean
  character-level similarity): a cheap stand-in for quality, not the judge's win rate.

``--pruning`` (or ``--only-pruning``) also measures 50% unstructured and 2:4 magnitude
pruning of the merged student: perplexity on seed-task answers, Q8_0 GGUF size, and
llama.cpp's time for a fixed amount of work (what the model says cannot change it).

Usage:  python -m bench.bench_compress [--adapter DIR] [--prompts 8] [--max-new-tokens 64] [--pruning]
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.harness import REPO, machine_line, markdown_table  # noqa: E402
from compress.variants import answer_with_variant, build_variants  # noqa: E402
from core.measure import latency_summary, process_peak_memory, size_on_disk  # noqa: E402
from eval.sets import load_eval_set  # noqa: E402
from finetune.merge import merge_lora  # noqa: E402
from student.embedded import ensure_plain_student  # noqa: E402

log = logging.getLogger("bench_compress")
VARIANTS = ["gguf_f16", "gguf_q8_0", "gguf_q4_k_m", "gguf_q4_0", "torch_int8"]
CACHE = Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))


def seed_records(count: int) -> list[dict]:
    """Instruction / input / output records from the shipped seed tasks (first instance each)."""
    records = []
    for line in (REPO / "data" / "seed_tasks.jsonl").read_text(encoding="utf-8").splitlines()[:count]:
        task = json.loads(line)
        instance = task["instances"][0]
        records.append({"instruction": task["instruction"], "input": instance.get("input", ""),
                        "output": instance["output"]})
    return records


def train_adapter(student_dir: Path, out_dir: Path, steps: int) -> Path:
    """A LoRA adapter trained for ``steps`` real trl steps on seed tasks."""
    from finetune.config import FinetuneConfig
    from finetune.train import train_student

    settings = FinetuneConfig(max_length=256, batch_size=4, max_steps=steps, learning_rate=1e-3,
                              lora_r=8, lora_alpha=16, seed=0)
    return train_student(seed_records(32), student_dir, out_dir, settings, progress=False).trained_dir


def _student_in_child(base_dir: str, adapter_dir: str, items: list[dict], max_new_tokens: int) -> tuple[list, dict]:
    """The student (base + adapter, transformers) answering in this fresh process."""
    import torch

    from student.generation import answer_prompts, load_student

    torch.set_num_threads(1)
    started = time.perf_counter()
    model, tokenizer = load_student(Path(base_dir), Path(adapter_dir))
    load_s = time.perf_counter() - started
    answers = answer_prompts(model, tokenizer, items, "alpaca", max_new_tokens)
    return answers, {"parameters": sum(p.numel() for p in model.parameters()), "load_s": round(load_s, 3),
                     "peak_memory_bytes": process_peak_memory()}


def _variant_in_child(variant: dict, items: list[dict], max_new_tokens: int) -> tuple[list, dict]:
    import torch

    torch.set_num_threads(1)
    return answer_with_variant(variant, items, "alpaca", max_new_tokens)


def in_fresh_process(function, *args):
    """Run ``function(*args)`` in a new spawned process, so its peak memory is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def closeness(answers: list[dict], reference: list[dict]) -> dict:
    """Exact-match share and mean character-level similarity of answers to the reference's."""
    pairs = list(zip([a["answer"] for a in answers], [r["answer"] for r in reference]))
    return {"same_as_student": round(sum(a == r for a, r in pairs) / len(pairs), 3),
            "similarity_to_student": round(sum(difflib.SequenceMatcher(None, a, r).ratio() for a, r in pairs)
                                           / len(pairs), 3)}


def perplexity(model, tokenizer, records: list[dict]) -> float:
    """Perplexity of the records' outputs after their Alpaca prompts (prompt tokens not scored)."""
    import math

    import torch

    from student.prompt_format import render_student_prompt

    total, count = 0.0, 0
    with torch.no_grad():
        for record in records:
            prompt = render_student_prompt(record["instruction"], record["input"], "alpaca")
            prompt_ids = tokenizer(prompt)["input_ids"]
            ids = tokenizer(prompt + record["output"])["input_ids"]
            logits = model(torch.tensor([ids])).logits[0, :-1]
            targets = torch.tensor(ids[1:])
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")[len(prompt_ids) - 1:]
            total += float(losses.sum())
            count += len(losses)
    return math.exp(total / count)


def decode_seconds(gguf_path: Path, prompt_tokens: int = 64, new_tokens: int = 32) -> float:
    """Seconds llama.cpp takes (1 thread) for a fixed amount of work on ``gguf_path``: one
    ``prompt_tokens`` batch, then ``new_tokens`` single-token steps. The work does not
    depend on what the model says, so models can be compared at equal work."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    started = time.perf_counter()
    llm.eval([7 + i for i in range(prompt_tokens)])
    for step in range(new_tokens):
        llm.eval([100 + step])
    elapsed = time.perf_counter() - started
    llm.close()
    return elapsed


def pruning_figures(merged_dir: Path, work: Path, rounds: int = 3) -> list[dict]:
    """Dense vs 50% unstructured vs 2:4 magnitude-pruned: perplexity, Q8_0 size, and llama.cpp's
    time for equal work (rounds interleaved across the models, median), on this loaded machine."""
    import statistics

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress.prune import prune_linear_layers

    torch.set_num_threads(1)
    records = seed_records(48)[32:]  # not the ones the adapter was trained on
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    rows = []
    for pattern in ("dense", "unstructured", "2:4"):
        model = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
        zeroed = 0 if pattern == "dense" else prune_linear_layers(model, pattern, 0.5)
        source = merged_dir
        if pattern != "dense":
            source = work / f"pruned-{pattern.replace(':', '_')}"
            model.save_pretrained(source)
            tokenizer.save_pretrained(source)
        ppl = perplexity(model, tokenizer, records)
        del model
        variant = build_variants(source, work / f"variants-{pattern.replace(':', '_')}", ["gguf_q8_0"])[0]
        rows.append({"model": pattern, "zeroed_weights": zeroed, "perplexity": round(ppl, 2),
                     "q8_0_bytes": variant["size_on_disk_bytes"], "path": variant["path"], "seconds": []})
    for _ in range(rounds):
        for row in rows:
            row["seconds"].append(decode_seconds(Path(row["path"])))
    for row in rows:
        row["q8_0_equal_work_s"] = round(statistics.median(row.pop("seconds")), 3)
        log.info("pruning %s: %s", row["model"], row)
    return rows


def print_pruning(rows: list[dict]) -> None:
    """The pruning figures as a markdown table."""
    header = ("merged student", "weights zeroed", "perplexity (seed answers)", "Q8_0 GGUF MB",
              "llama.cpp s, 64-token prompt + 32 steps (median of 3)")
    print(f"\nload average {os.getloadavg()[0]:.1f}")
    print(markdown_table(header, [(row["model"], f"{row['zeroed_weights'] / 1e6:.1f} M", row["perplexity"],
                                   f"{row['q8_0_bytes'] / 1e6:.1f}", row["q8_0_equal_work_s"]) for row in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", type=Path, help="a trained LoRA adapter of the embedded student")
    parser.add_argument("--train-steps", type=int, default=8, help="steps when training an adapter here")
    parser.add_argument("--prompts", type=int, default=8, help="Vicuna prompts answered by each model")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--pruning", action="store_true", help="also measure magnitude pruning")
    parser.add_argument("--only-pruning", action="store_true", help="measure magnitude pruning only")
    parser.add_argument("--work", type=Path, help="keep the models here (default: a temporary directory)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-compress-"))
    student_dir = ensure_plain_student(CACHE)
    started = time.perf_counter()
    adapter = args.adapter or train_adapter(student_dir, work / "finetune", args.train_steps)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    merged = merge_lora(student_dir, adapter, work / "merged")
    merge_s = time.perf_counter() - started
    if args.only_pruning:
        print_pruning(pruning_figures(merged, work))
        return
    started = time.perf_counter()
    variants = build_variants(merged, work / "compress", args.variants)
    compress_s = time.perf_counter() - started
    items = load_eval_set("vicuna_80", Path("unused"))[: args.prompts]

    results = {}
    answers, efficiency = in_fresh_process(_student_in_child, str(student_dir), str(adapter), items,
                                           args.max_new_tokens)
    efficiency["size_on_disk_bytes"] = size_on_disk(student_dir / "model.safetensors", adapter)
    results["student (fp32, transformers)"] = (answers, efficiency)
    reference = answers
    for variant in variants:
        if variant["kind"] == "gguf":
            results[variant["label"]] = answer_with_variant(variant, items, "alpaca", args.max_new_tokens)
        else:
            results[variant["label"]] = in_fresh_process(_variant_in_child, variant, items, args.max_new_tokens)

    print(f"\nmachine: {machine_line()}, load average "
          f"{os.getloadavg()[0]:.1f}; {len(items)} Vicuna prompts, greedy, max {args.max_new_tokens} new tokens, "
          f"one request at a time, 1 thread")
    print(f"adapter: {'given' if args.adapter else f'trained here, {args.train_steps} steps'} ({train_s:.0f} s); "
          f"merge {merge_s:.1f} s; export + quantize {compress_s:.1f} s\n")
    header = ("model", "size MB", "params M", "peak MB", "tok/s", "p50 s", "p95 s", "ttft p50 s",
              "same as student", "similarity")
    table, lines = [], []
    for label, (answers, efficiency) in results.items():
        summary = {**efficiency, **latency_summary([a["latency_s"] for a in answers],
                                                   [a["completion_tokens"] for a in answers],
                                                   [a.get("ttft_s") for a in answers]),
                   **closeness(answers, reference)}
        table.append({"model": label, **{k: v for k, v in summary.items() if not isinstance(v, (dict, list))}})
        lines.append((label, f"{summary['size_on_disk_bytes'] / 1e6:.0f}", f"{summary['parameters'] / 1e6:.1f}",
                      f"{summary['peak_memory_bytes'] / 1e6:.0f}", summary["tokens_per_s"],
                      f"{summary['p50_latency_s']:.2f}", f"{summary['p95_latency_s']:.2f}",
                      f"{summary.get('p50_ttft_s', float('nan')):.3f}", f"{summary['same_as_student']:.2f}",
                      f"{summary['similarity_to_student']:.2f}"))
    print(markdown_table(header, lines))
    if args.pruning:
        rows = pruning_figures(merged, work)
        print_pruning(rows)
        table.append({"pruning": rows})
    (work / "bench_compress.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print(f"\nmodels and bench_compress.json in {work}")


if __name__ == "__main__":
    main()
