"""The evaluate stage: the teacher and every contestant (the fine-tuned student, the base
student, and each compressed variant of the compress stage) answer the evaluation sets; the
judge compares each contestant with the teacher in both orders (and a second judge, when one
is set, for its agreement); how far the judge can be trusted is measured from its own verdicts;
each contestant's fidelity to the teacher is measured without a judge; cost is measured
alongside, on this machine, in this run.

A run can be evaluated again with other evaluation settings (sets, judges, prompts,
contestants): the run's first evaluation lives in eval/ (its summary in stages/evaluate.json),
each other one in eval/<name>/ (its summary in eval/<name>/summary.json, its request journals
under work/ with its name), so none overwrites another (`evaluation_target`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import StageInputError
from pipeline.stage import StageContext, StageSummary

if TYPE_CHECKING:
    from backends.base import ChatBackend
    from backends.config import ModelEndpoint
    from core.rundir import RunDir
    from eval.contestants import AnswerJob, Contestant
    from pipeline.config import PipelineConfig
    from pipeline.models import ModelSessions
    from pipeline.requests import RequestPath, SendShard

log = logging.getLogger(__name__)

EXAMPLES_SHOWN = 3


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Where one evaluation of a run lives: the run's first (`name` None) in eval/, with its
    summary in stages/evaluate.json; any other in eval/<name>/ with its summary there."""

    name: str | None
    folder: Path
    summary_file: Path
    settings_hash: str
    settings: dict

    def journal(self, name: str) -> str:
        """A request journal's name, this evaluation's own (so no reply of another is reused)."""
        return name if self.name is None else f"eval_{self.name}_{name}"

    def to_json(self, rundir: RunDir) -> dict:
        return {"name": self.name, "folder": str(self.folder.relative_to(rundir.root)),
                "settings_hash": self.settings_hash, "settings": self.settings}


def evaluation_settings(config: PipelineConfig) -> dict:
    """What defines an evaluation: the evaluate settings (but its name) and the judge it uses."""
    settings = config.evaluate.model_dump(mode="json", exclude={"name"})
    if config.evaluate.judge is None:
        settings["judge"] = config.judge_endpoint.model_dump(mode="json")
    return settings


def evaluation_target(config: PipelineConfig, rundir: RunDir) -> Evaluation:
    """Where this config's evaluation goes. `evaluate.name` names it; without a name the run's
    first evaluation, and any later one with the same settings, is the default one (eval/); one
    with other settings is named from its sets and a hash of its settings. A named folder that
    holds an evaluation with other settings is refused."""
    settings = evaluation_settings(config)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:10]
    name = config.evaluate.name
    if name is None:
        default = rundir.stage_summary("evaluate")
        earlier = (default or {}).get("evaluation") or {}
        # A run evaluated before evaluations had a settings hash: the same sets and the run's own
        # judge count as the same evaluation (so a rerun of the same config still skips it).
        same = (earlier.get("settings_hash") == digest if earlier.get("settings_hash")
                else default is not None and default.get("sets") == list(config.evaluate.sets)
                and config.evaluate.judge is None and config.evaluate.second_judge is None)
        if default is None or same:
            return Evaluation(None, rundir.eval_dir, rundir.stages / "evaluate.json", digest, settings)
        stems = "-".join(re.sub(r"[^\w.-]+", "_", Path(s).stem) for s in config.evaluate.sets)[:40]
        name = f"{stems}-{digest[:8]}"
    folder = rundir.eval_dir / name
    summary = folder / "summary.json"
    if summary.is_file():
        earlier = json.loads(summary.read_text(encoding="utf-8")).get("evaluation") or {}
        if earlier.get("settings_hash") not in (None, digest):
            raise StageInputError(f"{folder} holds an evaluation with other settings; set evaluate.name to "
                                  "another name to keep both")
    return Evaluation(name, folder, summary, digest, settings)


def other_evaluations(rundir: RunDir) -> list[Path]:
    """The summary files of the run's evaluations other than the first (eval/<name>/summary.json), by name."""
    if not rundir.eval_dir.is_dir():
        return []
    return sorted(path for path in rundir.eval_dir.glob("*/summary.json") if path.parent.name != "work")


