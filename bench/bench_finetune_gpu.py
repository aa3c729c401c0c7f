#!/usr/bin/env python
"""Benchmark: LoRA fine-tuning throughput of the finetune stage on one GPU (tokens/s, MFU, memory).

The student is Llama-2-7B-shaped (hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab
32000), built from a LlamaConfig with random weights on the GPU: nothing is downloaded. Each
setting trains through the project's own code path: ``finetune.train.model_load_kwargs`` for the
weights' dtype and attention kernel, then ``finetune.train.build_trainer_for_dataset`` (the
SFTConfig and LoraConfig builders of ``train_student``: LoRA r=16, alpha 32, all linear layers),
fed with synthetic token data, and ``trainer.train()``. A plain loop (transformers + peft +
fused AdamW under bf16 autocast, no Trainer) is an extra reference row.

Data ("full"): rows of exactly --seq-len (2,048) random tokens, every token a label. "docs":
synthetic documents of 128..1,536 tokens, either padded per batch or packed into 2,048-token
rows (trl's best-fit-decreasing packing, padding-free); tokens/s then counts real tokens only.

Model FLOPs (MFU), per trained token, with N = the parameters that take part in matmuls
(every linear layer of the 32 blocks plus the LM head; 6.607e9; the embedding is a lookup and
the LoRA adapters' own ~0.1% are left out):
    linear layers:  4N   = 2N forward + 2N backward to the inputs (frozen weights get no gradient)
    attention:      12 * s * h * L  = forward QK^T and PV, 2*2*s*h per layer, plus backward
                                      twice the forward; s = the token's sequence (document) length,
                                      counted as full (non-causal) s x s, the PaLM convention
At s = 2,048 that is 26.43e9 + 3.22e9 = 29.65e9 FLOP per token. MFU = FLOPs / time / peak, the
peak being the GPU's dense bf16 rate from its datasheet (989.4 TFLOP/s for H100 SXM and H200).
A causal count (half the attention) is reported too. Recomputation under gradient
checkpointing is not counted (it is overhead).

QLoRA settings (``method: qlora``) save the random model once in bf16 under --model-cache and
load it back through ``finetune.train.load_model``, which quantizes it to 4 bits (bitsandbytes
NF4); the FLOP count is the same (dequantizing the weights is overhead, not model FLOPs).

Every setting runs in its own process (liger patches modules globally; an OOM stays contained),
times --steps optimizer steps after --warmup (cuda-synchronised wall time between step ends,
so data loading, logging and the optimizer are included), and reports peak allocated memory.

Run from the repository root (the project need not be installed: its packages import from
there, and each setting's worker process is started the same way, in the repository root):

Usage:  python -m bench.bench_finetune_gpu [--out DIR] [--only a,b,...] [--tiny] [--budget-s 540]
            [--steps 8] [--warmup 3] [--without FIELD,...] [--check-varlen] [--list]

On the lent H100 (no trl/datasets/liger/pydantic there: carried as wheels in .whl/, see
docs/benchmarks.md), one call measures several settings, e.g.
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    python3 -m bench.bench_finetune_gpu --out $OUT/final --steps 10 --warmup 3 \
        --only fp32w-gc-b4,best-b7,best-b6,best-nocompile-liger-b6
CPU smoke test of the code paths (tiny model, no liger or compile):
    python -m bench.bench_finetune_gpu --tiny --seq-len 256 --steps 2 --warmup 1 \
        --without use_liger_kernel,torch_compile --only fast-b4,docs-packed-varlen-b4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import REPO

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LLAMA2_7B = dict(
    hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
    intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
TINY = dict(
    hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
    intermediate_size=688, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
# Dense bf16 peak (TFLOP/s) by device name, from NVIDIA's datasheets.
PEAKS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H20", 148.0),
         ("A100", 312.0), ("L40S", 362.0)]

# name -> (FinetuneConfig overrides, bench options). Options: data ("full" | "docs"); peft_cast
# (put back peft's float32 cast of LoRA inputs, to measure what turning it off gives); loop (the
# plain loop instead of the trainer); profile (2 profiled steps after the timed ones: GPU time by
# kernel kind and the GPU's idle gaps, printed to the log); sft (SFTConfig fields set on the
# built trainer, to probe arguments before they become settings); timeout_s.
BASE = dict(max_length=2048, lora_r=16, lora_alpha=32, target_modules="all-linear", learning_rate=2e-4)
BF16 = dict(model_dtype="bfloat16", bf16=True)
FAST = dict(BF16, gradient_checkpointing=False, use_liger_kernel=True, lora_dropout=0.0)
COMPILE = dict(BF16, gradient_checkpointing=False, lora_dropout=0.0, torch_compile=True)
BEST = dict(COMPILE, dataloader_num_workers=2, logging_steps=10)
LONG = {"timeout_s": 420}  # compilation takes 15-25 s more
SETTINGS: dict[str, tuple[dict, dict]] = {
    # what train_student did on a GPU before: float32 weights, bf16 autocast, checkpointing, batch 4
    "fp32w-gc-b4": (dict(batch_size=4), {}),
    "bf16w-gc-b4": (dict(BF16, batch_size=4), {}),
    "bf16w-peftcast-gc-b4": (dict(BF16, batch_size=4), {"peft_cast": True}),
    "bf16w-b2": (dict(BF16, gradient_checkpointing=False, batch_size=2), {}),
    "bf16w-liger-b2": (dict(BF16, gradient_checkpointing=False, use_liger_kernel=True, batch_size=2), {}),
    "bf16w-liger-b4": (dict(BF16, gradient_checkpointing=False, use_liger_kernel=True, batch_size=4), {}),
    "fast-b4": (dict(FAST, batch_size=4), {}),  # liger + lora_dropout 0
    "fast-b6": (dict(FAST, batch_size=6), {}),
    "fast-b8": (dict(FAST, batch_size=8), {}),
    "fast-b6-ga2": (dict(FAST, batch_size=6, gradient_accumulation_steps=2), {}),
    "fast-gc-b16": (dict(FAST, gradient_checkpointing=True, batch_size=16), {}),
    "fast-sdpavarlen-b4": (dict(FAST, attn_implementation="sdpa_varlen", batch_size=4), {}),
    "fast-cudnn-b4": (dict(FAST, attn_implementation="sdpa_cudnn", batch_size=4), {}),
    "fast-cudnn-b6": (dict(FAST, attn_implementation="sdpa_cudnn", batch_size=6), {}),
    "fast-b4-profile": (dict(FAST, batch_size=4), {"profile": True}),
    "compile-b4": (dict(COMPILE, batch_size=4), LONG),
    "compile-liger-b4": (dict(COMPILE, use_liger_kernel=True, batch_size=4), LONG),
    "compile-b6": (dict(COMPILE, batch_size=6), LONG),
    "compile-b6-profile": (dict(COMPILE, batch_size=6), {**LONG, "profile": True}),
    "compile-b7": (dict(COMPILE, batch_size=7), LONG),
    "compile-b8": (dict(COMPILE, batch_size=8), LONG),
    "compile-b6-ga2": (dict(COMPILE, batch_size=6, gradient_accumulation_steps=2), LONG),
    "compile-b7-ga2": (dict(COMPILE, batch_size=7, gradient_accumulation_steps=2), LONG),
    "compile-b7-profile": (dict(COMPILE, batch_size=7), {**LONG, "profile": True}),
    "compile-b7-workers2": (dict(COMPILE, batch_size=7), {**LONG, "sft": {"dataloader_num_workers": 2}}),
    "compile-b7-log10": (dict(COMPILE, batch_size=7), {**LONG, "sft": {"logging_steps": 10}}),
    "compile-gc-b16": (dict(COMPILE, gradient_checkpointing=True, batch_size=16), LONG),
    # the recommended GPU settings (docs/benchmarks.md)
    "best-b7": (dict(BEST, batch_size=7), LONG),
    "best-b8": (dict(BEST, batch_size=8), LONG),
    # the recommended setting with one lever more each (issue: LoRA past 20k tokens/s, FP8 past 25k)
    "best-fused-b7": (dict(BEST, optimizer="adamw_torch_fused", batch_size=7), LONG),
    "best-fp8-b7": (dict(BEST, base_precision="fp8", batch_size=7), LONG),
    "best-fp8-b8": (dict(BEST, base_precision="fp8", batch_size=8), LONG),
    "best-fp8-b10": (dict(BEST, base_precision="fp8", batch_size=10), LONG),  # H200: 141 GB
    "best-fp8-b12": (dict(BEST, base_precision="fp8", batch_size=12), LONG),
    "best-fp8-fused-b8": (dict(BEST, base_precision="fp8", optimizer="adamw_torch_fused", batch_size=8), LONG),
    # loss curves on real text (Alpaca's records, tokens by a word hash), every step logged:
    # bf16 against fp8, same data and seed (--steps 197 --warmup 3 makes 200 steps)
    "curve-bf16-b4": (dict(BEST, batch_size=4, logging_steps=1), {**LONG, "data": "text", "losses": True}),
    "curve-fp8-b4": (dict(BEST, base_precision="fp8", batch_size=4, logging_steps=1),
                     {**LONG, "data": "text", "losses": True}),
    "best-b6": (dict(BEST, batch_size=6), LONG),
    "best-nocompile-liger-b6": (dict(BEST, torch_compile=False, use_liger_kernel=True, batch_size=6), {}),
    # variable-length documents: padded batches vs packed rows
    "docs-padded-b8": (dict(FAST, batch_size=8), {"data": "docs"}),
    "docs-packed-sdpa-b4": (dict(FAST, packing=True, attn_implementation="sdpa", batch_size=4), {"data": "docs"}),
    "docs-packed-varlen-b4": (dict(FAST, packing=True, attn_implementation="sdpa_varlen", batch_size=4),
                              {"data": "docs"}),
    # QLoRA (method: qlora): the base saved once in bf16, then loaded 4-bit (NF4) through load_model
    "qlora-gc-b4": (dict(BF16, method="qlora", batch_size=4), LONG),
    "qlora-b4": (dict(BF16, method="qlora", gradient_checkpointing=False, lora_dropout=0.0, batch_size=4), LONG),
    "qlora-paged8-b4": (dict(BF16, method="qlora", gradient_checkpointing=False, lora_dropout=0.0, batch_size=4,
                             optimizer="paged_adamw_8bit"), LONG),
    # QLoRA without checkpointing, with Liger's fused kernels (less activation memory): under 24 GiB?
    "qlora-liger-b1": (dict(BF16, method="qlora", gradient_checkpointing=False, lora_dropout=0.0,
                            use_liger_kernel=True, batch_size=1), LONG),
    "qlora-liger-b2": (dict(BF16, method="qlora", gradient_checkpointing=False, lora_dropout=0.0,
                            use_liger_kernel=True, batch_size=2), LONG),
    # the same with the recommended setting's levers (compiled layers, 2 loader workers, fewer logs)
    "qlora-liger-w2-b1": (dict(BF16, method="qlora", gradient_checkpointing=False, lora_dropout=0.0,
                               use_liger_kernel=True, batch_size=1, dataloader_num_workers=2, logging_steps=10), LONG),
    "qlora-best-b1": (dict(BEST, method="qlora", batch_size=1), LONG),
    "qlora-best-liger-b1": (dict(BEST, method="qlora", use_liger_kernel=True, batch_size=1), LONG),
    "qlora-gc-b16": (dict(BF16, method="qlora", lora_dropout=0.0, batch_size=16), LONG),
    # reference: no Trainer, plain transformers + peft (peft's defaults), bf16 weights, autocast
    "plain-loop-b2": (dict(BF16, gradient_checkpointing=False, batch_size=2), {"loop": True}),
}


# ----------------------------------------------------------------------------- accounting


def matmul_params(cfg: dict) -> int:
    """Parameters of every matmul per token: the blocks' linear layers and the LM head."""
    h, i, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    return L * (h * h + 2 * h * kv + h * h + 3 * h * i) + V * h


