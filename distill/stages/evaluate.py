"""The evaluate stage: every contestant (the fine-tuned student, the base student, and each
compressed variant of the compress stage) and the teacher answer the evaluation sets; the
judge compares each contestant with the teacher in both orders; cost is measured alongside,
on this machine, in this run."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from backends.base import ChatBackend, ChatRequest
from distill.config import PipelineConfig
from distill.records import write_json, write_jsonl
from distill.rundir import RunDir
from distill.stages.session import RequestPath, SendShard, StageInputError, send_shard, tokens_of

log = logging.getLogger(__name__)

EXAMPLES_SHOWN = 3


def _judge_contestant(config: PipelineConfig, judge: ChatBackend, path: RequestPath, send: SendShard,
                      items: list[dict], answers: dict[str, str], teacher: dict[str, str],
                      label: str) -> tuple[list[dict], list[dict]]:
    """Pairwise judgments (both orders) of one contestant's answers against the teacher's."""
    from eval.judge import PAIRWISE_TEMPLATE, judgments, pairwise_requests

    prefix = "judge" if label == "student" else f"judge-{label}"
    requests = pairwise_requests(items, answers, teacher, PAIRWISE_TEMPLATE.read_text(encoding="utf-8"),
                                 config.evaluate.judge_max_tokens, key_prefix=prefix)
    outcomes = send(path, judge, config.judge_endpoint, "judge", requests)
    return judgments(items, outcomes, key_prefix=prefix), outcomes


def _quality(verdicts: list[dict], answers: dict[str, str], teacher: dict[str, str]) -> dict:
    """Win / tie / loss, win rate with its bootstrap interval, and the length-controlled win rate."""
    from eval.stats import length_controlled_win_rate, win_rate_ci

    outcomes = [v["outcome"] for v in verdicts]
    rate = win_rate_ci(outcomes)
    length_gap = [len(answers[v["id"]].split()) - len(teacher[v["id"]].split()) for v in verdicts]
    return {"wins": rate.wins, "ties": rate.ties, "losses": rate.losses, "invalid": rate.invalid,
            "win_rate": rate.win_rate, "win_rate_ci95": [rate.ci_low, rate.ci_high],
            "lc_win_rate": length_controlled_win_rate(outcomes, length_gap), "judged": len(verdicts)}


def _quality_per_set(verdicts: list[dict], items: list[dict], answers: dict[str, str], teacher: dict[str, str]) -> dict:
    """Quality overall and for each evaluation set."""
    set_of = {item["id"]: item["set"] for item in items}
    return {**_quality(verdicts, answers, teacher),
            "per_set": {name: _quality([v for v in verdicts if set_of[v["id"]] == name], answers, teacher)
                        for name in dict.fromkeys(set_of.values())}}


def evaluation_contestants(config: PipelineConfig, rundir: RunDir, finetuned: dict) -> list[dict]:
    """Who is judged against the teacher: the student, the base student, each compressed variant."""
    # A LoRA student is the base model plus its adapter; a fully fine-tuned one is a model of
    # its own, and the base student is then the model it was tuned from.
    base_dir = Path(finetuned["base_model"])
    adapter_dir = Path(finetuned["adapter"]) if finetuned.get("adapter") else None
    untuned_dir = Path(finetuned.get("untuned_model") or base_dir)
    student_job = {"kind": "student", "trust_remote_code": config.finetune.trust_remote_code,
                   "batch_size": config.evaluate.batch_size, "static_cache": config.evaluate.static_cache}
    if adapter_dir is not None:
        student = {"adapter": str(adapter_dir), "identity": f"{base_dir.name}+lora",
                   "size_on_disk": [str(base_dir), str(adapter_dir)], "adapter_dir": str(adapter_dir)}
    else:
        student = {"adapter": None, "identity": f"{base_dir.name} (fully fine-tuned)", "size_on_disk": [str(base_dir)]}
    contestants = [{**student_job, "label": "student", "base_model": str(base_dir), **student}]
    if config.evaluate.compare_base:
        contestants.append({**student_job, "label": "base_student", "base_model": str(untuned_dir), "adapter": None,
                            "identity": untuned_dir.name, "size_on_disk": [str(untuned_dir)]})
    variants_file = rundir.root / "compress" / "variants.json"
    if variants_file.is_file():
        try:
            variants = json.loads(variants_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise StageInputError(f"{variants_file}:{error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(variants, list):
            raise StageInputError(f"{variants_file}: expected a JSON list of variants")
        for number, variant in enumerate(variants, 1):
            if not isinstance(variant, dict) or not isinstance(variant.get("label"), str):
                raise StageInputError(f"{variants_file}: variant {number}: field 'label' must be a string")
            label = re.sub(r"[^\w.-]+", "_", variant["label"])
            if label in ("student", "base_student", "teacher"):
                label = f"variant_{label}"
            contestants.append({"kind": "variant", "label": label, "variant": variant,
                                "identity": f"{variant['label']} ({variant.get('kind', 'compressed')})",
                                "size_bytes": variant.get("size_on_disk_bytes")})
    return contestants


def _answer(contestant: dict, items: list[dict], config: PipelineConfig, rundir: RunDir,
            cache_dir: Path) -> tuple[list[dict], dict]:
    """One contestant's answers and cost, measured in a process of its own."""
    from eval.answer_process import answer_in_child
    from eval.efficiency import latency_summary, size_on_disk

    job = {key: contestant.get(key) for key in ("kind", "label", "base_model", "adapter", "trust_remote_code",
                                                 "batch_size", "static_cache", "variant")}
    job.update(student_backend=config.evaluate.student_backend, vllm_engine_args=config.evaluate.vllm_engine_args)
    job.update(items=items, prompt_format=config.finetune.prompt_format,
               max_new_tokens=config.evaluate.max_new_tokens, cache_dir=str(cache_dir))
    answers, measured = answer_in_child(job, rundir.eval_dir / "work")
    size = (size_on_disk(*map(Path, contestant["size_on_disk"])) if contestant.get("size_on_disk")
            else contestant.get("size_bytes") or measured.get("size_on_disk_bytes"))
    seconds_per_answer = measured["answer_wall_s"] / max(1, len(answers))
    efficiency = {
        **{k: v for k, v in measured.items() if k not in ("answer_wall_s",)},
        "identity": contestant["identity"], "size_on_disk_bytes": size,
        **({"adapter_size_bytes": size_on_disk(Path(contestant["adapter_dir"]))} if contestant.get("adapter_dir") else {}),
        **latency_summary([a["latency_s"] for a in answers], [a["completion_tokens"] for a in answers],
                          [a.get("ttft_s") for a in answers]),
        "answer_wall_s": measured["answer_wall_s"], "seconds_per_answer": round(seconds_per_answer, 4),
        **local_cost(seconds_per_answer, config.evaluate.local_hourly_usd),
    }
    return answers, efficiency