def _judge_contestant(config: PipelineConfig, judge: ChatBackend, endpoint: ModelEndpoint, path: RequestPath,
                      send: SendShard, journal: str, items: list[dict], answers: dict[str, str],
                      teacher: dict[str, str], prefix: str) -> tuple[list[dict], list[dict]]:
    """Pairwise judgments (both orders) of one contestant's answers against the teacher's."""
    import prompts
    from eval.judge import PAIRWISE_TEMPLATE, judgments, pairwise_requests

    requests = pairwise_requests(items, answers, teacher, prompts.load_template(PAIRWISE_TEMPLATE),
                                 config.evaluate.judge_max_tokens, key_prefix=prefix)
    outcomes = send(path, judge, endpoint, journal, requests)
    return judgments(items, outcomes, key_prefix=prefix), outcomes


def _quality(verdicts: list[dict], answers: dict[str, str], teacher: dict[str, str]) -> dict:
    """Win / tie / loss, win rate with its bootstrap interval, and the length-controlled win rate
    (AlpacaEval 2's, eval.length_control, on the answers' lengths in characters)."""
    from eval.length_control import length_controlled_win_rate
    from eval.stats import win_rate_ci

    outcomes = [v["outcome"] for v in verdicts]
    rate = win_rate_ci(outcomes)
    controlled = length_controlled_win_rate(outcomes, [len(answers[v["id"]]) for v in verdicts],
                                            [len(teacher[v["id"]]) for v in verdicts])
    return {"wins": rate.wins, "ties": rate.ties, "losses": rate.losses, "invalid": rate.invalid,
            "win_rate": rate.win_rate, "win_rate_ci95": [rate.ci_low, rate.ci_high],
            "lc_win_rate": controlled.win_rate, "lc_standard_error": controlled.standard_error,
            "lc_note": controlled.note, "judged": len(verdicts)}


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


def answer_job(contestant: Contestant, items: list[dict], config: PipelineConfig, cache_dir: Path,
               teacher_answers: dict | None = None) -> AnswerJob:
    """The job that has `contestant` answer `items` with the run's evaluation settings (and then
    score `teacher_answers`, id -> {answer, finished}, for its fidelity)."""
    from eval.contestants import AnswerJob

    settings = config.evaluate
    return AnswerJob(label=contestant.label, kind=contestant.kind, items=items,
                     prompt_format=config.finetune.prompt_format, max_new_tokens=settings.max_new_tokens,
                     cache_dir=str(cache_dir), base_model=contestant.base_model, adapter=contestant.adapter,
                     variant=({**contestant.variant, "server_threads": config.teacher.threads}
                              if contestant.variant else contestant.variant),
                     student_backend=settings.student_backend,
                     vllm_engine_args=settings.vllm_engine_args, teacher_answers=teacher_answers,
                     **({"trust_remote_code": config.finetune.trust_remote_code, "batch_size": settings.batch_size,
                         "static_cache": settings.static_cache, "cache_bucket": settings.static_cache_bucket,
                         "prefill_rows": settings.static_cache_prefill_rows,
                         "continuous": settings.continuous_batching}
                        if contestant.kind == "student" else {}))


def _answer(contestant: Contestant, items: list[dict], config: PipelineConfig, work_dir: Path, cache_dir: Path,
            teacher_answers: dict) -> tuple[list[dict], dict]:
    """One contestant's answers and cost, measured in a process of its own (which then scores the
    teacher's answers: the efficiency's `fidelity`)."""
    from core.measure import latency_summary, size_on_disk
    from eval.answer_process import answer_in_child

    answers, measured = answer_in_child(answer_job(contestant, items, config, cache_dir, teacher_answers), work_dir)
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
    quality, fidelity to the teacher and cost, the teacher's cost, how far the judge can be
    trusted, and which evaluation of the run this is."""

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
    lc_standard_error: float | None = None
    per_set: dict = dataclasses.field(default_factory=dict)
    base_student_quality: dict | None = None
    student: dict | None = None
    base_student: dict | None = None
    teacher: dict | None = None
    contestants: dict = dataclasses.field(default_factory=dict)
    judge_diagnostics: dict | None = None
    # Training records (train.jsonl) that copy a prompt of this evaluation, per set (the filter
    # stage's decontamination should leave none for the sets it checked).
    training_overlap: dict | None = None
    evaluation: dict | None = None  # name, folder, settings hash and settings of this evaluation
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EvaluateStage:
    """The teacher and every contestant (student, base student, compressed variants) answer the
    evaluation sets; the judge compares each contestant with the teacher in both orders; fidelity
    and cost are measured alongside. Each evaluation of a run has a folder of its own."""

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

    def summary_file(self, config: PipelineConfig, rundir: RunDir) -> Path:
        """stages/evaluate.json for the run's first evaluation, eval/<name>/summary.json for another."""
        return evaluation_target(config, rundir).summary_file

    def endpoints(self, config: PipelineConfig) -> dict:
        """The teacher answers; the judge (evaluation's own, else the run's) and the second judge compare."""
        settings = config.evaluate
        judge = settings.judge or config.judge
        return {"teacher": config.teacher, **({"judge": judge} if judge else {}),
                **({"second_judge": settings.second_judge} if settings.second_judge else {})}

    def run(self, context: StageContext) -> EvaluateSummary:
        return evaluate(context.config, context.rundir, context.models, context.path, context.cache_dir,
                        context.send)


