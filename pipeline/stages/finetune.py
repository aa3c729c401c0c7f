"""The finetune stage: the held-out split, training on the rest (LoRA, QLoRA or full), an optional
merged model, and a model card beside the trained weights."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import StageInputError
from pipeline.stage import StageContext, StageSummary

if TYPE_CHECKING:
    from core.rundir import RunDir
    from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

# Generation settings that shape the data (the rest are about throughput).
GENERATE_KEYS = ("strategy", "target_records", "seeds_per_prompt", "tasks_per_request", "temperature", "top_p",
                 "rouge_threshold", "domain")


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
    """The student's base model directory (an embedded one is built once into the cache)."""
    from student.embedded import resolve_base_model_dir

    return resolve_base_model_dir(config.finetune.base_model, cache_dir)


@dataclasses.dataclass
class FinetuneSummary(StageSummary):
    """What was trained, on how much, and where the trained weights are."""

    train_records: int = 0
    dropped_too_long: int = 0
    resumed_from: str | None = None
    heldout_records: int = 0
    method: str = "lora"
    processes: int = 1
    base_model: str | None = None  # the student's base (for method full: the trained model itself)
    adapter: str | None = None
    untuned_model: str | None = None  # the base student (what tuning is compared against)
    merged: str | None = None
    steps: int | None = None
    train_loss: float | None = None
    tokens_seen: int | None = None
    trainable_params: int | None = None
    total_params: int | None = None


class FinetuneStage:
    """Split off held-out prompts, fine-tune the student on the rest (LoRA, QLoRA or full),
    merge on request, and write model cards."""

    name = "finetune"
    description = "LoRA fine-tune the student"
    reads = ("filtered.jsonl",)
    writes = ("train.jsonl", "heldout.jsonl", "finetune/")
    sends_requests = False
    scales_out = False
    summary_type = FinetuneSummary

    def enabled(self, config: PipelineConfig) -> bool:
        return True

    def preflight(self, config: PipelineConfig) -> None:
        from pipeline.config import check_base_model

        check_base_model(config)

    def run(self, context: StageContext) -> FinetuneSummary:
        from core.records import read_records, write_jsonl
        from finetune.model_card import render_model_card, write_model_card
        from finetune.train import check_hardware, train_student
        from pipeline.config import check_base_model

        config, rundir = context.config, context.rundir
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
        base_dir = student_base_dir(config, context.cache_dir)
        out_dir = rundir.root / "finetune"
        result = train_student(train, base_dir, out_dir, config.finetune, progress=context.progress,
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
        return FinetuneSummary(
            train_records=result.train_records, dropped_too_long=result.dropped_records,
            resumed_from=str(result.resumed_from) if result.resumed_from else None,
            heldout_records=len(heldout), method=result.method, processes=result.processes,
            # Full fine-tuning leaves no adapter: the trained model is the student's base.
            base_model=str(result.trained_dir if full else base_dir),
            adapter=None if full else str(result.trained_dir),
            untuned_model=str(base_dir), merged=str(merged_dir) if merged_dir else None, steps=result.steps,
            train_loss=result.train_loss, tokens_seen=result.tokens_seen, trainable_params=result.trainable_params,
            total_params=result.total_params, seconds=round(time.perf_counter() - started, 2))


def _line_count(path: Path) -> int | None:
    """Non-blank lines of a JSONL file (its records), or None when the file is not there."""
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def gather_provenance(config: PipelineConfig, rundir: RunDir) -> dict[str, Any]:
    """Where the training data came from, read from ``rundir``: models, hashes, counts, settings."""
    from finetune.model_card import without_credentials

    manifest = json.loads(rundir.manifest.read_text(encoding="utf-8")) if rundir.manifest.is_file() else {}
    generated = rundir.stage_summary("generate") or {}
    filtered = rundir.stage_summary("filter") or {}
    generate_settings = config.generate.model_dump(mode="json")
    return {
        "teacher": without_credentials(str(manifest.get("teacher") or generated.get("teacher") or config.teacher.model)),
        "judge": without_credentials(str(manifest.get("judge") or filtered.get("judge") or "")) or None,
        "seed_tasks_sha256": manifest.get("seed_tasks_sha256"),
        "prompts_sha256": manifest.get("prompts_sha256", {}),
        "counts": {
            "teacher requests": generated.get("requests"),
            "generated records": _line_count(rundir.generated),
            "after dedup (filter input)": filtered.get("after_dedup"),
            "rated by the judge": filtered.get("rated"),
            "kept by the filter": _line_count(rundir.filtered),
            "trained on": _line_count(rundir.train),
            "held out for evaluation": _line_count(rundir.heldout),
        },
        "generate_settings": {key: generate_settings[key] for key in GENERATE_KEYS if key in generate_settings},
        "filter_settings": config.filter.model_dump(mode="json"),
    }