def local_cost(seconds_per_answer: float, hourly_usd: float) -> dict:
    """Cost per 1,000 answers of a model on this machine, and how it was reckoned."""
    from eval.efficiency import local_cost_per_1k

    return {"cost_per_1k_answers_usd": round(local_cost_per_1k(seconds_per_answer, hourly_usd), 6),
            "cost_basis": f"measured seconds per answer x evaluate.local_hourly_usd ({hourly_usd})"}


def teacher_costs(config: PipelineConfig, teacher: ChatBackend, answers: list[dict], wall_s: float) -> dict:
    """The teacher's peak memory (its llama.cpp server's VmHWM when embedded) and cost per 1,000 answers."""
    from eval.efficiency import api_cost_per_1k, process_peak_memory, server_pid_on_port

    endpoint = config.teacher
    local = endpoint.backend in ("embedded", "vllm") and not endpoint.base_urls
    costs: dict = {}
    port = re.search(r"127\.0\.0\.1:(\d+)", teacher.identity)
    pid = server_pid_on_port(int(port.group(1))) if endpoint.backend == "embedded" and port else None
    if pid is not None:
        costs.update(peak_memory_bytes=process_peak_memory(pid),
                     peak_memory_method="VmHWM of the llama.cpp server process (its high-water mark over this run)")
    else:
        costs.update(peak_memory_bytes=None, peak_memory_method="not measurable: the teacher runs in another "
                     "process or machine than this run can read (remote API or server)")
    n = max(1, len(answers))
    if local:
        seconds = wall_s / n
        costs.update(seconds_per_answer=round(seconds, 4), **local_cost(seconds, config.evaluate.local_hourly_usd))
    elif endpoint.price_input_per_mtok or endpoint.price_output_per_mtok:
        mean_prompt = sum(a.get("prompt_tokens", 0) for a in answers) / n
        mean_completion = sum(a["completion_tokens"] for a in answers) / n
        costs.update(seconds_per_answer=round(wall_s / n, 4),
                     cost_per_1k_answers_usd=round(api_cost_per_1k(mean_prompt, mean_completion,
                                                                   endpoint.price_input_per_mtok,
                                                                   endpoint.price_output_per_mtok), 6),
                     cost_basis="mean tokens per answer x the teacher's price_input/output_per_mtok")
    else:
        costs.update(seconds_per_answer=round(wall_s / n, 4), cost_per_1k_answers_usd=None,
                     cost_basis="unknown: a remote teacher with no price_input/output_per_mtok in the config")
    return costs


