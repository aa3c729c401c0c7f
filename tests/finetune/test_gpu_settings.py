"""The GPU speed settings leave CPU behaviour and old checkpoints alone."""

from pathlib import Path

import torch

from finetune.config import FinetuneConfig
from student.embedded import ensure_plain_student
from finetune.train import _fingerprint, load_model, load_tokenizer


def test_speed_settings_at_defaults_do_not_change_the_checkpoint_fingerprint(tmp_path):
    pairs = [{"prompt": "p", "completion": "c"}]
    plain = _fingerprint(pairs, tmp_path, FinetuneConfig())
    assert not {"model_dtype", "torch_compile", "packing", "use_liger_kernel", "method", "optimizer", "num_processes",
                "distributed", "merge"} & set(plain["settings"])
    assert _fingerprint(pairs, tmp_path, FinetuneConfig(method="full")) != plain  # set: it counts
    changed = _fingerprint(pairs, tmp_path, FinetuneConfig(lora_r=4))
    assert changed != plain
    assert _fingerprint(pairs, tmp_path, FinetuneConfig(logging_steps=10)) == plain


def test_sdpa_varlen_falls_back_to_sdpa_on_cpu(student_cache_dir):
    base = ensure_plain_student(Path(student_cache_dir))
    tokenizer = load_tokenizer(base, FinetuneConfig())
    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.inference_mode():
        reference = load_model(base, FinetuneConfig())(**batch).logits
        varlen = load_model(base, FinetuneConfig(attn_implementation="sdpa_varlen"))(**batch).logits
    torch.testing.assert_close(varlen, reference, rtol=1e-4, atol=1e-4)
