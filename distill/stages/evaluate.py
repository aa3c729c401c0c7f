"""The evaluate stage: student, base student and teacher answer the evaluation sets; the
judge compares each student with the teacher in both orders; cost measured alongside."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from backends.base import ChatBackend, ChatRequest
from distill.config import PipelineConfig
from distill.records import write_json, write_jsonl
from distill.rundir import RunDir
from distill.stages.session import RequestPath, SendShard, StageInputError, send_shard, tokens_of

log = logging.getLogger(__name__)


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
        **tokens_of(teacher_outcomes + judge_outcomes),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(rundir.eval_dir / "summary.json", summary)
    rundir.mark_done("evaluate", summary)
    return summary
