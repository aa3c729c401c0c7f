"""Merging a real LoRA adapter into the embedded student: same outputs as base + adapter,
plain safetensors, written atomically."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from student.embedded import probe_logits  # noqa: E402
from finetune.merge import MERGE_INFO_FILE, MergeError, atomic_directory, merge_lora  # noqa: E402


def test_merged_model_equals_base_plus_adapter(student_dir, adapter_dir, merged_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student_dir), adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(student_dir)

    merged_logits = probe_logits(merged, tokenizer)
    assert (merged_logits - probe_logits(with_adapter, tokenizer)).abs().max().item() < 1e-3
    # The adapter really changed the model: the merge is not a copy of the base.
    assert (merged_logits - probe_logits(base, tokenizer)).abs().max().item() > 1e-2

    names = {p.name for p in merged_dir.iterdir()}
    assert "model.safetensors" in names and "tokenizer.json" in names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    assert "quantization_config" not in json.loads((merged_dir / "config.json").read_text())
    assert json.loads((merged_dir / MERGE_INFO_FILE).read_text())["adapter"] == str(adapter_dir)
    assert not [p for p in merged_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_merge_refuses_a_directory_without_an_adapter(student_dir, tmp_path):
    with pytest.raises(MergeError, match="adapter_config.json"):
        merge_lora(student_dir, student_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_write_keeps_the_old_directory(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "weights").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(final) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("disk full")
    assert (final / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
