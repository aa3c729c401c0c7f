"""The fine-tuning presets load, say what they promise, and refuse a missing student clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from pipeline.config import check_base_model, load_config
from finetune.train import TrainingSetupError, check_hardware, train_student

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_alpaca_preset_is_lora_on_a_base_model():
    finetune = load_config(CONFIGS / "alpaca.yaml").finetune
    assert finetune.method == "lora" and finetune.prompt_format == "alpaca"
    assert finetune.base_model.endswith("/models/llama-7b")
    evaluate = load_config(CONFIGS / "alpaca.yaml").evaluate  # the measured GPU answering levers
    assert evaluate.static_cache and evaluate.static_cache_bucket == 64 and evaluate.static_cache_prefill_rows == 32


def test_chat_student_preset_is_qlora_with_the_chat_template():
    finetune = load_config(CONFIGS / "chat-student-8b.yaml").finetune
    assert finetune.method == "qlora" and finetune.prompt_format == "chat"
    assert finetune.model_dtype == "bfloat16" and finetune.packing and finetune.merge
    assert Path(finetune.base_model).is_absolute()  # resolved against the config file's folder
    assert finetune.base_model.endswith("/configs/models/Llama-3.1-8B-Instruct")


@pytest.mark.parametrize("name", ["alpaca.yaml", "chat-student-8b.yaml"])
def test_missing_student_is_named_before_fine_tuning(name):
    config = load_config(CONFIGS / name)
    with pytest.raises(ConfigError, match="key 'finetune.base_model': directory not found: .*models"):
        check_base_model(config)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="the refusal is for machines without CUDA")
def test_chat_student_without_a_gpu_stops_before_training(tmp_path, short_records, student_dir):
    settings = load_config(CONFIGS / "chat-student-8b.yaml").finetune
    with pytest.raises(TrainingSetupError, match="method qlora needs a CUDA GPU"):
        check_hardware(settings)
    # The same settings on a model directory that is there: still refused, nothing written.
    with pytest.raises(TrainingSetupError):
        train_student(short_records, student_dir, tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()
