"""The filter stage: near-duplicate drops, judge ratings, selection, exports."""

from __future__ import annotations

import logging
import time

from backends.base import ChatBackend
from distill.config import PipelineConfig
from distill.records import read_records, write_json, write_jsonl
from distill.rundir import RunDir
from distill.stages.session import RequestPath, SendShard, send_shard, tokens_of

log = logging.getLogger(__name__)


def near_duplicate_drops(config: PipelineConfig, records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Optional MinHash and embedding near-duplicate removal before rating (no judge calls spent on them)."""
    settings = config.filter
    rejected: list[dict] = []
    if settings.minhash_dedup:
        from quality.minhash_dedup import minhash_dedup

        texts = [f"{r['instruction']}\n{r.get('input', '')}" for r in records]
        results = minhash_dedup(texts, settings.minhash_threshold, settings.minhash_num_perm,
                                settings.minhash_shingle_size)
        rejected += [{"id": r.get("id"), "stage": "filter", "reason": "minhash_duplicate",
                      "nearest": records[d.nearest_index].get("id"), "jaccard": d.jaccard, "record": r}
                     for r, d in zip(records, results) if not d.kept]
        records = [r for r, d in zip(records, results) if d.kept]
    if settings.semantic_dedup:
        import torch

        from quality.semantic_dedup import record_text, semantic_dedup

        threads = torch.get_num_threads()
        if settings.embedding_threads:
            torch.set_num_threads(settings.embedding_threads)
        try:
            results = semantic_dedup([record_text(r) for r in records], settings.semantic_threshold)
        finally:
            torch.set_num_threads(threads)
        rejected += [{"id": r.get("id"), "stage": "filter", "reason": "semantic_duplicate",
                      "nearest": records[d.nearest_index].get("id"), "similarity": d.similarity, "record": r}
                     for r, d in zip(records, results) if not d.kept]
        records = [r for r, d in zip(records, results) if d.kept]
    return records, rejected


def filter_stage(config: PipelineConfig, rundir: RunDir, judge: ChatBackend, path: RequestPath,
                 send: SendShard = send_shard) -> dict:
    """Drop near-duplicates (optional), rate every pair 0-5, keep the best by threshold or top K."""
    from quality.histogram import per_score_examples, score_histogram_png
    from quality.rate import RATING_TEMPLATE, apply_ratings, rating_requests
    from quality.select import select_by_threshold, select_top_k

    started = time.perf_counter()
    settings = config.filter
    generated = read_records(rundir.generated, required=("instruction", "output"), optional=("input",))
    records, duplicates = near_duplicate_drops(config, generated)
    requests = rating_requests(records, RATING_TEMPLATE.read_text(encoding="utf-8"), settings)
    size = config.generate.requests_per_shard
    outcomes = []
    for begin in range(0, len(requests), size):
        if path.meter.exhausted:
            break
        outcomes += send(path, judge, config.judge_endpoint, "rate", requests[begin:begin + size])
        log.info("filter: %d/%d records rated", len(outcomes), len(requests))
    ratings = apply_ratings(records, outcomes)
    if settings.selection == "top_k":
        kept, dropped = select_top_k(ratings["rated"], settings.top_k)
    else:
        kept, dropped = select_by_threshold(ratings["rated"], settings.threshold)
    strip = ("score", "explanation", "rating_problem", "judge_reply")
    kept = [{k: v for k, v in r.items() if k not in strip} for r in kept]
    selection_drops = [{"id": r.get("id"), "stage": "filter", "reason": r["reason"], "score": r.get("score"),
                        "judge_reply": r.get("judge_reply"),
                        "record": {k: v for k, v in r.items() if k not in (*strip, "reason")}} for r in dropped]
    write_jsonl(rundir.rated, ratings["rated"])
    write_jsonl(rundir.filtered, kept)
    rundir.write_rejections("filter", duplicates + ratings["not_rated"] + selection_drops)
    histogram = rundir.root / "score_histogram.png"
    score_histogram_png([r["score"] for r in ratings["rated"]], histogram,
                        threshold=settings.threshold if settings.selection == "threshold" else None)
    write_json(rundir.root / "score_examples.json", per_score_examples(ratings["rated"], settings.examples_per_score))
    exports = export_filtered(config, rundir, kept)
    drop_counts: dict[str, int] = {}
    for rejection in duplicates + ratings["not_rated"] + selection_drops:
        drop_counts[rejection["reason"]] = drop_counts.get(rejection["reason"], 0) + 1
    summary = {
        "input": len(generated), "after_dedup": len(records),
        "rated": sum(1 for r in ratings["rated"] if r["score"] is not None), "kept": len(kept),
        "selection": settings.selection, "threshold": settings.threshold, "top_k": settings.top_k,
        "dropped": dict(sorted(drop_counts.items())), "counts": ratings["counts"],
        "histogram": str(histogram), **tokens_of(outcomes),
        "seconds": round(time.perf_counter() - started, 2), "judge": judge.identity, "exports": exports,
    }
    rundir.mark_done("filter", summary)
    return summary


def export_filtered(config: PipelineConfig, rundir: RunDir, records: list[dict]) -> dict[str, str]:
    """Write the kept records in every format the config asks for; return format -> path."""
    from selfinstruct.export import DEFAULT_FILENAMES, export_records

    written = {}
    for fmt in config.export.formats:
        target = rundir.root / "export" / DEFAULT_FILENAMES[fmt]
        target.parent.mkdir(parents=True, exist_ok=True)
        export_records(records, fmt, target, system_prompt=config.export.chat_system_prompt)
        written[fmt] = str(target)
    return written
