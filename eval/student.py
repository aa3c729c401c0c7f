"""Answers from the fine-tuned student: a local transformers model with its LoRA adapter.

Prompts are answered one at a time with greedy decoding, so each answer's latency is the
latency a single user would see.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from finetune.prompt_format import render_student_prompt

log = logging.getLogger(__name__)


def load_student(base_model_dir: Path, adapter_dir: Path | None, trust_remote_code: bool = False):
    """The base model, with the adapter applied when one is given; and its tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, trust_remote_code=trust_remote_code)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.eval()
    return model, tokenizer


@torch.inference_mode()
def answer_prompts(model, tokenizer, items: list[dict], prompt_format: str, max_new_tokens: int) -> list[dict]:
    """Greedy answers with their latency and token counts, one dict per item."""
    answers = []
    for item in items:
        prompt = render_student_prompt(item["instruction"], item.get("input", ""), prompt_format, tokenizer)
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=prompt_format != "chat")
        started = time.perf_counter()
        output = model.generate(
            **encoded, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
        latency = time.perf_counter() - started
        new_tokens = output[0, encoded["input_ids"].shape[1]:]
        answers.append({
            "id": item["id"],
            "answer": tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
            "completion_tokens": int(new_tokens.shape[0]),
            "latency_s": round(latency, 4),
        })
    return answers
