"""The finetune stage: the held-out split, training on the rest (LoRA, QLoRA or full on the teacher's
text, or logit-level distillation from a local teacher), an optional merged model, and a model card
beside the trained weights."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError, StageInputError
from pipeline.stage import DEFAULT_CACHE, StageContext, StageSummary

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


def distill_teacher_dir(config: PipelineConfig, cache_dir: Path) -> Path | None:
    """For ``finetune.method: distill``, the directory of the teacher whose token distributions the
    student learns (an embedded one is built once into the cache): ``finetune.distill.teacher_model``,
    else the pipeline's teacher where its weights are here (:func:`distill_teacher_source`). None
    for the other methods."""
    from student.embedded import resolve_base_model_dir

    source = distill_teacher_source(config)
    return None if source is None else resolve_base_model_dir(source, cache_dir)


def distill_teacher_source(config: PipelineConfig) -> str | None:
    """What ``finetune.distill.teacher_model`` names, or stands for when empty: the embedded teacher
    started here is the embedded model ``embedded`` (the same GGUF, as a transformers copy); a vllm
    teacher loaded from a local directory is that directory. Any other teacher is a ConfigError
    naming the field: its weights, and so its token distributions, are not on this machine."""
    settings = config.finetune
    if settings.method != "distill":
        return None
    if settings.distill.teacher_model:
        return settings.distill.teacher_model
    teacher = config.teacher
    if teacher.backend == "embedded" and not teacher.base_urls:
        from student.embedded import DEFAULT_STUDENT

        return DEFAULT_STUDENT
    if teacher.backend == "vllm" and Path(teacher.model).is_dir():
        return teacher.model
    where = f"served at {', '.join(teacher.base_urls)}" if teacher.base_urls else "an API model"
    raise ConfigError(
        f"key 'finetune.distill.teacher_model': finetune.method distill learns the teacher's token distributions, "
        f"but the teacher (teacher.backend: {teacher.backend}, teacher.model: {teacher.model}) is {where}, whose "
        "weights are not on this machine. Set finetune.distill.teacher_model to a local Hugging Face directory of "
        "the teacher (sharing the student's tokenizer), or use finetune.method lora or full (SFT on its text)")


def _prepared_dir(name: str) -> Path | None:
    """The model directory ``name`` stands for when it is there without any work: a local directory, or
    an embedded model already built in the default cache; None otherwise."""
    from student.embedded import MARKER_FILE, embedded_student, is_embedded_student

    if is_embedded_student(name):
        try:
            built = DEFAULT_CACHE / embedded_student(name).cache_name()
        except Exception:  # its package is missing: resolving it later says so
            return None
        return built if (built / MARKER_FILE).is_file() else None
    return Path(name) if Path(name).is_dir() else None


def check_distill_teacher(config: PipelineConfig, cache_dir: Path | None = None) -> None:
    """For ``finetune.method: distill``: a ConfigError naming the field when the teacher is not local
    (an API model) or is not a model directory, or when its tokenizer differs from the student's.
    Without ``cache_dir`` (the checks before any work) the tokenizers are compared where both
    models are there already; with it, they are prepared first."""
    from finetune.train import distill_pair_problem
    from student.embedded import is_embedded_student

    source = distill_teacher_source(config)
    if source is None:
        return
    if not is_embedded_student(source) and not Path(source).is_dir():
        raise ConfigError(f"key 'finetune.distill.teacher_model': directory not found: {source}")
    if cache_dir is None:
        teacher, student = _prepared_dir(source), _prepared_dir(config.finetune.base_model)
    else:
        teacher, student = distill_teacher_dir(config, cache_dir), student_base_dir(config, cache_dir)
    if teacher is None or student is None:
        return
    problem = distill_pair_problem(student, teacher, config.finetune)
    if problem:
        raise ConfigError(f"key 'finetune.distill.teacher_model': {problem}")


@dataclasses.dataclass
class FinetuneSummary(StageSummary):
    """What was trained, on how much, and where the trained weights are."""

    train_records: int = 0
    dropped_too_long: int = 0
    resumed_from: str | None = None
    heldout_records: int = 0
    method: str = "lora"
    distill_teacher: str | None = None  # method distill: the teacher model whose distributions were learned
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
    description = "fine-tune the student (finetune.method: LoRA, QLoRA, full or logit distillation)"
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
        check_distill_teacher(config)

    def run(self, context: StageContext) -> FinetuneSummary:
        from core.records import read_records, write_jsonl
        from finetune.model_card import render_model_card, write_model_card
        from finetune.train import check_hardware, train_student
        from pipeline.config import check_base_model

        config, rundir = context.config, context.rundir
        check_base_model(config)
        check_hardware(config.finetune)  # QLoRA without a GPU: refused before the split is written
        check_distill_teacher(config, context.cache_dir)  # an API teacher, another tokenizer: refused too
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
                               save_steps=config.finetune.save_steps,
                               teacher_model_dir=distill_teacher_dir(config, context.cache_dir))
        training = json.loads((out_dir / "training_summary.json").read_text(encoding="utf-8"))
        provenance = gather_provenance(config, rundir)
        full = config.finetune.trained_weights == "full"
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
            distill_teacher=result.teacher_model_dir,
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
