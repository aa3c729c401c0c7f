"""Who is judged against the teacher, and the job that has one of them answer the prompts.

The contestants are the fine-tuned student (base model + LoRA adapter, or the fully
fine-tuned model), the base student without the adapter (what tuning is measured against),
and each compressed variant the compress stage described in ``compress/variants.json``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from core.errors import StageInputError

RESERVED_LABELS = ("student", "base_student", "teacher")


@dataclasses.dataclass(frozen=True)
class Contestant:
    """One model that answers the evaluation prompts and is judged against the teacher."""

    label: str  # its name in the report and in eval/<label>_answers.jsonl
    kind: str  # "student" (a transformers model, optionally with an adapter) or "variant" (compressed)
    identity: str
    base_model: str | None = None
    adapter: str | None = None
    size_paths: tuple[str, ...] = ()  # the files whose bytes are its size on disk
    variant: dict | None = None  # a variant's entry of compress/variants.json
    size_bytes: int | None = None  # a variant's size, as the compress stage measured it


@dataclasses.dataclass
class AnswerJob:
    """What a child process needs to have one contestant answer the prompts (`eval.answer_process`)."""

    label: str
    kind: str
    items: list[dict]
    prompt_format: str
    max_new_tokens: int
    cache_dir: str
    base_model: str | None = None
    adapter: str | None = None
    trust_remote_code: bool = False
    batch_size: int = 1
    static_cache: bool = False
    cache_bucket: int = 0
    prefill_rows: int = 0
    continuous: bool = False
    student_backend: str = "transformers"
    vllm_engine_args: dict = dataclasses.field(default_factory=dict)
    variant: dict | None = None
    threads: int | None = None
    # The teacher's answers (id -> {"answer", "finished"}): the child also scores them under
    # the contestant (eval.fidelity), after its answers and peak memory are measured.
    teacher_answers: dict | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "AnswerJob":
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def read_variants(path: Path) -> list[dict]:
    """The compress stage's variants.json (empty when the stage has not run), checked."""
    if not path.is_file():
        return []
    try:
        variants = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise StageInputError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(variants, list):
        raise StageInputError(f"{path}: expected a JSON list of variants")
    for number, variant in enumerate(variants, 1):
        if not isinstance(variant, dict) or not isinstance(variant.get("label"), str):
            raise StageInputError(f"{path}: variant {number}: field 'label' must be a string")
    return variants


def contestants_of(finetuned: dict, variants: list[dict], compare_base: bool) -> list[Contestant]:
    """The student, the base student (with `compare_base`) and each compressed variant, from the
    finetune stage's summary and the compress stage's variants."""
    # A LoRA student is the base model plus its adapter; a fully fine-tuned one is a model of
    # its own, and the base student is then the model it was tuned from.
    base_dir = Path(finetuned["base_model"])
    adapter_dir = Path(finetuned["adapter"]) if finetuned.get("adapter") else None
    untuned_dir = Path(finetuned.get("untuned_model") or base_dir)
    if adapter_dir is not None:
        student = Contestant("student", "student", f"{base_dir.name}+lora", base_model=str(base_dir),
                             adapter=str(adapter_dir), size_paths=(str(base_dir), str(adapter_dir)))
    else:
        student = Contestant("student", "student", f"{base_dir.name} (fully fine-tuned)", base_model=str(base_dir),
                             size_paths=(str(base_dir),))
    contestants = [student]
    if compare_base:
        contestants.append(Contestant("base_student", "student", untuned_dir.name, base_model=str(untuned_dir),
                                      size_paths=(str(untuned_dir),)))
    for variant in variants:
        label = re.sub(r"[^\w.-]+", "_", variant["label"])
        if label in RESERVED_LABELS:
            label = f"variant_{label}"
        contestants.append(Contestant(label, "variant", f"{variant['label']} ({variant.get('kind', 'compressed')})",
                                      variant=variant, size_bytes=variant.get("size_on_disk_bytes")))
    return contestants
