"""The four stages as plain functions over a run directory.

Each stage reads the files earlier stages wrote, writes its own (atomically), and records
a summary in `stages/<name>.json`. Requests to models go through `send_shard`, which the
Prefect flow replaces with a task so that every shard is a task run; called directly, as
the CLI's single-stage commands do, the stages need no orchestrator.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from pathlib import Path
from typing import Callable, Iterator

from backends.base import ChatBackend, ChatRequest
from backends.factory import prices_of
from backends.runner import RetryPolicy, UsageMeter, run_requests
from distill.config import ModelEndpoint, PipelineConfig, check_base_model
from distill.records import Journal, read_records, read_seed_tasks, write_json, write_jsonl
from distill.rundir import RunDir

log = logging.getLogger(__name__)


class StageInputError(ValueError):
    """A stage cannot start: its input is missing or unusable."""


class RequestPath:
    """Sends shards of requests through the shared runner, journaled under the run directory."""

    def __init__(self, rundir: RunDir, meter: UsageMeter):
        self.rundir = rundir
        self.meter = meter
        self._journals: dict[str, Journal] = {}

    def journal(self, name: str) -> Journal:
        if name not in self._journals:
            self._journals[name] = Journal(self.rundir.journal(name))
        return self._journals[name]

    def send(self, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
             requests: list[ChatRequest]) -> list[dict]:
        """Send one shard; return its outcomes (reused from the journal where present)."""
        outcomes, stats = run_requests(
            backend, requests, self.journal(journal_name),
            max_in_flight=endpoint.max_in_flight,
            policy=RetryPolicy(max_retries=endpoint.max_retries),
            meter=self.meter, prices=prices_of(endpoint),
        )
        log.info("%s shard: %d sent, %d reused, %d failed, %d retries", journal_name,
                 stats.sent, stats.reused, stats.failed, stats.retries)
        return outcomes

    def close(self) -> None:
        for journal in self._journals.values():
            journal.close()
        self._journals.clear()


SendShard = Callable[[RequestPath, ChatBackend, ModelEndpoint, str, list[ChatRequest]], list[dict]]


@contextlib.contextmanager
def run_session(config: PipelineConfig, config_path: Path, rundir: RunDir) -> Iterator[tuple[RequestPath, "ModelSessions"]]:
    """Everything a stage needs around it: the run directory held against a second process,
    the manifest written, the request path (with the budget spent so far) and the models,
    opened on first use and closed however the block ends."""
    from distill.manifest import build_manifest, write_manifest
    from distill.models import ModelSessions, endpoint_identity

    with rundir.locked():
        student = ("SmolLM2-135M-Instruct (dequantized from the embedded GGUF) + LoRA"
                   if config.finetune.base_model == "embedded" else f"{config.finetune.base_model} + LoRA")
        write_manifest(rundir.manifest, build_manifest(
            config, Path(config_path).resolve(), endpoint_identity(config.teacher),
            endpoint_identity(config.judge_endpoint), student))
        path = RequestPath(rundir, usage_so_far(rundir, config))
        try:
            with ModelSessions(config, rundir.logs) as models:
                yield path, models
        finally:
            path.close()


def send_shard(path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
               requests: list[ChatRequest]) -> list[dict]:
    """The plain (orchestrator-free) way to send a shard."""
    return path.send(backend, endpoint, journal_name, requests)


def usage_so_far(rundir: RunDir, config: PipelineConfig) -> UsageMeter:
    """A meter holding the tokens and money already spent by this run (read from its journals)."""
    meter = UsageMeter(config.budget.max_tokens, config.budget.max_cost_usd)
    endpoints = {"generate": config.teacher, "rate": config.judge_endpoint,
                 "teacher_answers": config.teacher, "judge": config.judge_endpoint}
    for name, endpoint in endpoints.items():
        path = rundir.journal(name)
        if path.is_file():
            with Journal(path) as journal:
                for entry in journal.entries():
                    if entry.get("ok"):
                        meter.add(entry.get("prompt_tokens", 0), entry.get("completion_tokens", 0), prices_of(endpoint))
    return meter


def _tokens(outcomes: list[dict]) -> dict:
    ok = [o for o in outcomes if o.get("ok")]
    return {"prompt_tokens": sum(o.get("prompt_tokens", 0) for o in ok),
            "completion_tokens": sum(o.get("completion_tokens", 0) for o in ok)}


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
        "histogram": str(histogram), **_tokens(outcomes),
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


def split_heldout(records: list[dict], count: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded split into (train, held out); at least one record always stays for training."""
    count = min(count, max(0, len(records) - 1))
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    train = [r for i, r in enumerate(records) if i not in held]
    heldout = [r for i, r in enumerate(records) if i in held]
    return train, heldout


