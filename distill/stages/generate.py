"""The generate stage: seed tasks to generated.jsonl (self-instruct or Evol-Instruct)."""

from __future__ import annotations

import logging
import time
from typing import Iterator

from backends.base import ChatBackend
from backends.runner import fault_counts
from distill.config import PipelineConfig
from distill.records import read_seed_tasks, write_json, write_jsonl
from distill.rundir import RunDir
from distill.stages.session import ReplayedSpend, RequestPath, SendShard, send_shard, send_shards

log = logging.getLogger(__name__)


def write_diversity_report(config: PipelineConfig, rundir: RunDir, records: list[dict], seeds: list[dict]) -> dict:
    """Self-Instruct's analysis of the generated set: verbs and objects, lengths, similarity to seeds."""
    from selfinstruct.diversity import diversity_plot_png, diversity_stats

    stats = diversity_stats(records, [s["instruction"] for s in seeds])
    write_json(rundir.root / "diversity.json", stats)
    if records:
        diversity_plot_png(stats, rundir.root / "diversity.png")
    return {"parser": stats["parser"], "distinct_verbs": stats["verbs"]["n_distinct_verbs"],
            "share_with_input": stats["share_with_input"]}


class OutcomeLog:
    """Keeps the outcomes a stage consumed (one small entry each), so its summary can count the faults."""

    def __init__(self):
        self.entries: list[dict] = []

    def keep(self, outcomes: list[dict]) -> list[dict]:
        """Note one shard's outcomes and hand them on (only those with a fault take memory)."""
        self.entries += [{k: o.get(k) for k in ("ok", "error", "attempt_errors")}
                         for o in outcomes if not o.get("ok") or o.get("attempt_errors")]
        return outcomes

    def keep_each(self, shards: Iterator[list[dict]]) -> Iterator[list[dict]]:
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
        return fault_counts(self.entries)


def generate_stage(config: PipelineConfig, rundir: RunDir, teacher: ChatBackend, path: RequestPath,
                   send: SendShard = send_shard) -> dict:
    """Self-instruct from the seed tasks into generated.jsonl (drops into rejected.jsonl)."""
    started = time.perf_counter()
    seeds = read_seed_tasks(config.seed_tasks)
    spend = ReplayedSpend(path, config.teacher, "generate")
    try:
        return _generate(config, rundir, teacher, path, spend.charging(send), seeds, OutcomeLog(), started)
    finally:
        spend.settle()


def _generate(config: PipelineConfig, rundir: RunDir, teacher: ChatBackend, path: RequestPath, send: SendShard,
              seeds: list[dict], consumed: OutcomeLog, started: float) -> dict:
    from selfinstruct.generate import SelfInstructRun, domain_similarity_scorer, run_self_instruct
    from selfinstruct.prompt import load_template

    if config.generate.strategy == "evol_instruct":
        from selfinstruct.evolve_run import run_evol_instruct

        result = run_evol_instruct(config.generate, seeds,
                                   lambda shard: consumed.keep(send(path, teacher, config.teacher, "generate", shard)),
                                   lambda: path.meter.exhausted)
        write_jsonl(rundir.generated, result["kept"])
        rundir.write_rejections("generate", result["rejected"])
        summary = {**result["summary"], "tasks_parsed": None, "faults": consumed.faults(),
                   "diversity": write_diversity_report(config, rundir, result["kept"], seeds),
                   "seconds": round(time.perf_counter() - started, 2), "teacher": teacher.identity}
        rundir.mark_done("generate", summary)
        return summary
    domain = config.generate.domain
    # Rejections go to disk as they happen: a run of tens of thousands of requests drops far
    # more tasks than it keeps, and none of them need to stay in memory.
    spool = rundir.rejection_spool("generate")
    try:
        run = SelfInstructRun(config.generate, seeds, load_template(config.generate.reply_format),
                              lambda: path.meter.exhausted,
                              domain_similarity_scorer(domain, [s['instruction'] for s in seeds]) if domain else None,
                              rejected=spool)
        run_self_instruct(run, lambda shards: consumed.keep_each(
            send_shards(send, path, teacher, config.teacher, "generate", shards)))
        write_jsonl(rundir.generated, run.kept)
        rundir.write_rejections("generate", spool)
    finally:
        spool.close()
    summary = {**run.summary(), "faults": consumed.faults(),
               "diversity": write_diversity_report(config, rundir, run.kept, seeds),
               "seconds": round(time.perf_counter() - started, 2), "teacher": teacher.identity}
    rundir.mark_done("generate", summary)
    return summary
