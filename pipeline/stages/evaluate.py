"""The evaluate stage: every contestant (the fine-tuned student, the base student, and each
compressed variant of the compress stage) and the teacher answer the evaluation sets; the
judge compares each contestant with the teacher in both orders; cost is measured alongside,
on this machine, in this run."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import StageInputError
from pipeline.stage import StageContext, StageSummary

if TYPE_CHECKING:
    from backends.base import ChatBackend
    from core.rundir import RunDir
    from eval.contestants import AnswerJob, Contestant
    from pipeline.config import PipelineConfig
    from pipeline.requests import RequestPath, SendShard

log = logging.getLogger(__name__)

EXAMPLES_SHOWN = 3


def _judge_contestant(config: PipelineConfig, judge: ChatBackend, path: RequestPath, send: SendShard,
                      items: list[dict], answers: dict[str, str], teacher: dict[str, str],
                      label: str) -> tuple[list[dict], list[dict]]:
    """Pairwise judgments (both orders) of one contestant's answers against the teacher's."""
    import prompts
    from eval.judge import PAIRWISE_TEMPLATE, judgments, pairwise_requests

    prefix = "judge" if label == "student" else f"judge-{label}"
    requests = pairwise_requests(items, answers, teacher, prompts.load_template(PAIRWISE_TEMPLATE),
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


def evaluation_contestants(config: PipelineConfig, rundir: RunDir, finetuned: dict) -> list[Contestant]:
    """Who is judged against the teacher: the student, the base student, each compressed variant."""
    from eval.contestants import contestants_of, read_variants

    return contestants_of(finetuned, read_variants(rundir.root / "compress" / "variants.json"),
                          config.evaluate.compare_base)


def answer_job(contestant: Contestant, items: list[dict], config: PipelineConfig, cache_dir: Path) -> AnswerJob:
    """The job that has `contestant` answer `items` with the run's evaluation settings."""
    from eval.contestants import AnswerJob

    settings = config.evaluate
    return AnswerJob(label=contestant.label, kind=contestant.kind, items=items,
                     prompt_format=config.finetune.prompt_format, max_new_tokens=settings.max_new_tokens,
                     cache_dir=str(cache_dir), base_model=contestant.base_model, adapter=contestant.adapter,
                     variant=contestant.variant, student_backend=settings.student_backend,
                     vllm_engine_args=settings.vllm_engine_args,
                     **({"trust_remote_code": config.finetune.trust_remote_code, "batch_size": settings.batch_size,
                         "static_cache": settings.static_cache} if contestant.kind == "student" else {}))


