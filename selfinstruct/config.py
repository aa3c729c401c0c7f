"""Settings of the generate stage: self-instruct (Alpaca's procedure), Evol-Instruct or Magpie."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.settings import Settings


class EvolveConfig(Settings):
    """Evol-Instruct (WizardLM): rounds of in-depth and in-breadth evolution of a pool."""

    rounds: int = Field(4, ge=1, le=20, description="Evolution rounds (the paper: 4).")
    pool_size: int | None = Field(None, ge=1, description="Evolve this many seed tasks (sampled); all when empty.")
    operations: list[Literal["add_constraints", "deepening", "concretizing", "increase_reasoning",
                             "complicate_input", "in_breadth"]] = Field(
        default_factory=lambda: ["add_constraints", "deepening", "concretizing", "increase_reasoning",
                                 "complicate_input", "in_breadth"],
        description="Operations drawn uniformly for each instruction and round; repeat one to weight it.",
    )
    max_tokens: int = Field(384, ge=16, description="Token limit of an evolving reply.")
    temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature of an evolving reply.")
    answer_max_tokens: int = Field(768, ge=16, description="Token limit of the teacher's answer.")
    answer_temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of the teacher's answer.")


class MagpieConfig(Settings):
    """Magpie (Xu et al. 2024): no seed tasks; the aligned teacher completes its own chat template's
    user-turn prefix into a user query, then answers it (selfinstruct/magpie.py)."""

    pre_query_template: str | None = Field(
        None,
        description="The raw prompt the teacher completes into a user query: its chat template up to where a "
        "user message starts (system turn included, as the teacher renders a conversation). Empty: built from "
        "the teacher's own chat template (the embedded GGUF's, or a local model directory's).",
    )
    post_query_template: str | None = Field(
        None, description="What follows the query up to where the answer starts (the end of the user turn and "
        "the assistant's header); given together with pre_query_template.",
    )
    query_max_tokens: int = Field(128, ge=8, description="Token limit of a query; a query cut by it is dropped.")
    query_temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature of a query (sampled: "
                                     "each request gives another query).")
    query_top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of a query.")
    answer_max_tokens: int = Field(512, ge=16, description="Token limit of an answer; an answer cut by it is dropped.")
    answer_temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of an answer (0: greedy).")

    @model_validator(mode="after")
    def _templates_together(self) -> "MagpieConfig":
        if (self.pre_query_template is None) != (self.post_query_template is None):
            raise ValueError("give generate.magpie.pre_query_template and post_query_template together (or neither)")
        return self


class GenerateConfig(Settings):
    """Generation: self-instruct (Alpaca's procedure), Evol-Instruct or Magpie."""

    strategy: Literal["self_instruct", "evol_instruct", "magpie"] = Field(
        "self_instruct", description="self_instruct: Alpaca; evol_instruct: evolve the seed tasks (WizardLM); "
        "magpie: no seeds, the teacher writes queries from its chat template and answers them (Magpie). The "
        "strategies are registered in selfinstruct.strategies.",
    )
    evolve: EvolveConfig = Field(default_factory=EvolveConfig, description="Evol-Instruct's settings (strategy evol_instruct).")
    magpie: MagpieConfig = Field(default_factory=MagpieConfig, description="Magpie's settings (strategy magpie).")

    target_records: int = Field(52_000, ge=1, description="Stop when this many records are kept.")
    max_requests: int = Field(10_000, ge=1, description="Never send more generation requests than this.")
    seeds_per_prompt: int = Field(3, ge=1, le=20, description="Seed tasks shown in context (Alpaca: 3).")
    tasks_per_request: int = Field(20, ge=1, le=100, description="Tasks asked for per request (Alpaca: 20).")
    reply_format: Literal["numbered", "json"] = Field(
        "numbered",
        description="numbered: Alpaca's numbered instruction / input / output list; json: a "
        "{\"tasks\": [...]} object, with decoding constrained to its schema where the server can.",
    )
    parse: Literal["lenient", "alpaca"] = Field(
        "lenient",
        description="How a numbered reply is read. lenient: field markers with or without their number, "
        "markdown tolerated, <no input> / none / n/a read as no input, empty outputs dropped; alpaca: exactly "
        "Stanford Alpaca's post-processing (only the block's own numbered markers, '<noinput>' alone read as "
        "no input, no empty-output check), for the replication preset.",
    )
    temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature of a generation request (Alpaca: 1.0).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of a generation request (Alpaca: 1.0).")
    max_tokens: int = Field(3072, ge=16, description="Completion token limit per request.")
    rouge_threshold: float = Field(0.7, ge=0, le=1, description="Drop if ROUGE-L F with the pool is above this.")
    domain: str | None = Field(
        None,
        description="For a domain-specific assistant: a sentence or two describing the domain. The "
        "prompt asks for tasks in it, and tasks whose embedding is far from it are dropped.",
    )
    domain_min_similarity: float = Field(
        0.22, ge=-1, le=1,
        description="Highest cosine similarity (all-MiniLM-L6-v2) of instruction + input to the domain "
        "description or a seed instruction, below which a task is dropped as off-domain.",
    )
    requests_per_shard: int = Field(16, ge=1, description="Requests per Prefect task (a shard).")
    seed: int = Field(0, description="Random seed for sampling seed tasks.")

    @model_validator(mode="after")
    def _parse_reads_numbered_replies(self) -> "GenerateConfig":
        if self.parse == "alpaca" and self.reply_format != "numbered":
            raise ValueError("generate.parse alpaca reads Alpaca's numbered replies; it needs reply_format numbered")
        return self
