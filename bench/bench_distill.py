#!/usr/bin/env python
"""Benchmark: SFT on the teacher's text against logit-level knowledge distillation, same data,
same steps, on this CPU.

Teacher: the embedded SmolLM2-135M-Instruct. Its answers come from the GGUF llama.cpp serves
(in this process, chat template, sampled at --temperature with a fixed seed, --max-answer-tokens
at most), to the first --train + --heldout instructions of data/seed_tasks.jsonl; the logits
distillation learns come from the transformers copy of the same weights
(``student.embedded.ensure_plain_student``). Student: the teacher with some of its decoder
layers removed (``--drop``, by default every other layer from 2 to 24: 18 of 30 layers kept,
DistilBERT's recipe), so that it starts away from the teacher and there is something to learn.

Every method trains the same student on the same --train records for --steps optimizer steps
of --batch rows through ``finetune.train.train_student`` (the pipeline's path): ``sft`` is
method lora; the others are method distill with a LoRA adapter of the same rank (``kd-*``:
trl's GKDTrainer on the records' teacher text with the given beta; ``kd-onpolicy``: trl's
DistillationTrainer, the student sampling --max-new-tokens per prompt every step). Then:

* fidelity: the mean NLL per token of the teacher's answers to the --heldout prompts under the
  tuned student (``eval.fidelity.teacher_answer_nll``, the evaluate stage's measure: lower is
  closer to the teacher), next to the untuned student's and the teacher's own;
* time per optimizer step: the training loop's wall time over its steps (model loading excluded).

The machine is shared: the load average before and after is printed with the numbers.

Usage:  python -m bench.bench_distill [--steps 8] [--batch 4] [--methods sft,kd-b0,kd-b0.5,kd-onpolicy]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from bench.harness import REPO, machine_line, markdown_table

CACHE = Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))
DEFAULT_DROP = tuple(range(2, 25, 2))  # 12 of SmolLM2-135M's 30 layers


def build_student(teacher_dir: Path, drop: tuple[int, ...]) -> Path:
    """The teacher without the decoder layers in ``drop``, saved once into the cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = CACHE / f"bench-distill-student-drop-{'-'.join(map(str, drop))}"
    if (target / "model.safetensors").is_file():
        return target
    import torch

    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    kept = [layer for index, layer in enumerate(model.model.layers) if index not in drop]
    for index, layer in enumerate(kept):
        layer.self_attn.layer_idx = index  # the KV cache is indexed by layer
    model.model.layers = torch.nn.ModuleList(kept)
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in drop]
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=CACHE))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished model is an ordinary directory
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(tmp)
    tmp.rename(target)
    return target