def _answer(contestant: Contestant, items: list[dict], config: PipelineConfig, rundir: RunDir,
            cache_dir: Path) -> tuple[list[dict], dict]:
    """One contestant's answers and cost, measured in a process of its own."""
    from core.measure import latency_summary, size_on_disk
    from eval.answer_process import answer_in_child

    answers, measured = answer_in_child(answer_job(contestant, items, config, cache_dir), rundir.eval_dir / "work")
    size = (size_on_disk(*map(Path, contestant.size_paths)) if contestant.size_paths
            else contestant.size_bytes or measured.get("size_on_disk_bytes"))
    seconds_per_answer = measured["answer_wall_s"] / max(1, len(answers))
    efficiency = {
        **{k: v for k, v in measured.items() if k not in ("answer_wall_s",)},
        "identity": contestant.identity, "size_on_disk_bytes": size,
        **({"adapter_size_bytes": size_on_disk(Path(contestant.adapter))} if contestant.adapter else {}),
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
    from backends.registry import runs_locally
    from core.measure import process_peak_memory
    from eval.efficiency import api_cost_per_1k

    endpoint = config.teacher
    local = runs_locally(endpoint)
    costs: dict = {}
    pid = teacher.server_pid  # the local server this run started for it, if any
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


@dataclasses.dataclass
class EvaluateSummary(StageSummary):
    """The student's quality against the teacher (overall and per set), every contestant's
    quality and cost, and the teacher's cost."""

    prompts: int = 0
    sets: list = dataclasses.field(default_factory=list)
    judged: int = 0
    wins: int = 0
    ties: int = 0
    losses: int = 0
    invalid: int = 0
    win_rate: float | None = None
    win_rate_ci95: list | None = None
    lc_win_rate: float | None = None
    per_set: dict = dataclasses.field(default_factory=dict)
    base_student_quality: dict | None = None
    student: dict | None = None
    base_student: dict | None = None
    teacher: dict | None = None
    contestants: dict = dataclasses.field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EvaluateStage:
    """Every contestant (student, base student, compressed variants) and the teacher answer the
    evaluation sets; the judge compares each contestant with the teacher in both orders; cost is
    measured alongside."""

    name = "evaluate"
    description = "student against teacher"
    reads = ("heldout.jsonl", "finetune/", "compress/variants.json")
    writes = ("eval/",)
    sends_requests = True
    scales_out = False  # few requests: they go through the flow's own request loop
    summary_type = EvaluateSummary

    def enabled(self, config: PipelineConfig) -> bool:
        return True

    def preflight(self, config: PipelineConfig) -> None:
        pass

    def endpoints(self, config: PipelineConfig) -> dict:
        """The teacher answers; the judge compares."""
        return {"teacher": config.teacher, **({"judge": config.judge} if config.judge else {})}

    def run(self, context: StageContext) -> EvaluateSummary:
        return evaluate(context.config, context.rundir, context.models.teacher(), context.models.judge(),
                        context.path, context.cache_dir, context.send)


def evaluate(config: PipelineConfig, rundir: RunDir, teacher: ChatBackend, judge: ChatBackend,
             path: RequestPath, cache_dir: Path, send: SendShard) -> EvaluateSummary:
    """Every contestant (student, base student, compressed variants) and the teacher answer the
    evaluation sets; the judge compares each contestant with the teacher in both orders."""
    from backends.base import ChatRequest
    from backends.registry import endpoint_identity, model_file
    from core.measure import gguf_parameter_count, latency_summary, size_on_disk
    from core.records import write_json, write_jsonl
    from eval.judge import prompt_text
    from eval.sets import load_eval_set
    from pipeline.requests import tokens_of

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
        label = contestant.label
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
    ttft_of = {o.meta["id"]: o.latency_s for o in first_token_outcomes if o.ok}
    teacher_answers = [
        {"id": o.meta["id"], "answer": (o.text or "").strip() if o.ok else "",
         "completion_tokens": o.completion_tokens, "prompt_tokens": o.prompt_tokens,
         "latency_s": o.latency_s, "ttft_s": ttft_of.get(o.meta["id"]), "ok": o.ok}
        for o in teacher_outcomes
    ]
    write_jsonl(rundir.eval_dir / "teacher_answers.jsonl", teacher_answers)
    teacher_by_id = {a["id"]: a["answer"] for a in teacher_answers if a["ok"]}
    judged_items = [item for item in items if item["id"] in teacher_by_id]
    if teacher_outcomes and not teacher_by_id:
        from pipeline.requests import stop_if_nothing_answered

        stop_if_nothing_answered("evaluate", config.teacher, rundir.journal("teacher_answers"), len(teacher_outcomes))

    # Judge both orders, per contestant; report overall and per set.
    quality, judge_outcomes, examples = {}, [], {}
    for contestant in contestants:
        label = contestant.label
        verdicts, outcomes = _judge_contestant(config, judge, path, send, judged_items, answers[label],
                                               teacher_by_id, label)
        judge_outcomes += outcomes
        write_jsonl(rundir.eval_dir / ("judgments.jsonl" if label == "student" else f"judgments_{label}.jsonl"),
                    verdicts)
        quality[label] = _quality_per_set(verdicts, judged_items, answers[label], teacher_by_id)
        examples[label] = _examples(judged_items, answers[label], teacher_by_id, verdicts)
    write_json(rundir.eval_dir / "examples.json", examples)
    if judge_outcomes and not any(o.ok for o in judge_outcomes):
        from pipeline.requests import stop_if_nothing_answered

        stop_if_nothing_answered("evaluate", config.judge_endpoint, rundir.journal("judge"), len(judge_outcomes))

    teacher_model = {"identity": endpoint_identity(config.teacher)}
    gguf = model_file(config.teacher)
    if gguf is not None:
        teacher_model.update(parameters=gguf_parameter_count(gguf), size_on_disk_bytes=size_on_disk(gguf))
    teacher_ok = [a for a in teacher_answers if a["ok"]]
    teacher_efficiency = {
        **teacher_model,
        **latency_summary([a["latency_s"] for a in teacher_ok], [a["completion_tokens"] for a in teacher_ok],
                          [a["ttft_s"] for a in teacher_ok]),
        **teacher_costs(config, teacher, teacher_ok, teacher_wall_s),
    }
    student_quality = quality["student"]
    summary = EvaluateSummary(
        prompts=len(items), sets=list(settings.sets), judged=student_quality["judged"],
        **{key: student_quality[key] for key in ("wins", "ties", "losses", "invalid", "win_rate",
                                                 "win_rate_ci95", "lc_win_rate", "per_set")},
        base_student_quality=quality.get("base_student"),
        student=efficiency["student"], base_student=efficiency.get("base_student"),
        teacher=teacher_efficiency,
        contestants={c.label: {"kind": c.kind, "quality": quality[c.label], "efficiency": efficiency[c.label]}
                     for c in contestants},
        **tokens_of(teacher_outcomes + first_token_outcomes + judge_outcomes),
        seconds=round(time.perf_counter() - started, 2),
    )
    write_json(rundir.eval_dir / "summary.json", summary.to_json())
    return summary