def student_base_dir(config: PipelineConfig, cache_dir: Path) -> Path:
    """The student's base model directory (the embedded one is built once into the cache)."""
    if config.finetune.base_model == "embedded":
        from finetune.embedded_student import ensure_plain_student

        return ensure_plain_student(cache_dir)
    return Path(config.finetune.base_model)


def finetune_stage(config: PipelineConfig, rundir: RunDir, cache_dir: Path, progress: bool = True) -> dict:
    """Split off held-out prompts, then LoRA-tune the student on the rest."""
    from finetune.train import train_lora

    check_base_model(config)
    started = time.perf_counter()
    try:
        records = read_records(rundir.filtered, required=("instruction", "output"), optional=("input",))
    except ValueError as exc:
        raise StageInputError(f"finetune has nothing to learn from: {exc}; lower filter.threshold "
                              "or generate more records") from None
    train, heldout = split_heldout(records, config.finetune.heldout_records, config.finetune.seed)
    write_jsonl(rundir.train, train)
    write_jsonl(rundir.heldout, heldout)
    base_dir = student_base_dir(config, cache_dir)
    result = train_lora(train, base_dir, rundir.root / "finetune", config.finetune, progress=progress)
    summary = {
        "train_records": result.train_records, "dropped_too_long": result.dropped_records,
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
        "heldout_records": len(heldout), "base_model": str(base_dir),
        "adapter": str(result.adapter_dir), "steps": result.steps, "train_loss": result.train_loss,
        "tokens_seen": result.tokens_seen, "trainable_params": result.trainable_params,
        "total_params": result.total_params, "seconds": round(time.perf_counter() - started, 2),
    }
    rundir.mark_done("finetune", summary)
    return summary


def _judge_students(config: PipelineConfig, judge: ChatBackend, path: RequestPath, send: SendShard, items: list[dict],
                    answers: dict[str, str], teacher: dict[str, str], label: str) -> tuple[list[dict], list[dict]]:
    """Pairwise judgments (both orders) of one student's answers against the teacher's."""
    from eval.judge import PAIRWISE_TEMPLATE, judgments, pairwise_requests

    prefix = "judge" if label == "student" else f"judge-{label}"
    requests = pairwise_requests(items, answers, teacher, PAIRWISE_TEMPLATE.read_text(encoding="utf-8"),
                                 config.evaluate.judge_max_tokens, key_prefix=prefix)
    outcomes = send(path, judge, config.judge_endpoint, "judge", requests)
    return judgments(items, outcomes, key_prefix=prefix), outcomes


def _quality(verdicts: list[dict], items: list[dict], answers: dict[str, str], teacher: dict[str, str]) -> dict:
    """Win / tie / loss, win rate with its bootstrap interval, and the length-controlled win rate."""
    from eval.stats import length_controlled_win_rate, win_rate_ci

    outcomes = [v["outcome"] for v in verdicts]
    rate = win_rate_ci(outcomes)
    length_gap = [len(answers[v["id"]].split()) - len(teacher[v["id"]].split()) for v in verdicts]
    return {"wins": rate.wins, "ties": rate.ties, "losses": rate.losses, "invalid": rate.invalid,
            "win_rate": rate.win_rate, "win_rate_ci95": [rate.ci_low, rate.ci_high],
            "lc_win_rate": length_controlled_win_rate(outcomes, length_gap), "judged": len(verdicts)}