def model_flops(cfg: dict, tokens: int, sum_sq_lengths: int) -> tuple[float, float]:
    """(FLOPs with full s x s attention, FLOPs with causal attention) for a step; see the docstring."""
    h, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    linear = 4 * matmul_params(cfg) * tokens
    attention = 12 * h * L * sum_sq_lengths
    return linear + attention, linear + attention / 2


def peak_tflops(name: str) -> float:
    for key, value in PEAKS:
        if key in name:
            return value
    return 989.4


# ----------------------------------------------------------------------------- data


def synthetic_tokenizer(vocab_size: int):
    """A word-level fast tokenizer over ids 0..vocab-1 (0 unk, 1 bos, 2 eos = pad): trl wants one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    vocab.update({"<unk>": 0, "<s>": 1, "</s>": 2})
    del vocab["t0"], vocab["t1"], vocab["t2"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def text_rows(rows_needed: int, seq_len: int, vocab: int, text_file: Path) -> list[list[int]]:
    """Rows of exactly seq_len tokens of real text: Alpaca's records (instruction, input, output), each
    word mapped to an id by a stable hash, records packed end to end (356k tokens in the 5,000 records). Real text has structure a model
    can learn (word frequencies, phrases), so a loss curve over it shows what a precision change does."""
    import re
    import zlib

    records = json.loads(text_file.read_text(encoding="utf-8"))
    stream: list[int] = []
    for record in records:
        words = re.findall(r"\w+|[^\w\s]", " ".join((record["instruction"], record.get("input", ""),
                                                    record["output"])))
        stream += [3 + zlib.crc32(word.lower().encode("utf-8")) % (vocab - 3) for word in words] + [2]
    # More rows than the text holds: it is read again from the start (epochs), for every setting alike.
    needed = rows_needed * seq_len
    stream = (stream * (needed // len(stream) + 1))[:needed]
    return [stream[k * seq_len:(k + 1) * seq_len] for k in range(rows_needed)]


def synthetic_rows(mode: str, rows_needed: int, seq_len: int, vocab: int, seed: int) -> list[list[int]]:
    """Token rows: "full" = rows of exactly seq_len; "docs" = documents of 1/16..3/4 of seq_len."""
    import random

    rng = random.Random(seed)
    if mode == "full":
        return [[rng.randrange(3, vocab) for _ in range(seq_len)] for _ in range(rows_needed)]
    docs, total = [], 0
    while total < rows_needed * seq_len:
        n = rng.randint(seq_len // 16, seq_len * 3 // 4)
        docs.append([rng.randrange(3, vocab) for _ in range(n)])
        total += n
    return docs


class CountingCollator:
    """Wraps the trainer's collator: records (real tokens, sum of squared document lengths) per batch."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[tuple[int, int]] = []

    def __call__(self, examples):
        batch = self.inner(examples)
        if "position_ids" in batch and "attention_mask" not in batch:  # padding-free: documents in one row
            lengths = (batch["cu_seq_lens_q"][1:] - batch["cu_seq_lens_q"][:-1]).tolist()
        else:
            lengths = batch["attention_mask"].sum(dim=1).tolist()
        self.batches.append((int(sum(lengths)), int(sum(n * n for n in lengths))))
        return batch


