"""The generate stage: generated.jsonl by the configured strategy (self-instruct, Evol-Instruct, Magpie)."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Iterator

from pipeline.stage import StageContext, StageSummary

if TYPE_CHECKING:
    from backends.base import RequestOutcome
    from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class GenerateSummary(StageSummary):
    """Counts at every step of generation, what the faults cost, and the diversity of the result."""

    strategy: str = "self_instruct"
    requests: int = 0
    requests_failed: int = 0
    tasks_parsed: int | None = None
    dropped: dict = dataclasses.field(default_factory=dict)
    beyond_target: int = 0
    domain: str | None = None
    kept: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stop_reason: str | None = None
    faults: dict = dataclasses.field(default_factory=dict)
    diversity: dict | None = None
    teacher: str | None = None


class OutcomeLog:
    """Keeps the outcomes a stage consumed that carry a fault (failed, or retried), so its summary
    can count what the faults cost without holding every reply."""

    def __init__(self):
        self.entries: list[RequestOutcome] = []

    def keep(self, outcomes: list[RequestOutcome]) -> list[RequestOutcome]:
        """Note one shard's outcomes and hand them on (only those with a fault take memory)."""
        from backends.base import RequestOutcome

        self.entries += [RequestOutcome(key=o.key, meta={}, ok=o.ok, error=o.error, attempt_errors=o.attempt_errors)
                         for o in outcomes if not o.ok or o.attempt_errors]
        return outcomes

    def keep_each(self, shards: Iterator[list[RequestOutcome]]) -> Iterator[list[RequestOutcome]]:
        """Note the outcomes of each shard as it is handed on."""
        try:
            for outcomes in shards:
                yield self.keep(outcomes)
        finally:
            # Closed early (target reached): the sender's own clean-up must run now, not at GC.
            close = getattr(shards, "close", None)
            if close:
                close()

    def faults(self) -> dict:
        from backends.runner import fault_counts

        return fault_counts(self.entries)


def write_diversity_report(rundir, records: list[dict], seeds: list[dict]) -> dict:
    """Self-Instruct's analysis of the generated set: verbs and objects, lengths, similarity to seeds."""
    from core.records import write_json
    from selfinstruct.diversity import diversity_plot_png, diversity_stats

    stats = diversity_stats(records, [s["instruction"] for s in seeds])
    write_json(rundir.root / "diversity.json", stats)
    if records:
        diversity_plot_png(stats, rundir.root / "diversity.png")
    return {"parser": stats["parser"], "distinct_verbs": stats["verbs"]["n_distinct_verbs"],
            "share_with_input": stats["share_with_input"]}


class GenerateStage:
    """Generation by the configured strategy (`selfinstruct.strategies`: self-instruct, Evol-Instruct,
    Magpie) into generated.jsonl; every drop, with its reason, into the rejections."""

    name = "generate"
    description = "generate records from the teacher (self-instruct, Evol-Instruct or Magpie)"
    reads = ("seed tasks (config: seed_tasks)",)
    writes = ("generated.jsonl", "rejected.jsonl", "diversity.json", "diversity.png", "work/generate_requests.jsonl")
    sends_requests = True
    scales_out = True
    summary_type = GenerateSummary

    def enabled(self, config: PipelineConfig) -> bool:
        return True

    def preflight(self, config: PipelineConfig) -> None:
        from core.records import read_seed_tasks
        from selfinstruct.strategies import strategy_named

        read_seed_tasks(config.seed_tasks)  # bad seed tasks are named before the teacher is asked anything
        strategy_named(config.generate.strategy).preflight(config.generate, config.teacher)

    def endpoints(self, config: PipelineConfig) -> dict:
        """The endpoints the stage sends to, by their config key."""
        return {"teacher": config.teacher}

    def run(self, context: StageContext) -> GenerateSummary:
        from core.records import read_seed_tasks, write_jsonl
        from pipeline.requests import ReplayedSpend, send_shards, stop_if_nothing_answered
        from selfinstruct.strategies import strategy_named
        from selfinstruct.strategy import GenerationJob

        started = time.perf_counter()
        config, rundir, path = context.config, context.rundir, context.path
        seeds = read_seed_tasks(config.seed_tasks)
        teacher = context.models.teacher()
        consumed = OutcomeLog()
        spend = ReplayedSpend(path, config.teacher, "generate")
        # Rejections go to disk as they happen: a run of tens of thousands of requests drops far
        # more tasks than it keeps, and none of them need to stay in memory.
        spool = rundir.rejection_spool("generate")
        try:
            send = spend.charging(context.send)
            job = GenerationJob(
                settings=config.generate, seeds=seeds, teacher=config.teacher,
                send_shard=lambda shard: consumed.keep(send(path, teacher, config.teacher, "generate", shard)),
                send_shards=lambda shards: consumed.keep_each(
                    send_shards(send, path, teacher, config.teacher, "generate", shards)),
                budget_exhausted=lambda: path.meter.exhausted, rejected=spool)
            result = strategy_named(config.generate.strategy).run(job)
            write_jsonl(rundir.generated, result.kept)
            rundir.write_rejections("generate", spool)
        finally:
            spool.close()
            spend.settle()
        summary = GenerateSummary(**result.summary, faults=consumed.faults(),
                                  diversity=write_diversity_report(rundir, result.kept, seeds))
        summary.seconds = round(time.perf_counter() - started, 2)
        summary.teacher = teacher.identity
        if not summary.kept and summary.requests_failed and summary.requests_failed >= summary.requests:
            # Nothing kept because nothing was answered (replies that gave no task are another matter).
            stop_if_nothing_answered(self.name, config.teacher, rundir.journal("generate"),
                                     summary.faults.get("requests_failed", summary.requests_failed),
                                     summary.faults.get("failed_by_kind"))
        return summary