def evaluate_stage(config: PipelineConfig, rundir: RunDir, teacher: ChatBackend, judge: ChatBackend,
                   path: RequestPath, cache_dir: Path, send: SendShard = send_shard) -> dict:
    """Student (and the base student, for what the fine-tune gained) and teacher answer the
    evaluation sets; the judge compares each against the teacher in both orders."""
    from backends.embedded_server import find_embedded_gguf
    from distill.models import endpoint_identity
    from eval.efficiency import gguf_parameter_count, latency_summary, size_on_disk
    from eval.judge import prompt_text
    from eval.sets import load_eval_set
    from eval.student import answer_prompts, load_student

    started = time.perf_counter()
    settings = config.evaluate
    finetuned = rundir.stage_summary("finetune")
    if finetuned is None:
        raise StageInputError(f"{rundir.root}: evaluate needs a finished finetune stage (stages/finetune.json)")
    items = []
    for name in settings.sets:
        items += load_eval_set(name, rundir.heldout)[: settings.max_prompts]
    if not items:
        raise StageInputError(f"{rundir.root}: no evaluation prompts; set finetune.heldout_records above 0 "
                              "or name another set in evaluate.sets")
    rundir.eval_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(rundir.eval_dir / "prompts.jsonl", items)

    # Students: local transformers, one prompt at a time; the base first, then base + adapter.
    base_dir, adapter_dir = Path(finetuned["base_model"]), Path(finetuned["adapter"])
    students = {"student": adapter_dir, **({"base_student": None} if settings.compare_base else {})}
    answers, efficiency = {}, {}
    for label, adapter in students.items():
        model, tokenizer = load_student(base_dir, adapter, config.finetune.trust_remote_code)
        produced = answer_prompts(model, tokenizer, items, config.finetune.prompt_format, settings.max_new_tokens)
        parameters = sum(p.numel() for p in model.parameters())
        del model
        write_jsonl(rundir.eval_dir / f"{label}_answers.jsonl", produced)
        answers[label] = {a["id"]: a["answer"] for a in produced}
        efficiency[label] = {
            "identity": f"{base_dir.name}" + ("+lora" if adapter else ""), "parameters": parameters,
            "size_on_disk_bytes": size_on_disk(base_dir) + (size_on_disk(adapter) if adapter else 0),
            **({"adapter_size_bytes": size_on_disk(adapter)} if adapter else {}),
            **latency_summary([a["latency_s"] for a in produced], [a["completion_tokens"] for a in produced]),
        }

    # Teacher: the same prompts through its backend.
    teacher_requests = [
        ChatRequest(key=f"answer-{item['id']}", messages=[{"role": "user", "content": prompt_text(item)}],
                    max_tokens=settings.max_new_tokens, temperature=0.0, meta={"id": item["id"]})
        for item in items
    ]
    teacher_outcomes = send(path, teacher, config.teacher, "teacher_answers", teacher_requests)
    teacher_answers = [
        {"id": o["meta"]["id"], "answer": (o.get("text") or "").strip() if o.get("ok") else "",
         "completion_tokens": o.get("completion_tokens", 0), "latency_s": o["latency_s"], "ok": o.get("ok", False)}
        for o in teacher_outcomes
    ]
    write_jsonl(rundir.eval_dir / "teacher_answers.jsonl", teacher_answers)
    teacher_by_id = {a["id"]: a["answer"] for a in teacher_answers if a["ok"]}
    judged_items = [item for item in items if item["id"] in teacher_by_id]

    # Judge both orders, per student; report overall and per set.
    quality, judge_outcomes = {}, []
    for label in students:
        verdicts, outcomes = _judge_students(config, judge, path, send, judged_items, answers[label],
                                             teacher_by_id, label)
        judge_outcomes += outcomes
        write_jsonl(rundir.eval_dir / ("judgments.jsonl" if label == "student" else f"judgments_{label}.jsonl"),
                    verdicts)
        set_of = {item["id"]: item["set"] for item in judged_items}
        quality[label] = {
            **_quality(verdicts, judged_items, answers[label], teacher_by_id),
            "per_set": {name: _quality([v for v in verdicts if set_of[v["id"]] == name], judged_items,
                                       answers[label], teacher_by_id)
                        for name in dict.fromkeys(set_of.values())},
        }

    teacher_model = {"identity": endpoint_identity(config.teacher)}
    if config.teacher.backend == "embedded" and not config.teacher.base_urls:
        gguf = find_embedded_gguf()
        teacher_model.update(parameters=gguf_parameter_count(gguf), size_on_disk_bytes=size_on_disk(gguf))
    teacher_ok = [a for a in teacher_answers if a["ok"]]
    student_quality = quality["student"]
    summary = {
        "prompts": len(items), "sets": list(settings.sets), "judged": student_quality["judged"],
        **{key: student_quality[key] for key in ("wins", "ties", "losses", "invalid", "win_rate",
                                                 "win_rate_ci95", "lc_win_rate", "per_set")},
        "base_student_quality": quality.get("base_student"),
        "student": efficiency["student"], "base_student": efficiency.get("base_student"),
        "teacher": {**teacher_model, **latency_summary([a["latency_s"] for a in teacher_ok],
                                                        [a["completion_tokens"] for a in teacher_ok])},
        **_tokens(teacher_outcomes + judge_outcomes),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(rundir.eval_dir / "summary.json", summary)
    rundir.mark_done("evaluate", summary)
    return summary
