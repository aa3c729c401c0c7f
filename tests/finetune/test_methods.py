"""Training methods besides LoRA: full fine-tuning for real on CPU, QLoRA's refusal without CUDA.

QLoRA itself needs a CUDA GPU (bitsandbytes' 4-bit kernels); it is exercised on the H100 by
``bench/bench_finetune_gpu.py`` (the qlora-* settings, docs/benchmarks.md). Here the test is
that asking for it on a machine without CUDA fails with a clear error before anything loads.
"""

from __future__ import annotations

import json
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from pydantic import ValidationError  # noqa: E402

from finetune.config import FinetuneConfig  # noqa: E402
from finetune.train import TrainingSetupError, train_student  # noqa: E402

def settings(**overrides) -> FinetuneConfig:
    base = {"max_length": 128, "batch_size": 2, "max_steps": 2, "learning_rate": 1e-4, "seed": 0}
    return FinetuneConfig(**{**base, **overrides})


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"method": "qlora"}, "set finetune.model_dtype: bfloat16"),
        ({"method": "full", "merge": True}, "merge applies to lora/qlora"),
        ({"method": "qlora", "model_dtype": "bfloat16", "num_processes": 2, "distributed": "fsdp"}, "use ddp"),
        ({"method": "dora"}, "method"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"num_processes": 0}, "num_processes"),
    ],
)
def test_inconsistent_method_settings_are_refused(overrides, message):
    with pytest.raises(ValidationError, match=message):
        settings(**overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize(
    "overrides, what",
    [
        ({"method": "qlora", "model_dtype": "bfloat16"}, "method qlora"),
        ({"optimizer": "paged_adamw_8bit"}, "optimizer paged_adamw_8bit"),
    ],
)
def test_bitsandbytes_methods_need_cuda_and_fail_before_loading(student_dir, short_records, tmp_path, overrides, what):
    out = tmp_path / "out"
    with pytest.raises(TrainingSetupError, match=f"{what} needs a CUDA GPU"):
        train_student(short_records, student_dir, out, settings(**overrides), progress=False)
    assert not out.exists()  # refused before any output (or checkpoint folder) was made


# --------------------------------------------------------------------------- full fine-tuning


def test_full_finetuning_trains_and_saves_every_weight(student_dir, short_records, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "full"
    result = train_student(short_records[:4], student_dir, out, settings(method="full", keep_checkpoints=False),
                           progress=False, save_steps=100)
    model_dir = out / "model"
    assert not (out / "checkpoints").exists()  # keep_checkpoints: false deletes them once the model is saved
    assert result.trained_dir == model_dir and result.method == "full"
    assert result.steps == 2 and math.isfinite(result.final_loss)
    assert result.trainable_params == result.total_params  # no adapter: everything trains
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (model_dir / name).is_file(), name
    assert not (out / "adapter").exists() and not (model_dir / "adapter_config.json").exists()
    assert not (model_dir / "training_args.bin").exists()

    # The saved weights moved away from the base's.
    name = "model.layers.0.mlp.down_proj.weight"
    with safe_open(student_dir / "model.safetensors", "pt") as before, safe_open(model_dir / "model.safetensors", "pt") as after:
        changed = (after.get_tensor(name).float() - before.get_tensor(name).float()).abs().max().item()
    assert changed > 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["method"] == "full" and summary["settings"]["method"] == "full"


# --------------------------------------------------------------------------- QLoRA on a GPU


def _tiny_llama(directory, texts: list[str]):
    """A 2-layer random Llama saved in bf16, with a word-level tokenizer over ``texts``' words.

    The embedded student cannot travel to the GPU machine (its package is not there), so the
    QLoRA test builds a small model of its own; what is tested is the 4-bit path, not the model.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in text.replace("\n", " ").split()})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=len(vocab) + 64, max_position_embeddings=512)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs a CUDA GPU")
def test_qlora_trains_on_a_4bit_base_saves_resumes_and_merges(tmp_path, short_records):
    pytest.importorskip("bitsandbytes")
    from finetune.merge import merge_lora
    from student.prompt_format import to_prompt_completion
    from finetune.train import load_model

    texts = [pair for r in short_records for pair in to_prompt_completion(r, "alpaca").values()]
    base = _tiny_llama(tmp_path / "base", texts)
    qlora = settings(method="qlora", model_dtype="bfloat16", batch_size=4, learning_rate=1e-3)

    model = load_model(base, qlora)  # the project's loader quantizes the linear layers to 4 bits
    assert getattr(model, "is_loaded_in_4bit", False)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    del model

    out = tmp_path / "qlora"
    result = train_student(short_records, base, out, qlora, progress=False, save_steps=1)
    assert result.method == "qlora" and result.steps == 2 and math.isfinite(result.final_loss)
    assert 0 < result.trainable_params < result.total_params
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (out / "adapter" / name).is_file(), name

    resumed = train_student(short_records, base, out, qlora.model_copy(update={"max_steps": 3}),
                            progress=False, save_steps=1)
    assert resumed.resumed_from and resumed.resumed_from.endswith("checkpoint-2") and resumed.steps == 3

    merged = merge_lora(base, out / "adapter", tmp_path / "merged", dtype="bfloat16")
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