# ----------------------------------------------------------------------------- one setting (worker)


def run_setting(name: str, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, TrainerCallback

    from finetune.config import FinetuneConfig
    from finetune.train import build_trainer_for_dataset, load_model, model_load_kwargs

    overrides, opts = SETTINGS[name]
    overrides = {k: v for k, v in overrides.items() if k not in args.without.split(",")}
    cfg = TINY if args.tiny else LLAMA2_7B
    seq_len = args.seq_len
    profile_steps = 2 if opts.get("profile") else 0  # profiled after the timed steps
    settings = FinetuneConfig(
        **{**BASE, "max_length": seq_len, "max_steps": args.warmup + args.steps + profile_steps, **overrides}
    )
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    result: dict = {"name": name, "settings": {k: v for k, v in overrides.items()}, "options": opts,
                    "model": "tiny" if args.tiny else "llama-2-7b-shape", "seq_len": seq_len}
    torch.manual_seed(0)
    kwargs = model_load_kwargs(settings)
    kwargs.pop("trust_remote_code", None)
    t0 = time.perf_counter()
    if settings.method == "qlora":  # quantized on loading: through a saved copy, as a user's model is
        model = load_model(saved_base_model(cfg, args), settings)
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(LlamaConfig(**cfg), **kwargs)
    result["attn_implementation"] = model.config._attn_implementation
    if cuda:
        torch.cuda.synchronize()
    result["model_build_s"] = round(time.perf_counter() - t0, 1)
    steps_total = args.warmup + args.steps
    ga = settings.gradient_accumulation_steps
    mode = opts.get("data", "full")
    rows_needed = settings.batch_size * ga * steps_total + settings.batch_size
    if mode == "text":
        rows = text_rows(rows_needed, seq_len, cfg["vocab_size"], Path(args.text_file))
    else:
        rows = synthetic_rows(mode, rows_needed if mode == "full" else rows_needed + 4, seq_len, cfg["vocab_size"], 0)
    if settings.base_precision == "fp8" and cuda:
        from finetune.train import check_hardware

        check_hardware(settings)

    if opts.get("loop"):
        return {**result, **plain_loop(model, settings, rows, args, cfg)}

    from datasets import Dataset

    tokenizer = synthetic_tokenizer(cfg["vocab_size"])
    times: list[float] = []

    profiler: list = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            control.should_save = False  # no checkpoint writing inside the measurement
            if profile_steps and state.global_step == steps_total:
                profiler.append(torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                                   torch.profiler.ProfilerActivity.CUDA]))
                profiler[0].__enter__()
            elif profiler and state.global_step == steps_total + profile_steps:
                profiler[0].__exit__(None, None, None)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        trainer = build_trainer_for_dataset(
            Dataset.from_dict({"input_ids": rows}), model, tokenizer, Path(tmp), settings,
            save_steps=10**9, progress=False, callbacks=[StepTimer()],
        )
        for key, value in opts.get("sft", {}).items():  # probes of trainer arguments not (yet) in the config
            setattr(trainer.args, key, value)
        if opts.get("peft_cast"):
            from peft.tuners.tuners_utils import BaseTunerLayer

            for module in trainer.model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.cast_input_dtype_enabled = True
        counter = CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        result["trainer_build_s"] = round(time.perf_counter() - t0, 1)
        trainable, total = trainer.model.get_nb_trainable_parameters()
        result["trainable_params"], result["total_params"] = int(trainable), int(total)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        trainer.train()
        result["train_s"] = round(time.perf_counter() - t0, 1)

    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result["loss_first_last"] = [losses[0], losses[-1]] if losses else None
    if opts.get("losses"):
        result["losses"] = losses
    step_ends = times[1:]
    if len(step_ends) < steps_total:
        raise RuntimeError(f"only {len(step_ends)} steps ran")
    if len(counter.batches) < steps_total * ga and mode in ("full", "text"):  # collated in worker processes: not seen here
        counter.batches = [(settings.batch_size * seq_len, settings.batch_size * seq_len**2)] * (steps_total * ga)
    per_step = [(sum(t for t, _ in counter.batches[k * ga:(k + 1) * ga]),
                 sum(s for _, s in counter.batches[k * ga:(k + 1) * ga])) for k in range(steps_total)]
    measured = per_step[args.warmup:]
    elapsed = step_ends[steps_total - 1] - step_ends[args.warmup - 1]
    tokens = sum(t for t, _ in measured)
    flops_full, flops_causal = model_flops(cfg, tokens, sum(s for _, s in measured))
    result["step_s"] = [round(b - a, 4) for a, b in zip(times[:-1], times[1:])]
    if profiler:
        wall = (step_ends[steps_total + profile_steps - 1] - step_ends[steps_total - 1]) * 1e6
        result["profile"] = kernel_breakdown(profiler[0], wall)
    result.update(accounting(tokens, elapsed, flops_full, flops_causal, cuda))
    # padded slots, to show what padding costs in the "docs" setting
    result["tokens_per_step"] = round(tokens / len(measured))
    return result


