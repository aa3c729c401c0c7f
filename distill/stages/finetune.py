"""The finetune stage: the held-out split, then LoRA on the rest."""

from __future__ import annotations

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
    """Split off held-out prompts, then LoRA-tune the student on the rest."""
    from finetune.train import train_lora

    check_base_model(config)
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
    result = train_lora(train, base_dir, rundir.root / "finetune", config.finetune, progress=progress)
    summary = {
        "train_records": result.train_records, "dropped_too_long": result.dropped_records,
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
        "heldout_records": len(heldout), "base_model": str(base_dir),
        "adapter": str(result.adapter_dir), "steps": result.steps, "train_loss": result.train_loss,
        "tokens_seen": result.tokens_seen, "trainable_params": result.trainable_params,
        "total_params": result.total_params, "seconds": round(time.perf_counter() - started, 2),
    }
    rundir.mark_done("finetune", summary)
    return summary