def _teacher_answers(config: PipelineConfig, teacher: ChatBackend, path: RequestPath, send: SendShard,
                     target: Evaluation, items: list[dict]) -> tuple[list[dict], float, list]:
    """The teacher's answers to every prompt, then one-token requests of the same prompts, whose
    latency is its time to the first token; (answers, answering wall time, every outcome)."""
    from backends.base import ChatRequest
    from eval.judge import prompt_text

    requests = [ChatRequest(key=f"answer-{item['id']}", messages=[{"role": "user", "content": prompt_text(item)}],
                            max_tokens=config.evaluate.max_new_tokens, temperature=0.0, meta={"id": item["id"]})
                for item in items]
    started = time.perf_counter()
    outcomes = send(path, teacher, config.teacher, target.journal("teacher_answers"), requests)
    wall_s = time.perf_counter() - started
    first_tokens = send(path, teacher, config.teacher, target.journal("teacher_first_token"), [
        ChatRequest(key=f"first-token-{r.meta['id']}", messages=r.messages, max_tokens=1, temperature=0.0, meta=r.meta)
        for r in requests])
    ttft_of = {o.meta["id"]: o.latency_s for o in first_tokens if o.ok}
    answers = [{"id": o.meta["id"], "answer": (o.text or "").strip() if o.ok else "",
                "completion_tokens": o.completion_tokens, "prompt_tokens": o.prompt_tokens, "latency_s": o.latency_s,
                "ttft_s": ttft_of.get(o.meta["id"]), "finish_reason": o.finish_reason, "ok": o.ok}
               for o in outcomes]
    return answers, wall_s, outcomes + first_tokens


def _training_overlap(rundir: RunDir, items: list[dict]) -> dict | None:
    """How many training records (train.jsonl) copy a prompt of this evaluation, per set."""
    from core.records import iter_jsonl
    from similarity.decontaminate import Decontaminator

    if not rundir.train.is_file():
        return None
    checker = Decontaminator(items)
    overlap = dict.fromkeys(dict.fromkeys(item["set"] for item in items), 0)
    for _, record in iter_jsonl(rundir.train):
        match = checker.check(record.get("instruction", ""), record.get("input", "") or "")
        if match is not None:
            overlap[match.set] += 1
    return overlap


