"""The one interface every generation strategy implements, and what a strategy is given to run.

A strategy (`generate.strategy`) turns the seed tasks (or none) and the teacher into records:
self-instruct (Alpaca), Evol-Instruct (WizardLM), Magpie. Each is one module with a class like
the ones registered in `selfinstruct.strategies.STRATEGIES`; the generate stage builds a
`GenerationJob` (how to send requests through the run's request path, the budget, where
rejections go) and dispatches through the registry, then writes what the strategy kept.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Protocol

if TYPE_CHECKING:
    from backends.base import ChatRequest, RequestOutcome
    from backends.config import ModelEndpoint
    from selfinstruct.config import GenerateConfig

# One shard of requests sent through the run's request path; its outcomes, in request order.
SendShard = Callable[[list["ChatRequest"]], list["RequestOutcome"]]
# Shards pulled lazily, several in flight; each one's outcomes yielded in shard order.
SendShards = Callable[[Iterable[list["ChatRequest"]]], Iterable[list["RequestOutcome"]]]


@dataclasses.dataclass
class GenerationJob:
    """Everything a strategy runs with."""

    settings: "GenerateConfig"
    seeds: list[dict]
    teacher: "ModelEndpoint"
    send_shard: SendShard
    send_shards: SendShards
    budget_exhausted: Callable[[], bool]
    rejected: list  # any list-like sink with append (a RejectionSpool keeps them on disk)


@dataclasses.dataclass
class GenerationResult:
    """The records kept, in order, and the counts for the stage summary (`GenerateSummary`'s
    fields: strategy, requests, requests_failed, tasks_parsed, dropped, beyond_target, domain,
    kept, prompt_tokens, completion_tokens, stop_reason)."""

    kept: list[dict]
    summary: dict


class GenerationStrategy(Protocol):
    """One way of generating records (`generate.strategy: NAME`)."""

    name: ClassVar[str]
    description: ClassVar[str]

    def preflight(self, settings: "GenerateConfig", teacher: "ModelEndpoint") -> None:
        """Checks made before any stage of a run starts; raises ConfigError."""
        ...

    def run(self, job: GenerationJob) -> GenerationResult:
        """Generate records through `job`'s request path; every drop goes to `job.rejected`."""
        ...
