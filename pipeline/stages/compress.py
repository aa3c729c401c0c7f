"""The compress stage: the fine-tuned student, merged, then exported and quantized into the
variants ``compress.variants`` names (GGUF for llama.cpp, PyTorch dynamic int8,
bitsandbytes), each under ``compress/<variant>/``, described in ``compress/variants.json``
for the evaluate stage to answer and judge like the student."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import StageInputError
from pipeline.stage import StageContext, StageSummary

if TYPE_CHECKING:
    from core.rundir import RunDir
    from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

COMPRESS_DIR = "compress"
VARIANTS_FILE = "variants.json"


@dataclasses.dataclass
class CompressSummary(StageSummary):
    """The merged student and every variant's size on disk."""

    merged: str | None = None
    variants: dict = dataclasses.field(default_factory=dict)
    variants_file: str | None = None


def variants_path(rundir: RunDir) -> Path:
    """Where the compress stage describes its variants (``compress/variants.json``)."""
    return rundir.root / COMPRESS_DIR / VARIANTS_FILE


def _merged_student(config: PipelineConfig, finetuned: dict, out_dir: Path) -> Path:
    """The merged student: the finetune stage's when it merged (finetune.merge), the fully
    fine-tuned model for method full, else merged here into ``compress/merged``."""
    if finetuned.get("merged"):
        return Path(finetuned["merged"])
    if not finetuned.get("adapter"):  # method full: the trained model is already whole
        return Path(finetuned["base_model"])
    from finetune.merge import MERGE_INFO_FILE, merge_lora

    merged = out_dir / "merged"
    if not (merged / MERGE_INFO_FILE).is_file():
        merge_lora(Path(finetuned["base_model"]), Path(finetuned["adapter"]), merged,
                   dtype="float32", trust_remote_code=config.finetune.trust_remote_code)
    return merged


class CompressStage:
    """Make every variant in ``config.compress.variants`` from the fine-tuned student and write
    ``compress/variants.json``; variants already made are reused. Runs when compress.enabled."""

    name = "compress"
    description = "quantize the fine-tuned student (GGUF, int8, bitsandbytes)"
    reads = ("finetune/",)
    writes = ("compress/", "compress/variants.json")
    sends_requests = False
    scales_out = False
    summary_type = CompressSummary

    def enabled(self, config: PipelineConfig) -> bool:
        return config.compress.enabled

    def preflight(self, config: PipelineConfig) -> None:
        pass

    def run(self, context: StageContext) -> CompressSummary:
        from compress.bnb import BnbUnavailableError, check_bnb_available
        from compress.variants import build_variants, variant_named
        from core.records import write_json

        config, rundir = context.config, context.rundir
        finetuned = rundir.stage_summary("finetune")
        if finetuned is None:
            raise StageInputError(f"compress needs a fine-tuned student: run the finetune stage in {rundir.root} first")
        names = list(config.compress.variants)
        if any(variant_named(name).needs_cuda for name in names):
            try:  # refused before any work, not halfway through
                check_bnb_available()
            except BnbUnavailableError as exc:
                raise StageInputError(f"compress.variants: {exc}") from None

        started = time.perf_counter()
        out_dir = rundir.root / COMPRESS_DIR
        merged = _merged_student(config, finetuned, out_dir)
        variants = build_variants(merged, out_dir, names, threads=config.compress.threads)
        write_json(variants_path(rundir), variants)
        return CompressSummary(merged=str(merged), variants={v["label"]: v["size_on_disk_bytes"] for v in variants},
                               variants_file=str(variants_path(rundir)),
                               seconds=round(time.perf_counter() - started, 2))
