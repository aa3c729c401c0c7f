"""Settings of the generate stage: self-instruct (Alpaca's procedure) or Evol-Instruct."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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


class GenerateConfig(Settings):
    """Generation: self-instruct (Alpaca's procedure) or Evol-Instruct."""

    strategy: Literal["self_instruct", "evol_instruct"] = Field(
        "self_instruct", description="self_instruct: Alpaca; evol_instruct: evolve the seed tasks (WizardLM)."
    )
    evolve: EvolveConfig = Field(default_factory=EvolveConfig, description="Evol-Instruct's settings (strategy evol_instruct).")

    target_records: int = Field(52_000, ge=1, description="Stop when this many records are kept.")
    max_requests: int = Field(10_000, ge=1, description="Never send more generation requests than this.")
    seeds_per_prompt: int = Field(3, ge=1, le=20, description="Seed tasks shown in context (Alpaca: 3).")
    tasks_per_request: int = Field(20, ge=1, le=100, description="Tasks asked for per request (Alpaca: 20).")
    reply_format: Literal["numbered", "json"] = Field(
        "numbered",
        description="numbered: Alpaca's numbered instruction / input / output list; json: a "
        "{\"tasks\": [...]} object, with decoding constrained to its schema where the server can.",
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
