"""The finetune stage: the held-out split, training on the rest (LoRA, QLoRA or full), an optional
merged model, and a model card beside the trained weights."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

from distill.config import PipelineConfig, check_base_model
from distill.records import read_records, write_jsonl
from distill.rundir import RunDir
from distill.stages.session import StageInputError

log = logging.getLogger(__name__)


def split_heldout(records: list[dict], count: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded split into (train, held out); at least one record always stays for training."""
    count = min(count, max(0, len(records) - 1))
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    train = [r for i, r in enumerate(records) if i not in held]
    heldout = [r for i, r in enumerate(records) if i in held]
    return train, heldout


def student_base_dir(config: PipelineConfig, cache_dir: Path) -> Path:
    """The student's base model directory (the embedded one is built once into the cache)."""
    if config.finetune.base_model == "embedded":
        from finetune.embedded_student import ensure_plain_student

        return ensure_plain_student(cache_dir)
    return Path(config.finetune.base_model)


def finetune_stage(config: PipelineConfig, rundir: RunDir, cache_dir: Path, progress: bool = True) -> dict:
    """Split off held-out prompts, fine-tune the student on the rest, merge on request, write model cards."""
    from finetune.model_card import gather_provenance, render_model_card, write_model_card
    from finetune.train import check_hardware, train_student

    check_base_model(config)
    check_hardware(config.finetune)  # QLoRA without a GPU: refused before the split is written
    started = time.perf_counter()
    try:
        records = read_records(rundir.filtered, required=("instruction", "output"), optional=("input",))
    except ValueError as exc:
        raise StageInputError(f"finetune has nothing to learn from: {exc}; lower filter.threshold "
                              "or generate more records") from None
    train, heldout = split_heldout(records, config.finetune.heldout_records, config.finetune.seed)
    write_jsonl(rundir.train, train)
    write_jsonl(rundir.heldout, heldout)
    base_dir = student_base_dir(config, cache_dir)
    out_dir = rundir.root / "finetune"
    result = train_student(train, base_dir, out_dir, config.finetune, progress=progress,
                           save_steps=config.finetune.save_steps)
    training = json.loads((out_dir / "training_summary.json").read_text(encoding="utf-8"))
    provenance = gather_provenance(config, rundir)
    full = config.finetune.method == "full"
    write_model_card(result.trained_dir, render_model_card(provenance, training, "model" if full else "adapter"))
    merged_dir = None
    if config.finetune.merge:
        from finetune.merge import merge_lora

        merged_dir = merge_lora(base_dir, result.trained_dir, out_dir / "merged", dtype=config.finetune.model_dtype,
                                trust_remote_code=config.finetune.trust_remote_code)
        write_model_card(merged_dir, render_model_card(provenance, training, "merged"))
    summary = {
        "train_records": result.train_records, "dropped_too_long": result.dropped_records,
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
        "heldout_records": len(heldout), "method": result.method, "processes": result.processes,
        # Full fine-tuning leaves no adapter: the trained model is the student's base.
        "base_model": str(result.trained_dir if full else base_dir),
        "adapter": None if full else str(result.trained_dir),
        "untuned_model": str(base_dir),  # what the base student is (the comparison for what tuning gained)
        "merged": str(merged_dir) if merged_dir else None, "steps": result.steps, "train_loss": result.train_loss,
        "tokens_seen": result.tokens_seen, "trainable_params": result.trainable_params,
        "total_params": result.total_params, "seconds": round(time.perf_counter() - started, 2),
    }
    rundir.mark_done("finetune", summary)
    return summary