def seed_prompts(count: int) -> list[dict]:
    """The first ``count`` seed tasks as (id, instruction, input)."""
    items = []
    with (REPO / "data" / "seed_tasks.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            task = json.loads(line)
            instance = (task.get("instances") or [{}])[0]
            items.append({"id": task["id"], "instruction": task["instruction"], "input": instance.get("input", "")})
            if len(items) == count:
                break
    return items


def teacher_answers(items: list[dict], max_tokens: int, temperature: float) -> dict[str, dict]:
    """The embedded teacher's answers (llama.cpp, the served GGUF), cached by their settings."""
    from core.embedded_model import find_embedded_gguf

    gguf = find_embedded_gguf()
    key = hashlib.sha256(json.dumps([str(gguf), items, max_tokens, temperature]).encode()).hexdigest()[:16]
    cached = CACHE / f"bench-distill-answers-{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=1024, seed=0, verbose=False)
    answers = {}
    try:
        for item in items:
            text = item["instruction"] + (f"\n\n{item['input']}" if item["input"] else "")
            reply = llm.create_chat_completion([{"role": "user", "content": text}], max_tokens=max_tokens,
                                               temperature=temperature, seed=0)
            choice = reply["choices"][0]
            answers[item["id"]] = {"answer": choice["message"]["content"], "finished": choice["finish_reason"] == "stop"}
    finally:
        llm.close()
    cached.write_text(json.dumps(answers, indent=1), encoding="utf-8")
    return answers


def fidelity(model_dir: Path, adapter: Path | None, items: list[dict], answers: dict[str, dict]) -> float:
    """The teacher's answers' mean NLL per token under the model (with its adapter)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.fidelity import teacher_answer_nll

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return teacher_answer_nll(model, tokenizer, items, answers, "alpaca")["teacher_answer_nll"]


def method_settings(name: str, args) -> dict:
    """FinetuneConfig overrides of one compared method."""
    if name == "sft":
        return {"method": "lora"}
    if name == "kd-onpolicy":
        return {"method": "distill", "distill": {"trainer": "distillation", "beta": args.onpolicy_beta,
                                                 "max_new_tokens": args.max_new_tokens}}
    if name.startswith("kd-b"):
        return {"method": "distill", "distill": {"trainer": "gkd", "beta": float(name[4:]), "lmbda": 0.0}}
    if name.startswith("kd-l"):  # kd-l0.5: GKD with that lmbda, beta 0.5
        return {"method": "distill", "distill": {"trainer": "gkd", "beta": 0.5, "lmbda": float(name[4:]),
                                                 "max_new_tokens": args.max_new_tokens}}
    raise SystemExit(f"unknown method {name!r}: sft, kd-b<beta>, kd-l<lmbda>, kd-onpolicy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="sft,kd-b0,kd-b0.5,kd-onpolicy")
    parser.add_argument("--train", type=int, default=24, help="training records (teacher answers)")
    parser.add_argument("--heldout", type=int, default=12, help="held-out prompts the fidelity is measured on")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-answer-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="on-policy sample length")
    parser.add_argument("--onpolicy-beta", type=float, default=0.5)
    parser.add_argument("--drop", default=",".join(map(str, DEFAULT_DROP)), help="decoder layers removed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from finetune.config import FinetuneConfig
    from finetune.train import train_student
    from student.embedded import ensure_plain_student

    print(machine_line(), f"torch threads {torch.get_num_threads()}")
    load_before = os.getloadavg()
    teacher_dir = ensure_plain_student(CACHE)
    drop = tuple(int(x) for x in args.drop.split(",") if x)
    student_dir = build_student(teacher_dir, drop)
    items = seed_prompts(args.train + args.heldout)
    answers = teacher_answers(items, args.max_answer_tokens, args.temperature)
    train_items, heldout = items[:args.train], items[args.train:]
    records = [{"instruction": i["instruction"], "input": i["input"], "output": answers[i["id"]]["answer"]}
               for i in train_items if answers[i["id"]]["answer"].strip()]
    layers = 30 - len(drop)
    print(f"teacher {teacher_dir.name}; student: {layers} of 30 layers ({student_dir.name}); "
          f"{len(records)} training records, {len(heldout)} held-out prompts; {args.steps} steps of {args.batch} rows, "
          f"lr {args.lr}, LoRA r 16")

    rows = [["teacher (reference)", f"{fidelity(teacher_dir, None, heldout, answers):.3f}", "-", "-"],
            ["untuned student", f"{fidelity(student_dir, None, heldout, answers):.3f}", "-", "-"]]
    for name in args.methods.split(","):
        settings = FinetuneConfig(**{"max_steps": args.steps, "batch_size": args.batch, "learning_rate": args.lr,
                                     "max_length": 512, "lora_r": 16, "lora_alpha": 32, "seed": 0,
                                     "logging_steps": 1, **method_settings(name, args)})
        with tempfile.TemporaryDirectory(prefix=f"bench-distill-{name}-") as out:
            started = time.monotonic()
            result = train_student(records, student_dir, Path(out), settings, progress=False, save_steps=10**6,
                                   teacher_model_dir=teacher_dir if settings.method == "distill" else None)
            total = time.monotonic() - started
            nll = fidelity(student_dir, result.trained_dir, heldout, answers)
        per_step = result.runtime_s / max(1, result.steps)
        rows.append([name, f"{nll:.3f}", f"{per_step:.1f}", f"{total:.0f}"])
        print(f"{name}: teacher-answer NLL {nll:.3f}, {per_step:.1f} s/step, {total:.0f} s with loading "
              f"(load average now {os.getloadavg()[0]:.1f})", flush=True)
    print()
    print(markdown_table(["model", "teacher-answer NLL (held out, nats/token)", "s / step", "train s (with loading)"],
                         rows))
    print(f"\nload average (1, 5, 15 min): before {', '.join(f'{x:.1f}' for x in load_before)}; "
          f"after {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
