"""Which layers of the teacher make the best smaller student: teacher fidelity of each choice.

The teacher is the embedded SmolLM2-135M-Instruct (its GGUF, served in this process by
llama.cpp, greedy); the student starts as its dequantized copy cut down to some of its 30
decoder layers (student.layers). Each choice is scored by the NLL of the teacher's own answers
(eval.fidelity, the metric of the evaluate stage) on prompts of vicuna_80 that no choice was
made or trained on, first as cut, then after the same short fine-tune on the teacher's answers
to seed tasks (full weights, and LoRA for the chosen one, the demo's other settings).

Choices: every other layer (DistilBERT), the first layers, evenly spaced layers, and the layers
left after dropping those whose removal alone raises the NLL of the teacher's answers to a
calibration set of seed tasks least (student.layers.removal_order; with --greedy, re-ranked
after each removal, student.layers.greedy_drop_order). The order printed here is what
`student.embedded.SMOLLM2_DROP_ORDER` holds.

Run: python -m bench.bench_student_layers [--train-records 32 --eval-prompts 12 --steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import REPO, machine_line, markdown_table

TEACHER_LAYERS = 30


def teacher_answers(prompts: list[dict], max_tokens: int, threads: int) -> dict[str, dict]:
    """Greedy answers of the embedded teacher (llama.cpp, its chat template) to each prompt."""
    from llama_cpp import Llama

    from core.embedded_model import find_embedded_gguf
    from student.prompt_format import chat_user_message

    llm = Llama(model_path=str(find_embedded_gguf()), n_ctx=2048, n_threads=threads, verbose=False)
    try:
        answers = {}
        for item in prompts:
            reply = llm.create_chat_completion(
                messages=[{"role": "user", "content": chat_user_message(item["instruction"], item.get("input", ""))}],
                temperature=0.0, max_tokens=max_tokens)
            choice = reply["choices"][0]
            answers[item["id"]] = {"answer": choice["message"]["content"] or "", "finished": choice["finish_reason"] == "stop"}
        return answers
    finally:
        llm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=6, help="seed tasks the ranking of layers is scored on")
    parser.add_argument("--train-records", type=int, default=32, help="seed tasks with the teacher's answers to train on")
    parser.add_argument("--eval-prompts", type=int, default=12, help="vicuna_80 prompts the choices are measured on")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of each fine-tune (batch 4)")
    parser.add_argument("--max-tokens", type=int, default=96, help="token limit of the teacher's answers")
    parser.add_argument("--greedy", action="store_true", help="re-rank the layers after each removal (slow)")
    parser.add_argument("--no-train", action="store_true", help="measure the choices as cut only (no fine-tunes)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads of the teacher (1: no spinning "
                        "threads on a loaded machine)")
    parser.add_argument("--keep", type=int, default=18, help="layers a student keeps (18 of 30: 68%% of the parameters)")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.fidelity import teacher_answer_nll
    from eval.sets import EVAL_SETS
    from finetune.config import FinetuneConfig
    from finetune.train import train_student
    from student.embedded import ensure_plain_student
    from student.generation import load_student
    from student.layers import greedy_drop_order, keep_layers, layer_subset, parameter_count, removal_order

    torch.manual_seed(0)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, also into a file
    print(machine_line(), f"load average {os.getloadavg()[0]:.2f}")
    seeds = [{"id": r["id"], "instruction": r["instruction"], "input": r["instances"][0]["input"]}
             for r in map(json.loads, (REPO / "data" / "seed_tasks.jsonl").read_text().splitlines())]
    calibration = seeds[:args.calibration]
    training = seeds[args.calibration:args.calibration + args.train_records]
    evaluation = EVAL_SETS["vicuna_80"].prompts()[:args.eval_prompts]
    started = time.perf_counter()
    if args.no_train:
        training = []
    answers = teacher_answers(calibration + training + evaluation, args.max_tokens, args.threads)
    print(f"teacher answers: {len(answers)} in {time.perf_counter() - started:.0f} s")

    base_dir = ensure_plain_student(Path.home() / ".cache" / "distill")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    teacher_params = parameter_count(model)

    def nll(candidate, items) -> float:
        return teacher_answer_nll(candidate, tokenizer, items, answers, "alpaca")["teacher_answer_nll"]

    started = time.perf_counter()
    def calibrated(candidate) -> float:
        return nll(candidate, calibration)

    def report(layer: int, score: float) -> None:
        print(f"  without layer {layer}: NLL {score:.3f}")

    print(f"calibration NLL with all 30 layers: {calibrated(model):.3f}")
    drop_order = (greedy_drop_order(model, calibrated, TEACHER_LAYERS - 15, progress=report) if args.greedy
                  else removal_order(model, calibrated, progress=report)[:TEACHER_LAYERS - 15])
    print(f"drop order {drop_order} ({time.perf_counter() - started:.0f} s)")

    def greedy(keep: int) -> list[int]:
        return sorted(set(range(TEACHER_LAYERS)) - set(drop_order[:TEACHER_LAYERS - keep]))

    k = args.keep
    choices = {
        "all 30 layers (the base student today)": list(range(TEACHER_LAYERS)),
        "every other layer (DistilBERT), 15": list(range(0, TEACHER_LAYERS, 2)),
        f"first {k}": list(range(k)),
        f"evenly spaced {k}": sorted({round(i * (TEACHER_LAYERS - 1) / (k - 1)) for i in range(k)}),
        f"least NLL change, {k}": greedy(k),
        "least NLL change, 15": greedy(15),
    }
    trained = set() if args.no_train else {"every other layer (DistilBERT), 15", f"evenly spaced {k}", f"least NLL change, {k}", "least NLL change, 15"}
    records = [{"instruction": item["instruction"], "input": item["input"], "output": answers[item["id"]]["answer"]}
               for item in training if answers[item["id"]]["answer"].strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-layers-") as scratch:
        for label, keep in choices.items():
            with layer_subset(model, keep):
                params = parameter_count(model)
                untrained = nll(model, evaluation)
            tuned = {}
            if label in trained:
                cut_dir = Path(scratch) / f"cut-{len(keep)}-{abs(hash(tuple(keep)))}"
                cut = keep_layers(AutoModelForCausalLM.from_pretrained(base_dir), keep)
                cut.save_pretrained(cut_dir)
                tokenizer.save_pretrained(cut_dir)
                methods = ("full", "lora") if label == f"least NLL change, {k}" else ("full",)
                for method in methods:
                    settings = FinetuneConfig(method=method, max_steps=args.steps, batch_size=4, max_length=512,
                                              learning_rate=2e-4 if method == "lora" else 5e-5, lora_r=8,
                                              lora_alpha=16, save_steps=10_000)
                    started = time.perf_counter()
                    result = train_student(records, cut_dir, Path(scratch) / f"out-{method}-{len(keep)}", settings,
                                           progress=False)
                    seconds = time.perf_counter() - started
                    tuned_model = (load_student(cut_dir, result.trained_dir)[0] if method == "lora"
                                   else AutoModelForCausalLM.from_pretrained(result.trained_dir))
                    tuned[method] = (nll(tuned_model, evaluation), seconds)
                    del tuned_model
            rows.append([label, len(keep), f"{params / 1e6:.1f}M", f"{params / teacher_params:.0%}", f"{untrained:.3f}",
                         *(f"{tuned[m][0]:.3f} ({tuned[m][1]:.0f} s)" if m in tuned else "" for m in ("full", "lora"))])
            print(rows[-1], flush=True)
    print()
    print(markdown_table(["layers kept", "count", "parameters", "of the teacher's", "NLL as cut",
                          f"NLL after {args.steps} steps, full", f"NLL after {args.steps} steps, LoRA"], rows))
    print(f"\ndrop order: {drop_order}")
    print(f"calibration {len(calibration)} seed tasks, training {len(records)} records, evaluation "
          f"{len(evaluation)} vicuna_80 prompts; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
