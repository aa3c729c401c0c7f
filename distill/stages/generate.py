"""The generate stage: seed tasks to generated.jsonl (self-instruct or Evol-Instruct)."""

from __future__ import annotations

import logging
import time

from backends.base import ChatBackend
from distill.config import PipelineConfig
from distill.records import read_seed_tasks, write_json, write_jsonl
from distill.rundir import RunDir
from distill.stages.session import RequestPath, SendShard, send_shard

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


def generate_stage(config: PipelineConfig, rundir: RunDir, teacher: ChatBackend, path: RequestPath,
                   send: SendShard = send_shard) -> dict:
    """Self-instruct from the seed tasks into generated.jsonl (drops into rejected.jsonl)."""
    from selfinstruct.generate import SelfInstructRun, domain_similarity_scorer, run_self_instruct
    from selfinstruct.prompt import load_template

    started = time.perf_counter()
    seeds = read_seed_tasks(config.seed_tasks)
    if config.generate.strategy == "evol_instruct":
        from selfinstruct.evolve_run import run_evol_instruct

        result = run_evol_instruct(config.generate, seeds,
                                   lambda shard: send(path, teacher, config.teacher, "generate", shard),
                                   lambda: path.meter.exhausted)
        write_jsonl(rundir.generated, result["kept"])
        rundir.write_rejections("generate", result["rejected"])
        summary = {**result["summary"], "tasks_parsed": None,
                   "diversity": write_diversity_report(config, rundir, result["kept"], seeds),
                   "seconds": round(time.perf_counter() - started, 2), "teacher": teacher.identity}
        rundir.mark_done("generate", summary)
        return summary
    domain = config.generate.domain
    run = SelfInstructRun(config.generate, seeds, load_template(config.generate.reply_format),
                          lambda: path.meter.exhausted,
                          domain_similarity_scorer(domain, [s['instruction'] for s in seeds]) if domain else None)
    run_self_instruct(run, lambda shard: send(path, teacher, config.teacher, "generate", shard))
    write_jsonl(rundir.generated, run.kept)
    rundir.write_rejections("generate", run.rejected)
    summary = {**run.summary(), "diversity": write_diversity_report(config, rundir, run.kept, seeds), "seconds": round(time.perf_counter() - started, 2), "teacher": teacher.identity}
    rundir.mark_done("generate", summary)
    return summary