def evaluate(config: PipelineConfig, rundir: RunDir, models: ModelSessions, path: RequestPath, cache_dir: Path,
             send: SendShard) -> EvaluateSummary:
    """The teacher and every contestant (student, base student, compressed variants) answer the
    evaluation sets; the judge (and the second judge) compares each contestant with the teacher
    in both orders; fidelity, judge diagnostics and cost alongside; written to this evaluation's folder."""
    from backends.registry import endpoint_identity, model_file
    from core.measure import gguf_parameter_count, latency_summary, size_on_disk
    from core.records import write_json, write_jsonl
    from eval.fidelity import fidelity_row, similarity_to_teacher
    from eval.judge_diagnostics import judge_diagnostics
    from eval.sets import load_eval_set
    from pipeline.requests import tokens_of

    started = time.perf_counter()
    settings = config.evaluate
    finetuned = rundir.stage_summary("finetune")
    if finetuned is None:
        raise StageInputError(f"{rundir.root}: evaluate needs a finished finetune stage (stages/finetune.json)")
    target = evaluation_target(config, rundir)
    out = target.folder
    items = []
    for name in settings.sets:
        items += load_eval_set(name, rundir.heldout)[: settings.max_prompts]
    if not items:
        raise StageInputError(f"{rundir.root}: no evaluation prompts; set finetune.heldout_records above 0 "
                              "or name another set in evaluate.sets")
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "prompts.jsonl", items)
    log.info("evaluate: %s in %s", f"evaluation {target.name!r}" if target.name else "the run's evaluation", out)

    # Teacher first: its answers are what every contestant's fidelity is measured against.
    teacher = models.teacher()
    teacher_answers, teacher_wall_s, teacher_outcomes = _teacher_answers(config, teacher, path, send, target, items)
    write_jsonl(out / "teacher_answers.jsonl", teacher_answers)
    teacher_by_id = {a["id"]: a["answer"] for a in teacher_answers if a["ok"]}
    to_score = {a["id"]: {"answer": a["answer"], "finished": a["finish_reason"] == "stop"}
                for a in teacher_answers if a["ok"]}
    judged_items = [item for item in items if item["id"] in teacher_by_id]
    if teacher_outcomes and not teacher_by_id:
        from pipeline.requests import stop_if_nothing_answered

        stop_if_nothing_answered("evaluate", config.teacher, rundir.journal(target.journal("teacher_answers")),
                                 len(teacher_outcomes))

    # Contestants: each answers in a process of its own, so its peak memory is its own; the same
    # process then scores the teacher's answers (its teacher-forced NLL).
    contestants = evaluation_contestants(config, rundir, finetuned)
    answers, efficiency, fidelity = {}, {}, {}
    for contestant in contestants:
        label = contestant.label
        log.info("evaluate: %s answers %d prompts", label, len(items))
        produced, efficiency[label] = _answer(contestant, items, config, out / "work", cache_dir, to_score)
        write_jsonl(out / f"{label}_answers.jsonl", produced)
        answers[label] = {a["id"]: a["answer"] for a in produced}
        fidelity[label] = fidelity_row(efficiency[label].pop("fidelity", None),
                                       similarity_to_teacher(answers[label], teacher_by_id))

    # Judge both orders, per contestant (and again with the second judge); report overall and per set.
    judges = [("judge", settings.judge or config.judge_endpoint)]
    if settings.second_judge is not None:
        judges.append(("second_judge", settings.second_judge))
    verdicts: dict[str, dict[str, list[dict]]] = {role: {} for role, _ in judges}
    judge_outcomes: list = []
    for role, endpoint in judges:
        backend = models.endpoint(endpoint, f"evaluate_{role}")
        for contestant in contestants:
            label = contestant.label
            prefix = ("judge" if label == "student" else f"judge-{label}") if role == "judge" else f"{role}-{label}"
            verdicts[role][label], outcomes = _judge_contestant(config, backend, endpoint, path, send,
                                                                target.journal(role), judged_items, answers[label],
                                                                teacher_by_id, prefix)
            judge_outcomes += outcomes
            if outcomes and not any(o.ok for o in outcomes):
                from pipeline.requests import stop_if_nothing_answered

                stop_if_nothing_answered("evaluate", endpoint, rundir.journal(target.journal(role)), len(outcomes))
            stem = "judgments" if role == "judge" else "second_judgments"
            write_jsonl(out / (f"{stem}.jsonl" if label == "student" else f"{stem}_{label}.jsonl"),
                        verdicts[role][label])
    quality = {c.label: _quality_per_set(verdicts["judge"][c.label], judged_items, answers[c.label], teacher_by_id)
               for c in contestants}
    write_json(out / "examples.json", {c.label: _examples(judged_items, answers[c.label], teacher_by_id,
                                                          verdicts["judge"][c.label]) for c in contestants})
    diagnostics = judge_diagnostics(verdicts["judge"], answers, teacher_by_id, verdicts.get("second_judge"),
                                    endpoint_identity(settings.second_judge) if settings.second_judge else None)
    diagnostics["judge"] = endpoint_identity(judges[0][1])

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
        **{key: student_quality[key] for key in ("wins", "ties", "losses", "invalid", "win_rate", "win_rate_ci95",
                                                 "lc_win_rate", "lc_standard_error", "per_set")},
        base_student_quality=quality.get("base_student"),
        student=efficiency["student"], base_student=efficiency.get("base_student"),
        teacher=teacher_efficiency,
        contestants={c.label: {"kind": c.kind, "quality": quality[c.label], "fidelity": fidelity[c.label],
                               "efficiency": efficiency[c.label]} for c in contestants},
        judge_diagnostics=diagnostics, training_overlap=_training_overlap(rundir, items),
        evaluation=target.to_json(rundir),
        **tokens_of(teacher_outcomes + judge_outcomes),
        seconds=round(time.perf_counter() - started, 2),
    )
    write_json(out / "summary.json", summary.to_json())
    return summary
