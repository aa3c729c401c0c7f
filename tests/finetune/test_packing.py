"""Packed (padding-free) training rows on CPU: examples share a row but never attend to each other.

With ``packing: true`` trl's best-fit-decreasing packing puts several examples in one row
with no padding; the collator restarts ``position_ids`` at each example, and the attention
(plain sdpa here; ``sdpa_varlen``'s flash path on a GPU) must keep each example to itself.
The test runs the real embedded student on a packed batch from the real trainer and checks
each example's logits against the same example run alone, and that no loss crosses a boundary.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from finetune.config import FinetuneConfig  # noqa: E402
from finetune.train import build_trainer, load_model, load_tokenizer, prepare_examples  # noqa: E402


@pytest.mark.parametrize("attention", ["sdpa", "sdpa_varlen"])
@pytest.mark.parametrize("fmt", ["alpaca", "chat"])
def test_packed_examples_do_not_see_each_other(student_dir, short_records, tmp_path, attention, fmt):
    settings = FinetuneConfig(
        packing=True, attn_implementation=attention, prompt_format=fmt, max_length=256, batch_size=4, max_steps=1,
    )
    tokenizer = load_tokenizer(student_dir, settings)
    pairs, _ = prepare_examples(short_records[:4], tokenizer, settings)
    model = load_model(student_dir, settings)
    trainer = build_trainer(pairs, model, tokenizer, tmp_path, settings, progress=False)
    batch = next(iter(trainer.get_train_dataloader()))

    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, no padding
    positions = batch["position_ids"][0]
    starts = [i for i, p in enumerate(positions.tolist()) if p == 0]
    bounds = list(zip(starts, starts[1:] + [positions.numel()]))
    assert len(bounds) == 4  # all four examples in the one row

    row_labels = batch["labels"][0]
    for start, _ in bounds:  # each example opens with its prompt: no loss across a boundary
        assert row_labels[start].item() == -100

    trainer.model.eval()
    with torch.inference_mode():
        packed = trainer.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        for start, end in bounds:
            alone = trainer.model(input_ids=batch["input_ids"][:, start:end]).logits[0]
            torch.testing.assert_close(packed[start:end], alone, rtol=1e-4, atol=1e-4)
        # Control: the row as one long sequence (no restarts) does change the later examples.
        joined = trainer.model(input_ids=batch["input_ids"]).logits[0]
        start, end = bounds[1]
        assert (joined[start:end] - packed[start:end]).abs().max().item() > 1e-2