def saved_base_model(cfg: dict, args) -> Path:
    """A random-weight model of ``cfg`` saved in bf16 (once per machine, reused by later settings)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    path = Path(args.model_cache) / ("tiny" if args.tiny else "llama-2-7b-shape")
    if (path / "config.json").is_file():
        return path
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**cfg), dtype=torch.bfloat16)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    tmp.rename(path)
    return path


def kernel_breakdown(prof, wall_us: float) -> dict:
    """GPU time by kind of kernel over the profiled steps (kernel durations from the trace), and the top ones."""
    from collections import defaultdict

    from torch.autograd import DeviceType

    kinds = (("attention", ("flash", "fmha", "attention", "cudnn", "sdpa")),
             ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "cublas")),
             ("triton", ("triton",)),
             ("copy/cast", ("copy", "cast", "to_copy", "memcpy", "memset")))
    by_kind: dict = defaultdict(float)
    by_name: dict = defaultdict(float)
    for event in prof.events():
        if event.device_type != DeviceType.CUDA:
            continue
        us = event.time_range.end - event.time_range.start
        name = event.name
        lowered = name.lower()
        kind = next((k for k, keys in kinds if any(key in lowered for key in keys)), "other elementwise")
        by_kind[kind] += us
        by_name[name[:100]] += us
    busy = sum(by_kind.values())
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:25]
    # GPU idle: gaps between consecutive kernels, each put down to the top-level CPU op that
    # overlaps it most (what the host was doing while the GPU waited)
    kernels = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
    cpu_ops = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                     if e.device_type == DeviceType.CPU and e.cpu_parent is None)
    idle_by_op: dict = defaultdict(float)
    gaps, last_end = [], None
    for start, end in kernels:
        if last_end is not None and start - last_end > 50:
            gaps.append((last_end, start))
        last_end = max(end, last_end or end)
    for g0, g1 in gaps:
        best, best_overlap = "(no op: python)", 0.0
        for c0, c1, cname in cpu_ops:
            if c0 > g1:
                break
            overlap = min(c1, g1) - max(c0, g0)
            if overlap > best_overlap:
                best, best_overlap = cname, overlap
        idle_by_op[best[:90]] += g1 - g0
    idle = sum(g1 - g0 for g0, g1 in gaps)
    print(f"  idle in {len(gaps)} gaps over 50 us: {idle / 1e3:.1f} ms; by the CPU op under the gap:", flush=True)
    for cname, us in sorted(idle_by_op.items(), key=lambda kv: -kv[1])[:15]:
        print(f"    {us / 1e3:8.1f} ms  {cname}", flush=True)
    print(f"profile: wall {wall_us / 1e3:.1f} ms, GPU busy {busy / 1e3:.1f} ms", flush=True)
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:18s} {us / 1e3:9.1f} ms  {us / wall_us:6.1%} of wall", flush=True)
    for name, us in top:
        print(f"  {us / 1e3:9.1f} ms  {name}", flush=True)
    return {"wall_ms": round(wall_us / 1e3, 1), "busy_ms": round(busy / 1e3, 1), "idle_gaps_ms": round(idle / 1e3, 1),
            "idle_by_cpu_op_ms": {k: round(v / 1e3, 1) for k, v in sorted(idle_by_op.items(), key=lambda kv: -kv[1])[:15]},
            "by_kind_ms": {k: round(v / 1e3, 1) for k, v in by_kind.items()},
            "top_ms": [[n, round(v / 1e3, 2)] for n, v in top]}


def accounting(tokens: int, elapsed: float, flops_full: float, flops_causal: float, cuda: bool) -> dict:
    import torch

    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    peak = peak_tflops(name) * 1e12
    out = {
        "device": name,
        "peak_tflops": peak / 1e12,
        "measured_s": round(elapsed, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / elapsed, 1),
        "model_tflops_per_s": round(flops_full / elapsed / 1e12, 1),
        "mfu": round(flops_full / elapsed / peak, 4),
        "mfu_causal_attention": round(flops_causal / elapsed / peak, 4),
    }
    if cuda:
        out["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    return out


def plain_loop(model, settings, rows, args, cfg) -> dict:
    """Reference without the Trainer: peft's defaults, fused AdamW, bf16 autocast, the model's own loss."""
    import torch
    from peft import get_peft_model

    from finetune.train import build_lora_config

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = get_peft_model(model, build_lora_config(settings))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, fused=cuda)
    b = settings.batch_size
    data = torch.tensor(rows, dtype=torch.long)
    times, losses = [], []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    times.append(time.perf_counter())
    for step in range(args.warmup + args.steps):
        batch = data[step * b:(step + 1) * b].to(device, non_blocking=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter())
    elapsed = times[-1] - times[args.warmup]
    tokens = b * args.seq_len * args.steps
    flops_full, flops_causal = model_flops(cfg, tokens, b * args.steps * args.seq_len**2)
    out = {"loss_first_last": [losses[0], losses[-1]], "step_s": [round(y - x, 4) for x, y in zip(times, times[1:])]}
    out.update(accounting(tokens, elapsed, flops_full, flops_causal, cuda))
    out["tokens_per_step"] = b * args.seq_len
    return out


def check_varlen(out: Path) -> dict:
    """sdpa_varlen on a packed row against each document run on its own (tiny model): bf16 weights,
    and float32 weights under bf16 autocast (the two ways training runs it)."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from finetune.config import FinetuneConfig
    from finetune.train import model_load_kwargs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    lengths = [300, 517, 1, 230]
    results = {}
    for dtype, autocast in (("bfloat16", False), ("float32", True)):
        settings = FinetuneConfig(attn_implementation="sdpa_varlen", model_dtype=dtype)
        kwargs = model_load_kwargs(settings)
        kwargs.pop("trust_remote_code", None)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(LlamaConfig(**TINY), **kwargs)
        model.train()  # no dropout in Llama attention; the training path is the one used
        ctx = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
        ids = torch.randint(3, 32000, (1, sum(lengths)), device=device)
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
        with ctx():
            packed = model(input_ids=ids, position_ids=position_ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                           max_length_q=max(lengths), max_length_k=max(lengths), use_cache=False).logits[0]
        packed.float().pow(2).sum().backward()
        grad_packed = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        model.zero_grad()
        pieces = []
        for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
            with ctx():
                pieces.append(model(input_ids=ids[:, start:end], use_cache=False).logits[0])
        single = torch.cat(pieces)
        single.float().pow(2).sum().backward()
        grad_single = model.model.layers[0].self_attn.q_proj.weight.grad
        rel = ((packed.float() - single.float()).norm() / single.float().norm()).item()
        rel_grad = ((grad_packed.float() - grad_single.float()).norm() / grad_single.float().norm()).item()
        results[f"{dtype}{'+autocast' if autocast else ''}"] = {"logits_rel_err": rel, "grad_rel_err": rel_grad}
    results["ok"] = all(r["logits_rel_err"] < 2e-2 and r["grad_rel_err"] < 5e-2 for r in results.values())
    print("varlen check:", json.dumps(results), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "varlen_check.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


# ----------------------------------------------------------------------------- driver


def environment() -> dict:
    import importlib.metadata as md

    info = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "liger-kernel", "triton"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


def table(results: list[dict]) -> str:
    lines = ["| setting | tokens/s | MFU | MFU (causal attn) | peak alloc GiB | loss first→last | note |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | – | – | – | – | – | {r['error'][:90]} |")
            continue
        loss = r.get("loss_first_last") or [float("nan")] * 2
        lines.append(
            f"| {r['name']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['mfu_causal_attention']:.1%} | "
            f"{r.get('peak_alloc_gib', float('nan')):.1f} | {loss[0]:.2f}→{loss[1]:.2f} | "
            f"{r.get('tokens_per_step', '')} tok/step |"
        )
    return "\n".join(lines)


def driver(args) -> int:
    names = [n.strip() for n in args.only.split(",")] if args.only else list(SETTINGS)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        sys.exit(f"unknown settings: {unknown}; --list shows them")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(json.dumps(env, indent=1), flush=True)
    results, started = [], time.monotonic()
    log = (out / "bench.log").open("a")
    for name in names:
        timeout = SETTINGS[name][1].get("timeout_s", args.timeout_s)
        left = args.budget_s - (time.monotonic() - started)
        if left < min(timeout, args.min_left_s):
            results.append({"name": name, "error": f"skipped: {left:.0f} s of the budget left"})
            continue
        res_file = out / f".{name}.json"
        cmd = [sys.executable, "-m", "bench.bench_finetune_gpu", "--worker", name, "--result", str(res_file),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--seq-len", str(args.seq_len),
               "--without", args.without, "--text-file", args.text_file]
        cmd += ["--tiny"] if args.tiny else []
        cmd += ["--model-cache", args.model_cache]
        t0 = time.monotonic()
        print(f"--- {name}", flush=True)
        log.write(f"\n===== {name}: {' '.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=min(timeout, left), cwd=REPO)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall = round(time.monotonic() - t0, 1)
        if res_file.is_file():
            res = json.loads(res_file.read_text())
            res_file.unlink()
        else:
            res = {"name": name, "error": f"exit {rc}"}
        res["wall_s"] = wall
        results.append(res)
        summary = {k: res.get(k) for k in ("tokens_per_s", "mfu", "peak_alloc_gib", "error", "loss_first_last")}
        print(f"    {wall:.0f}s {summary}", flush=True)
        (out / "results.json").write_text(json.dumps({"environment": env, "results": results}, indent=1) + "\n")
    md = table(results)
    (out / "results.md").write_text(md + "\n")
    print(md)
    return 0


def worker(args) -> int:
    import traceback

    try:
        res = run_setting(args.worker, args)
    except Exception as exc:  # reported in the table; the traceback goes to the log
        traceback.print_exc()
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        if "out of memory" in msg.lower():
            msg = "CUDA out of memory"
        res = {"name": args.worker, "error": msg[:300]}
    Path(args.result).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "runs" / "bench_finetune_gpu"))
    ap.add_argument("--only", default="", help="comma-separated settings (default: all)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model of hidden 256 (smoke test, CPU or GPU)")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--timeout-s", type=int, default=240, help="per setting (compile settings have their own)")
    ap.add_argument("--budget-s", type=float, default=540, help="start no setting past this many seconds")
    ap.add_argument("--min-left-s", type=float, default=60)
    ap.add_argument("--without", default="", help="settings fields to drop, e.g. use_liger_kernel,torch_compile "
                    "for a CPU smoke test")
    ap.add_argument("--check-varlen", action="store_true", help="check sdpa_varlen against unpacked runs, then exit")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--text-file", default=str(REPO.parent / "shared" / "data" / "alpaca_5000.json"),
                    help="Alpaca-format JSON for the text data of the curve settings")
    ap.add_argument("--model-cache", default=os.path.join(tempfile.gettempdir(), "bench_finetune_models"),
                    help="where QLoRA settings save the random base model once, to load it quantized")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.list:
        for name, (overrides, opts) in SETTINGS.items():
            print(f"{name:24s} {overrides} {opts}")
        return 0
    if args.worker:
        return worker(args)
    if args.check_varlen:
        check_varlen(Path(args.out))
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
