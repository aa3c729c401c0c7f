"""What the compress tests share: the embedded student, a real LoRA adapter with nonzero
weights on it, and the merged model, each built once per test session.

The adapter is made by peft itself (every linear layer of the student, rank 8) with its
B matrices set to small seeded random values instead of peft's zeros, so merging changes
every targeted weight; that is what a trained adapter looks like to the merge and the
exporters, without spending the minutes real training steps take on 2 cores (the finetune
tests train for real).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

@pytest.fixture(scope="session")
def student_dir(student_cache_dir) -> Path:
    from student.embedded import ensure_plain_student

    return ensure_plain_student(student_cache_dir)


@pytest.fixture(scope="session")
def adapter_dir(student_dir, tmp_path_factory) -> Path:
    """A LoRA adapter on every linear layer of the student, with nonzero B matrices."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.02)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(student_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def merged_dir(student_dir, adapter_dir, tmp_path_factory) -> Path:
    from finetune.merge import merge_lora

    return merge_lora(student_dir, adapter_dir, tmp_path_factory.mktemp("merged") / "model")
