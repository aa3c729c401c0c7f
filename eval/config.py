"""Settings of evaluation: prompt sets, contestants, judging and how cost is reckoned."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from backends.config import ModelEndpoint
from core.settings import Settings
from eval.sets import EVAL_SETS

# Folders of eval/ that are not evaluations of their own.
RESERVED_EVALUATION_NAMES = ("work",)


class EvaluateConfig(Settings):
    """Student against teacher on held-out prompts, judged pairwise in both orders."""

    sets: list[str] = Field(
        default_factory=lambda: ["heldout"],
        description="Prompt sets: heldout (the run's held-out split, never trained on), a shipped set ("
        + "; ".join(f"{name}: {eval_set.description}" for name, eval_set in EVAL_SETS.items())
        + "), or a path to a JSONL file with instruction (and optional input).",
    )
    max_prompts: int = Field(8, ge=1, description="Prompts answered from each set.")
    compare_base: bool = Field(True, description="Also judge the base student (no adapter) against the teacher.")
    max_new_tokens: int = Field(128, ge=1, description="Token limit of every model's answer (students and teacher).")
    judge_max_tokens: int = Field(128, ge=8, description="Token limit of one pairwise verdict.")
    batch_size: int = Field(
        8, ge=1, description="Prompts a local student answers at once (length-sorted, left-padded, greedy)."
    )
    static_cache: bool = Field(
        False, description="Static KV cache for local students; on a GPU transformers then compiles the "
        "decoding step into CUDA graphs (see docs/benchmarks.md).",
    )
    static_cache_bucket: int = Field(
        0, ge=0, description="With static_cache: each decoding step's attention reads the cache only as far as "
        "the batch has filled it, rounded up to a multiple of this many tokens, instead of the whole cache "
        "(sized for the longest prompt plus max_new_tokens); the same answers. 0: off. 64 is a good value on a "
        "GPU at large batches (docs/benchmarks.md).",
    )
    static_cache_prefill_rows: int = Field(
        0, ge=0, description="With static_cache: prompts are put into the cache this many rows at a time, each "
        "group padded only to its own longest prompt, instead of the whole batch at once padded to its longest; "
        "the same answers. Pays when one long prompt shares a batch with short ones. 0: off.",
    )
    continuous_batching: bool = Field(
        False, description="Local students answer through transformers' continuous batching (a paged KV cache "
        "read only as far as each request has filled it, chunked prefill, a finished request replaced at once; "
        "batch_size requests decode together) instead of length-sorted padded batches. Faster on a GPU at large "
        "batches (docs/benchmarks.md); the same greedy answers in float32.",
    )
    local_hourly_usd: float = Field(
        0.10, ge=0, description="USD per hour of the machine that runs local models (students, the embedded "
        "teacher): cost per 1,000 answers = measured seconds per answer x this. 0.10 is about a 2-vCPU cloud VM.",
    )
    student_backend: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="How students answer: transformers (batched greedy generation, CPU or GPU) or vllm "
        "(in-process vLLM >= 0.12 on a GPU, the LoRA adapter served as a LoRA request, all prompts batched "
        "by the engine). Compressed variants answer through their own runtimes either way.",
    )
    vllm_engine_args: dict[str, Any] = Field(
        default_factory=dict, description="With student_backend vllm: keyword arguments for vLLM's AsyncEngineArgs.",
    )
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="This evaluation's name: its files go to eval/<name>/ and it gets its own section of the "
        "report, beside the earlier ones. Empty: the run's first evaluation is written to eval/ itself, and a "
        "later one with other evaluation settings is named from its sets and a hash of its settings.",
    )
    judge: ModelEndpoint | None = Field(
        None, description="The pairwise judge of this evaluation (an endpoint like judge:). Empty: the run's judge "
        "(judge:, else the teacher).",
    )
    second_judge: ModelEndpoint | None = Field(
        None, description="A second pairwise judge of the same pairs (an endpoint like judge:): its agreement "
        "with the first (Cohen's kappa) is reported with the judge diagnostics. Empty: none.",
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str | None) -> str | None:
        if name in RESERVED_EVALUATION_NAMES:
            raise ValueError(f"{name!r} is a folder of eval/ itself; choose another name")
        return name

    @model_validator(mode="after")
    def _engine_args_need_vllm(self) -> "EvaluateConfig":
        if self.vllm_engine_args and self.student_backend != "vllm":
            raise ValueError("vllm_engine_args is for student_backend vllm only")
        return self

    @model_validator(mode="after")
    def _cache_options_need_static_cache(self) -> "EvaluateConfig":
        for name in ("static_cache_bucket", "static_cache_prefill_rows"):
            if getattr(self, name) and not self.static_cache:
                raise ValueError(f"{name} applies to the static cache: set static_cache: true as well")
        return self
