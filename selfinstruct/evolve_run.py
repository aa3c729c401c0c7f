"""The generate stage's Evol-Instruct strategy: rounds of evolution over a pool of seed tasks.

Each round evolves every instruction of the pool once (selfinstruct.evol builds the requests
and applies the paper's elimination rules), asks the teacher to answer the survivors, and
drops a record whose instruction is a ROUGE-L near-duplicate of a seed or of an earlier kept
one, exactly as self-instruct does. Survivors replace their parents in the pool for the
next round; the kept records of all rounds are the data set.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import TYPE_CHECKING, Callable

from backends.base import ChatRequest, RequestOutcome
from selfinstruct.config import GenerateConfig
from selfinstruct.evol import (
    answer_requests,
    collect_answers,
    collect_evolved,
    evolution_requests,
    next_pool,
)
from similarity.rouge import RougeLDeduplicator

if TYPE_CHECKING:
    from selfinstruct.strategy import GenerationJob, GenerationResult

log = logging.getLogger(__name__)


def _in_shards(send: Callable[[list[ChatRequest]], list[RequestOutcome]], requests: list[ChatRequest], size: int,
               budget_exhausted: Callable[[], bool]) -> list[RequestOutcome]:
    outcomes: list[RequestOutcome] = []
    for begin in range(0, len(requests), size):
        if budget_exhausted():
            break
        outcomes += send(requests[begin:begin + size])
    return outcomes


def run_evol_instruct(settings: GenerateConfig, seeds: list[dict], send: Callable[[list[ChatRequest]], list[RequestOutcome]],
                      budget_exhausted: Callable[[], bool] = lambda: False) -> dict:
    """Evolve the seed tasks for settings.evolve.rounds rounds; return kept, rejected, summary."""
    evolve = settings.evolve
    pool = [{"id": f"seed-{i:04d}", **seed} for i, seed in enumerate(seeds)]
    if evolve.pool_size is not None and evolve.pool_size < len(pool):
        pool = random.Random(settings.seed).sample(pool, evolve.pool_size)
    dedup = RougeLDeduplicator(settings.rouge_threshold)
    for seed in seeds:
        dedup.add_seed(seed["instruction"])
    kept: list[dict] = []
    rejected: list[dict] = []
    counts: Counter = Counter()
    tokens = {"prompt_tokens": 0, "completion_tokens": 0}
    stop_reason = "rounds_done"
    for round_index in range(1, evolve.rounds + 1):
        if len(kept) >= settings.target_records or budget_exhausted():
            stop_reason = "target_reached" if len(kept) >= settings.target_records else "budget"
            break
        requests = evolution_requests(pool, round_index, settings.seed, evolve.max_tokens,
                                      temperature=evolve.temperature, operations=evolve.operations)
        evolving = _in_shards(send, requests, settings.requests_per_shard, budget_exhausted)
        evolved, dropped = collect_evolved(evolving)
        answering = _in_shards(send, answer_requests(evolved, evolve.answer_max_tokens,
                                                     temperature=evolve.answer_temperature, seed=settings.seed),
                               settings.requests_per_shard, budget_exhausted)
        records, dropped_answers = collect_answers(evolved, answering)
        rejected += dropped + dropped_answers
        for outcome in evolving + answering:
            if outcome.ok:
                tokens["prompt_tokens"] += outcome.prompt_tokens
                tokens["completion_tokens"] += outcome.completion_tokens
        survivors = []
        for record in records:
            if len(kept) >= settings.target_records:
                counts["beyond_target"] += 1
                continue
            decision = dedup.add(record["instruction"])
            if not decision.kept:
                rejected.append({"id": record["id"], "stage": "generate", "reason": "near_duplicate",
                                 "record": record, "nearest": decision.nearest, "rouge_l": round(decision.score, 4)})
                continue
            kept.append(record)
            survivors.append(record)
        pool = next_pool(pool, survivors)
        counts["requests"] += len(evolving) + len(answering)
        log.info("evol-instruct round %d/%d: %d evolved, %d kept so far", round_index, evolve.rounds,
                 len(survivors), len(kept))
    for rejection in rejected:
        rejection["stage"] = "generate"
        counts[":".join(rejection["reason"].split(":")[:2])] += 1
    summary = {
        "strategy": "evol_instruct", "requests": counts.pop("requests", 0),
        "requests_failed": counts.get("request_failed", 0) + counts.get("answer_request_failed", 0),
        "beyond_target": counts.pop("beyond_target", 0), "dropped": dict(sorted(counts.items())),
        "kept": len(kept), **tokens, "stop_reason": stop_reason,
    }
    return {"kept": kept, "rejected": rejected, "summary": summary}


class EvolInstructStrategy:
    """`generate.strategy: evol_instruct`: Evol-Instruct (WizardLM), this module."""

    name = "evol_instruct"
    description = "Evol-Instruct: rounds of in-depth and in-breadth evolution of the seed tasks, then answers"

    def preflight(self, settings: GenerateConfig, teacher) -> None:
        pass

    def run(self, job: "GenerationJob") -> "GenerationResult":
        from selfinstruct.strategy import GenerationResult

        result = run_evol_instruct(job.settings, job.seeds, job.send_shard, job.budget_exhausted)
        for rejection in result["rejected"]:
            job.rejected.append(rejection)
        return GenerationResult(result["kept"], result["summary"])
