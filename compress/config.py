"""Settings of the compress stage: which compressed variants of the student to make."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from compress.variants import VARIANTS
from core.settings import Settings


class CompressConfig(Settings):
    """Compressed students, made after fine-tuning from the merged student and evaluated like it."""

    enabled: bool = Field(False, description="Run the compress stage after finetune.")
    variants: list[str] = Field(
        default_factory=lambda: ["gguf_q8_0", "gguf_q4_0", "torch_int8"], min_length=1,
        description="Variants by their name in compress.variants.VARIANTS: "
        + "; ".join(f"{name}: {variant.description}" for name, variant in VARIANTS.items()) + ".",
    )
    threads: int = Field(1, ge=1, le=256, description="Threads for llama.cpp's quantizer.")

    @field_validator("variants")
    @classmethod
    def _registered_variants(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(map(repr, unknown))}; known: {', '.join(VARIANTS)}")
        return names

    @model_validator(mode="after")
    def _variants_unique(self) -> "CompressConfig":
        repeated = sorted({v for v in self.variants if self.variants.count(v) > 1})
        if repeated:
            raise ValueError(f"variants listed twice: {', '.join(repeated)}")
        return self