def _examples(items: list[dict], contestant_answers: dict[str, str], teacher: dict[str, str],
              verdicts: list[dict], count: int = EXAMPLES_SHOWN) -> list[dict]:
    """The prompts where the student's and the teacher's answers differ most (fewest shared
    words), with the judge's outcome."""
    outcome = {v["id"]: v["outcome"] for v in verdicts}

    def overlap(item_id: str) -> float:
        mine, theirs = set(contestant_answers[item_id].lower().split()), set(teacher[item_id].lower().split())
        return len(mine & theirs) / max(1, len(mine | theirs))

    judged = [item for item in items if item["id"] in outcome]
    ranked = sorted(judged, key=lambda item: (overlap(item["id"]), item["id"]))[:count]
    return [{"id": item["id"], "set": item["set"], "instruction": item["instruction"], "input": item.get("input", ""),
             "student": contestant_answers[item["id"]], "teacher": teacher[item["id"]],
             "outcome": outcome[item["id"]], "word_overlap": round(overlap(item["id"]), 3)} for item in ranked]


def evaluate_stage(config: PipelineConfig, rundir: RunDir, teacher: ChatBackend, judge: ChatBackend,
                   path: RequestPath, cache_dir: Path, send: SendShard = send_shard) -> dict:
    """Every contestant (student, base student, compressed variants) and the teacher answer the
    evaluation sets; the judge compares each contestant with the teacher in both orders."""
    from backends.embedded_server import find_embedded_gguf
    from distill.models import endpoint_identity
    from eval.efficiency import gguf_parameter_count, latency_summary, size_on_disk
    from eval.judge import prompt_text
    from eval.sets import load_eval_set

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

    # Contestants: each answers in a process of its own, so its peak memory is its own.
    contestants = evaluation_contestants(config, rundir, finetuned)
    answers, efficiency = {}, {}
    for contestant in contestants:
        label = contestant["label"]
        log.info("evaluate: %s answers %d prompts", label, len(items))
        produced, efficiency[label] = _answer(contestant, items, config, rundir, cache_dir)
        write_jsonl(rundir.eval_dir / f"{label}_answers.jsonl", produced)
        answers[label] = {a["id"]: a["answer"] for a in produced}

    # Teacher: the same prompts through its backend; then one-token requests of the same
    # prompts, whose latency is the time to the first token.
    teacher_requests = [
        ChatRequest(key=f"answer-{item['id']}", messages=[{"role": "user", "content": prompt_text(item)}],
                    max_tokens=settings.max_new_tokens, temperature=0.0, meta={"id": item["id"]})
        for item in items
    ]
    teacher_started = time.perf_counter()
    teacher_outcomes = send(path, teacher, config.teacher, "teacher_answers", teacher_requests)
    teacher_wall_s = time.perf_counter() - teacher_started
    first_token_outcomes = send(path, teacher, config.teacher, "teacher_first_token", [
        ChatRequest(key=f"first-token-{r.meta['id']}", messages=r.messages, max_tokens=1, temperature=0.0, meta=r.meta)
        for r in teacher_requests])
    ttft_of = {o["meta"]["id"]: o["latency_s"] for o in first_token_outcomes if o.get("ok")}
    teacher_answers = [
        {"id": o["meta"]["id"], "answer": (o.get("text") or "").strip() if o.get("ok") else "",
         "completion_tokens": o.get("completion_tokens", 0), "prompt_tokens": o.get("prompt_tokens", 0),
         "latency_s": o["latency_s"], "ttft_s": ttft_of.get(o["meta"]["id"]), "ok": o.get("ok", False)}
        for o in teacher_outcomes
    ]
    write_jsonl(rundir.eval_dir / "teacher_answers.jsonl", teacher_answers)
    teacher_by_id = {a["id"]: a["answer"] for a in teacher_answers if a["ok"]}
    judged_items = [item for item in items if item["id"] in teacher_by_id]

    # Judge both orders, per contestant; report overall and per set.
    quality, judge_outcomes, examples = {}, [], {}
    for contestant in contestants:
        label = contestant["label"]
        verdicts, outcomes = _judge_contestant(config, judge, path, send, judged_items, answers[label],
                                               teacher_by_id, label)
        judge_outcomes += outcomes
        write_jsonl(rundir.eval_dir / ("judgments.jsonl" if label == "student" else f"judgments_{label}.jsonl"),
                    verdicts)
        quality[label] = _quality_per_set(verdicts, judged_items, answers[label], teacher_by_id)
        examples[label] = _examples(judged_items, answers[label], teacher_by_id, verdicts)
    write_json(rundir.eval_dir / "examples.json", examples)

    teacher_model = {"identity": endpoint_identity(config.teacher)}
    if config.teacher.backend == "embedded" and not config.teacher.base_urls:
        gguf = find_embedded_gguf()
        teacher_model.update(parameters=gguf_parameter_count(gguf), size_on_disk_bytes=size_on_disk(gguf))
    teacher_ok = [a for a in teacher_answers if a["ok"]]
    teacher_efficiency = {
        **teacher_model,
        **latency_summary([a["latency_s"] for a in teacher_ok], [a["completion_tokens"] for a in teacher_ok],
                          [a["ttft_s"] for a in teacher_ok]),
        **teacher_costs(config, teacher, teacher_ok, teacher_wall_s),
    }
    student_quality = quality["student"]
    summary = {
        "prompts": len(items), "sets": list(settings.sets), "judged": student_quality["judged"],
        **{key: student_quality[key] for key in ("wins", "ties", "losses", "invalid", "win_rate",
                                                 "win_rate_ci95", "lc_win_rate", "per_set")},
        "base_student_quality": quality.get("base_student"),
        "student": efficiency["student"], "base_student": efficiency.get("base_student"),
        "teacher": teacher_efficiency,
        "contestants": {c["label"]: {"kind": c["kind"], "quality": quality[c["label"]],
                                     "efficiency": efficiency[c["label"]]} for c in contestants},
        **tokens_of(teacher_outcomes + first_token_outcomes + judge_outcomes),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(rundir.eval_dir / "summary.json", summary)
    rundir.mark_done("evaluate", summary)
    return summary
