"""What a run will ask of its models, and what it will cost, before it starts (`distill estimate`).

For every stage that sends requests, and every endpoint it sends to: the number of requests,
their prompt and completion tokens, the cost online and with the Batch API, and the wall time at
the endpoint's `max_in_flight`; then whether the configured budget would stop the run, and where.

Where the numbers come from:
- prompt tokens: the stage's real prompts, rendered from the config and the seed tasks (up to
  2,000 generation prompts spread over the planned ones, their mean for the rest), counted
  by the teacher's own tokenizer when it runs here (the embedded GGUF's, through llama.cpp), else
  by tiktoken when it is installed, else as characters / 4. Records that do not exist before the
  run (the ratings' pairs, held-out prompts) are stood in for by the seed tasks, and answers
  (the judge's pairs) by text of the expected answer length;
- reply length, the generation yield (records kept per request) and latency: a pilot of N real
  requests per part with `--pilot N` (sent online, paid, not journaled), else the config's
  `estimate` section (documented assumptions);
- requests: generation asks for target_records / yield requests online, at most max_requests;
  in batch mode a wave asks for everything planned at once (max_requests, or batch_wave_requests),
  so the Batch API column counts those. Ratings: one per expected record (before any dedup drop);
  evaluation: the sets' prompts (teacher answers and first-token requests) and two verdicts per
  prompt and contestant.

`estimate_run` returns plain data (written to estimate.json when a run starts, and compared
with what the run spent by `cost_against_estimate`, which the report shows); `render_estimate`
prints it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

from backends.base import ChatRequest, RequestOutcome
from backends.config import ModelEndpoint
from backends.registry import endpoint_identity, model_file, runs_locally
from core.records import iter_jsonl, read_seed_tasks
from core.rundir import RunDir
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

CHAT_OVERHEAD_TOKENS = 5  # the chat template's tokens around one user message
COUNTED_PROMPTS = 2000  # generation prompts rendered and counted per estimate (spread over all)


@contextlib.contextmanager
def _quiet_stderr():
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def token_counter(endpoint: ModelEndpoint) -> tuple[Callable[[str], int], str]:
    """(count tokens of a prompt, how): the local model's own tokenizer, tiktoken, or characters / 4."""
    gguf = model_file(endpoint) if runs_locally(endpoint) else None
    if gguf is not None:
        try:
            from llama_cpp import Llama

            with _quiet_stderr():  # llama.cpp's C code reports on fd 2 whatever `verbose` says
                vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
            return (lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))
                    + CHAT_OVERHEAD_TOKENS), f"the teacher's own tokenizer ({gguf.name}, llama.cpp)"
        except Exception as exc:  # a model file llama.cpp cannot read: fall back, and say so
            log.warning("estimate: the teacher's tokenizer could not be loaded (%s); counting characters", exc)
    try:
        import tiktoken

        try:
            encoding = tiktoken.encoding_for_model(endpoint.model)
        except KeyError:
            encoding = tiktoken.get_encoding("o200k_base")
        return (lambda text: len(encoding.encode(text, disallowed_special=())) + CHAT_OVERHEAD_TOKENS), \
            f"tiktoken ({encoding.name})"
    except ImportError:
        why = "tiktoken is not installed"
    except Exception as exc:  # tiktoken fetches its tables on first use: offline, it cannot
        why = f"tiktoken's tables could not be loaded ({type(exc).__name__})"
    return (lambda text: math.ceil(len(text) / 4) + CHAT_OVERHEAD_TOKENS), \
        f"characters / 4 (an approximation: the teacher runs elsewhere and {why})"


def prompt_of(request: ChatRequest) -> str:
    return "\n".join(str(m.get("content", "")) for m in request.messages)


def seed_records(config: PipelineConfig) -> list[dict]:
    """The seed tasks as records: stand-ins for the generated records a rating will see."""
    return [{"id": f"seed-{i}", "instruction": s["instruction"], "input": s["input"], "output": s["output"]}
            for i, s in enumerate(read_seed_tasks(config.seed_tasks))]


def _memory_send(endpoint: ModelEndpoint, backend, requests: list[ChatRequest]) -> list[RequestOutcome]:
    """A pilot's requests, sent online through the shared runner, journaled nowhere."""
    from backends.runner import run_requests
    from pipeline.requests import circuit_breaker, retry_policy

    class Memory(dict):
        def append(self, entry: dict) -> None:
            self[entry["key"]] = entry

    outcomes, _ = run_requests(backend, requests, Memory(), max_in_flight=endpoint.max_in_flight,
                               policy=retry_policy(endpoint), breaker=circuit_breaker(endpoint))
    return outcomes


def measured(outcomes: list[RequestOutcome]) -> dict:
    """What a pilot measured: mean reply tokens, mean prompt tokens, mean latency, failures."""
    ok = [o for o in outcomes if o.ok]
    if not ok:
        return {"requests": len(outcomes), "answered": 0}
    return {"requests": len(outcomes), "answered": len(ok),
            "completion_tokens": sum(o.completion_tokens for o in ok) / len(ok),
            "prompt_tokens": sum(o.prompt_tokens for o in ok) / len(ok),
            "latency_s": sum(o.latency_s for o in ok) / len(ok)}


class Assumptions:
    """Per-part reply length and latency: the pilot's where it measured them, else the config's."""

    def __init__(self, config: PipelineConfig, pilot: dict | None):
        self.settings = config.estimate
        self.pilot = pilot or {}

    def reply_tokens(self, part: str, max_tokens: int) -> tuple[float, str]:
        got = self.pilot.get(part, {})
        if got.get("answered"):
            return got["completion_tokens"], f"pilot ({got['answered']} replies)"
        return self.settings.reply_fraction * max_tokens, f"assumed: {self.settings.reply_fraction:g} x max_tokens"

    def latency_s(self, part: str, reply_tokens: float) -> float:
        got = self.pilot.get(part, {})
        if got.get("answered"):
            return got["latency_s"]
        return 0.5 + reply_tokens / self.settings.tokens_per_s


def _part(name: str, key: str, endpoint: ModelEndpoint, journal: str, requests: int, prompt_tokens_each: float,
          reply_tokens: tuple[float, str], latency_s: float, batch_requests: int | None = None) -> dict:
    """One endpoint's share of a stage: requests, tokens, cost online and with the Batch API, time."""
    # Only an OpenAI-API endpoint has a Batch API (mode: batch); the others' batch column is their online one.
    batchable = endpoint.backend == "openai"
    batch_requests = requests if batch_requests is None or not batchable else batch_requests
    online, batch = endpoint.online_prices(), endpoint.batch_prices() if batchable else endpoint.online_prices()
    prompt, completion = round(requests * prompt_tokens_each), round(requests * reply_tokens[0])
    batch_prompt, batch_completion = round(batch_requests * prompt_tokens_each), round(batch_requests * reply_tokens[0])
    part = {
        "part": name, "endpoint": key, "identity": endpoint_identity(endpoint), "journal": journal,
        "mode": endpoint.mode, "paid": endpoint.priced, "local": runs_locally(endpoint), "batchable": batchable,
        "requests": requests, "prompt_tokens": prompt, "completion_tokens": completion,
        "prompt_tokens_per_request": round(prompt_tokens_each, 1), "completion_tokens_per_request": round(reply_tokens[0], 1),
        "reply_length": reply_tokens[1],
        "usd_online": round(online.cost(prompt, completion), 4),
        "batch_requests": batch_requests,
        "usd_batch": round(batch.cost(batch_prompt, batch_completion), 4),
        "prices_online": [online.input_per_mtok, online.output_per_mtok],
        "prices_batch": [batch.input_per_mtok, batch.output_per_mtok],
        "wall_s_online": round(requests * latency_s / endpoint.max_in_flight, 1),
    }
    part["usd"] = part["usd_batch"] if endpoint.mode == "batch" else part["usd_online"]
    part["tokens"] = (batch_prompt + batch_completion) if endpoint.mode == "batch" else (prompt + completion)
    part["requests_in_mode"] = batch_requests if endpoint.mode == "batch" else requests
    return part


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def _generate(config: PipelineConfig, count, assume: Assumptions, yield_per_request: tuple[float, str]) -> dict:
    from selfinstruct.evol import answer_requests, evolution_requests
    from selfinstruct.generate import SelfInstructRun
    from selfinstruct.prompt import load_template

    settings, teacher = config.generate, config.teacher
    seeds = read_seed_tasks(config.seed_tasks)
    if settings.strategy == "evol_instruct":
        evolve = settings.evolve
        pool = seeds if evolve.pool_size is None else seeds[:evolve.pool_size]
        pool = [{"id": f"seed-{i:04d}", **seed} for i, seed in enumerate(pool)]
        evolving = evolution_requests(pool, 1, settings.seed, evolve.max_tokens, operations=evolve.operations)
        per_round = len(evolving)
        reply = assume.reply_tokens("generate", evolve.max_tokens)
        answer = assume.reply_tokens("generate", evolve.answer_max_tokens)
        answers = answer_requests([{**s, "id": s["id"]} for s in pool], evolve.answer_max_tokens)
        rounds = evolve.rounds
        return {"stage": "generate", "notes": [
            f"Evol-Instruct: {rounds} rounds of {per_round} evolving requests and up to as many answers (an upper "
            "bound: eliminated instructions are not answered)"],
            "parts": [
                _part("evolve", "teacher", teacher, "generate", rounds * per_round,
                      _mean([count(prompt_of(r)) for r in evolving]), reply, assume.latency_s("generate", reply[0])),
                _part("answer", "teacher", teacher, "generate", rounds * per_round,
                      _mean([count(prompt_of(r)) for r in answers]), answer, assume.latency_s("generate", answer[0])),
            ]}
    run = SelfInstructRun(settings, seeds, load_template(settings.reply_format))
    online = min(settings.max_requests, math.ceil(settings.target_records / max(yield_per_request[0], 1e-9)))
    batch = settings.max_requests if teacher.batch_wave_requests is None else min(
        settings.max_requests, max(online, teacher.batch_wave_requests))
    # Up to COUNTED_PROMPTS of the planned prompts, spread over them, are rendered and counted; their
    # mean stands for the rest (a local tokenizer takes milliseconds a prompt).
    stride = max(1, math.ceil(batch / COUNTED_PROMPTS))
    tokens = [count(prompt_of(run.request(i))) for i in range(0, batch, stride)]
    reply = assume.reply_tokens("generate", settings.max_tokens)
    notes = [f"yield {yield_per_request[0]:.3g} records per request ({yield_per_request[1]}): "
             f"{online:,} requests for {settings.target_records:,} records (at most max_requests {settings.max_requests:,})"]
    if teacher.backend == "openai":
        notes.append(f"Batch API: a wave asks for {batch:,} requests at once (the target is checked between waves"
                      + ("; set teacher.batch_wave_requests to about the online number to stop near the target)"
                         if batch > online else ")"))
    part = _part("tasks", "teacher", teacher, "generate", online, _mean(tokens), reply,
                 assume.latency_s("generate", reply[0]), batch_requests=batch)
    return {"stage": "generate", "parts": [part], "notes": notes, "expected_records": min(
        settings.target_records, round(online * yield_per_request[0]))}


def _filter(config: PipelineConfig, count, assume: Assumptions, records_in: int, stand_ins: list[dict]) -> dict | None:
    import prompts
    from filters.judge import JudgeFilter
    from filters.rate import RATING_TEMPLATE, rating_requests

    settings = config.filter
    if not JudgeFilter().enabled(settings):
        return None
    rated = records_in
    notes = [f"one rating per generated record ({records_in:,} expected; dedup drops would lower it)"]
    if settings.ifd.enabled:  # IFD before the judge: only what it keeps is rated
        rated = settings.ifd.top_k if settings.ifd.top_k else round(records_in * (settings.ifd.keep_fraction or 1.0))
        rated = min(rated, records_in)
        notes.append(f"IFD before the judge keeps {rated:,}")
    requests = rating_requests(stand_ins, prompts.load_template(RATING_TEMPLATE), settings)
    reply = assume.reply_tokens("rate", settings.max_tokens)
    key = "judge" if config.judge else "teacher"
    return {"stage": "filter", "notes": notes, "parts": [
        _part("ratings", key, config.judge_endpoint, "rate", rated, _mean([count(prompt_of(r)) for r in requests]),
              reply, assume.latency_s("rate", reply[0]))]}


def eval_prompts(config: PipelineConfig, stand_ins: list[dict]) -> list[dict]:
    """The evaluation prompts, with the seed tasks standing in for the held-out records."""
    from eval.sets import HELDOUT, load_eval_set

    items = []
    for name in config.evaluate.sets:
        if name == HELDOUT:
            rows = [{**stand_ins[i % len(stand_ins)], "id": f"heldout-{i:04d}", "set": HELDOUT}
                    for i in range(config.finetune.heldout_records)]
        else:
            rows = load_eval_set(name, Path("/nonexistent"))
        items += rows[:config.evaluate.max_prompts]
    return items


def _evaluate(config: PipelineConfig, count, assume: Assumptions, stand_ins: list[dict]) -> dict:
    import prompts
    from eval.judge import PAIRWISE_TEMPLATE, prompt_text

    settings = config.evaluate
    items = eval_prompts(config, stand_ins)
    prompt_tokens = _mean([count(prompt_text(item)) for item in items])
    answer = assume.reply_tokens("teacher_answers", settings.max_new_tokens)
    contestants = 1 + int(settings.compare_base) + (len(config.compress.variants) if config.compress.enabled else 0)
    template = prompts.load_template(PAIRWISE_TEMPLATE)
    answer_text = "word " * round(answer[0] * 0.75)  # about four characters a token
    verdict_prompt = _mean([count(template.format(instruction=prompt_text(item), answer_a=answer_text,
                                                  answer_b=answer_text)) for item in items])
    verdict = assume.reply_tokens("judge", settings.judge_max_tokens)
    judge_key = "judge" if config.judge else "teacher"
    return {"stage": "evaluate", "notes": [
        f"{len(items)} prompts; {contestants} contestant(s) judged against the teacher in both orders"], "parts": [
        _part("teacher answers", "teacher", config.teacher, "teacher_answers", len(items), prompt_tokens, answer,
              assume.latency_s("teacher_answers", answer[0])),
        _part("teacher first token", "teacher", config.teacher, "teacher_first_token", len(items), prompt_tokens,
              (1.0, "one token"), assume.latency_s("teacher_answers", 1.0)),
        _part("verdicts", judge_key, config.judge_endpoint, "judge", 2 * contestants * len(items), verdict_prompt,
              verdict, assume.latency_s("judge", verdict[0])),
    ]}


def run_pilot(config: PipelineConfig, n: int, stand_ins: list[dict]) -> dict:
    """N real requests for each part (generation, rating, teacher answers, verdicts), sent online and
    journaled nowhere: what each reply is long, how long it takes, how many records a generation
    request yields."""
    import prompts
    from backends.registry import open_chat_backend
    from eval.judge import PAIRWISE_TEMPLATE, pairwise_requests, prompt_text
    from filters.rate import RATING_TEMPLATE, rating_requests
    from selfinstruct.generate import SelfInstructRun
    from selfinstruct.prompt import load_template

    started = time.perf_counter()
    result: dict = {"n": n}
    online_teacher = config.teacher.model_copy(update={"mode": "online"})
    online_judge = config.judge_endpoint.model_copy(update={"mode": "online"})
    with open_chat_backend(online_teacher) as teacher:
        run = SelfInstructRun(config.generate, read_seed_tasks(config.seed_tasks), load_template(config.generate.reply_format))
        outcomes = _memory_send(online_teacher, teacher, [run.request(i) for i in range(n)])
        run.absorb(outcomes)
        result["generate"] = {**measured(outcomes), "records_kept": len(run.kept)}
        records = (run.kept + stand_ins)[:n]
        items = eval_prompts(config, stand_ins)[:n]
        answers = _memory_send(online_teacher, teacher, [
            ChatRequest(key=f"answer-{i}", messages=[{"role": "user", "content": prompt_text(item)}],
                        max_tokens=config.evaluate.max_new_tokens) for i, item in enumerate(items)])
        result["teacher_answers"] = measured(answers)
        texts = {item["id"]: (o.text or "") for item, o in zip(items, answers)}

        def judge_parts(judge) -> None:
            ratings = _memory_send(online_judge, judge, rating_requests(
                records, prompts.load_template(RATING_TEMPLATE), config.filter))
            result["rate"] = measured(ratings)
            verdicts = _memory_send(online_judge, judge, pairwise_requests(
                items[: max(1, n // 2)], texts, texts, prompts.load_template(PAIRWISE_TEMPLATE),
                config.evaluate.judge_max_tokens))
            result["judge"] = measured(verdicts)

        if config.judge is None:
            judge_parts(teacher)
        else:
            with open_chat_backend(online_judge) as judge:
                judge_parts(judge)
    spent = 0.0
    for part, endpoint in (("generate", online_teacher), ("teacher_answers", online_teacher), ("rate", online_judge),
                           ("judge", online_judge)):
        got = result.get(part, {})
        if got.get("answered"):
            spent += endpoint.online_prices().cost(got["prompt_tokens"] * got["answered"],
                                                   got["completion_tokens"] * got["answered"])
    result.update(seconds=round(time.perf_counter() - started, 1), usd=round(spent, 4))
    return result


def _budget(config: PipelineConfig, stages: list[dict]) -> dict:
    """Whether the budget would stop the run early, and where: the parts in pipeline order, each
    charged in its endpoint's mode."""
    budget = config.budget
    result = {"max_cost_usd": budget.max_cost_usd, "max_tokens": budget.max_tokens, "stops": None}
    usd = tokens = 0
    for stage in stages:
        for part in stage["parts"]:
            requests = part["requests_in_mode"]
            per_usd = part["usd"] / requests if requests else 0.0
            per_tokens = part["tokens"] / requests if requests else 0.0
            room = []
            if budget.max_cost_usd is not None and per_usd:
                room.append((budget.max_cost_usd - usd) / per_usd)
            if budget.max_tokens is not None and per_tokens:
                room.append((budget.max_tokens - tokens) / per_tokens)
            if room and min(room) < requests:
                after = max(0, math.floor(min(room)))
                result["stops"] = {"stage": stage["stage"], "part": part["part"], "after_requests": after,
                                   "of_requests": requests}
                result["message"] = (f"the budget would stop the run in {stage['stage']} ({part['part']}) after about "
                                     f"{after:,} of {requests:,} requests")
                return result
            usd += part["usd"]
            tokens += part["tokens"]
    if budget.max_cost_usd is None and budget.max_tokens is None:
        result["message"] = "no budget is set"
    else:
        limits = [f"{budget.max_cost_usd:g} USD" if budget.max_cost_usd is not None else None,
                  f"{budget.max_tokens:,} tokens" if budget.max_tokens is not None else None]
        result["message"] = (f"the budget ({', '.join(x for x in limits if x)}) covers the whole run "
                             f"(estimated {_usd(round(usd, 4))} USD, {round(tokens):,} tokens)")
    return result


def estimate_run(config: PipelineConfig, pilot: int = 0) -> dict:
    """The estimate of a run of `config` (see the module's docstring); `pilot` > 0 sends that many
    real requests per part first."""
    count, counted_by = token_counter(config.teacher)
    stand_ins = seed_records(config)
    pilot_result = run_pilot(config, pilot, stand_ins) if pilot > 0 else None
    assume = Assumptions(config, pilot_result)
    got = (pilot_result or {}).get("generate", {})
    if got.get("requests"):
        yield_per_request = (max(got["records_kept"], 0.01) / got["requests"],
                             f"pilot: {got['records_kept']} records from {got['requests']} requests")
    else:
        yield_per_request = (config.estimate.records_per_request, "assumed: estimate.records_per_request")
    generate = _generate(config, count, assume, yield_per_request)
    records = generate.get("expected_records", config.generate.target_records)
    stages = [stage for stage in (generate, _filter(config, count, assume, records, stand_ins),
                                  _evaluate(config, count, assume, stand_ins)) if stage is not None]
    parts = [part for stage in stages for part in stage["parts"]]
    total = {key: round(sum(part[key] for part in parts), 4)
             for key in ("requests", "prompt_tokens", "completion_tokens", "usd_online", "usd_batch", "usd")}
    return {"config": config.name, "prompt_tokens_counted_by": counted_by, "pilot": pilot_result,
            "assumptions": config.estimate.model_dump(), "stages": stages, "total": total,
            "budget": _budget(config, stages), "made_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _usd(value: float) -> str:
    return f"{value:,.2f}" if value >= 0.01 or value == 0 else f"{value:.4f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_estimate(estimate: dict) -> str:
    """The estimate as a table for the terminal."""
    lines = [f"Estimate for {estimate['config']}",
             f"  prompt tokens counted by: {estimate['prompt_tokens_counted_by']}"]
    if estimate.get("pilot"):
        pilot = estimate["pilot"]
        lines.append(f"  pilot: {pilot['n']} requests per part, {pilot['seconds']} s, {_usd(pilot['usd'])} USD")
    else:
        lines.append("  reply lengths, yield and latency: assumed (the config's `estimate` section; "
                     "measure them with --pilot N)")
    header = ("stage", "part", "endpoint", "mode", "requests", "prompt tok", "reply tok", "USD online",
              "USD batch", "time online")
    rows = [header]
    for stage in estimate["stages"]:
        for part in stage["parts"]:
            batch = _usd(part["usd_batch"]) if part.get("batchable", True) else "n/a"
            if part["batch_requests"] != part["requests"]:
                batch += f" ({part['batch_requests']:,} req)"
            rows.append((stage["stage"], part["part"], f"{part['endpoint']}{' (local)' if part['local'] else ''}",
                         part["mode"], f"{part['requests']:,}", f"{part['prompt_tokens']:,}",
                         f"{part['completion_tokens']:,}", _usd(part["usd_online"]), batch,
                         _duration(part["wall_s_online"])))
    total = estimate["total"]
    rows.append(("total", "", "", "", f"{total['requests']:,.0f}", f"{total['prompt_tokens']:,.0f}",
                 f"{total['completion_tokens']:,.0f}", _usd(total["usd_online"]), _usd(total["usd_batch"]), ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for number, row in enumerate(rows):
        lines.append("  " + "  ".join(str(cell).ljust(width) if i < 4 else str(cell).rjust(width)
                                      for i, (cell, width) in enumerate(zip(row, widths))))
        if number == 0:
            lines.append("  " + "  ".join("-" * width for width in widths))
    lines.append(f"  in the configured modes: {_usd(total['usd'])} USD (Batch API: within 24 h a wave; online "
                 "times are at each endpoint's max_in_flight)")
    for stage in estimate["stages"]:
        for note in stage.get("notes", []):
            lines.append(f"  {stage['stage']}: {note}")
    lines.append(f"  budget: {estimate['budget']['message']}")
    return "\n".join(lines)


def write_run_estimate(config: PipelineConfig, rundir: RunDir) -> None:
    """estimate.json in the run directory, once, when a run starts (no pilot, no network)."""
    from core.records import write_json

    target = rundir.root / "estimate.json"
    if target.is_file():
        return
    try:
        write_json(target, estimate_run(config))
    except Exception as exc:  # the estimate informs; it must never stop a run
        log.warning("estimate.json not written: %s: %s", type(exc).__name__, exc)


def journal_spend(rundir: RunDir, journal: str) -> dict:
    """Requests answered, their tokens, and requests failed, as a run's journal holds them."""
    path = rundir.journal(journal)
    spend = {"requests": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}
    if not path.is_file():
        return spend
    last: dict[str, dict] = {}
    for _, entry in iter_jsonl(path):
        if isinstance(entry, dict) and "key" in entry:
            last[entry["key"]] = entry
    for entry in last.values():
        if entry.get("ok"):
            spend["requests"] += 1
            spend["prompt_tokens"] += entry.get("prompt_tokens", 0) or 0
            spend["completion_tokens"] += entry.get("completion_tokens", 0) or 0
        else:
            spend["failed"] += 1
    return spend


def cost_against_estimate(rundir: RunDir) -> dict | None:
    """What the run spent, part by part (from its journals, at the prices of its estimate.json), next
    to what was estimated; and what the same tokens would have cost online. None without an estimate."""
    path = rundir.root / "estimate.json"
    if not path.is_file():
        return None
    estimate = json.loads(path.read_text(encoding="utf-8"))
    rows, spent, spent_online = [], 0.0, 0.0
    seen: set[str] = set()
    for stage in estimate["stages"]:
        for part in stage["parts"]:
            journal = part["journal"]
            actual = journal_spend(rundir, journal) if journal not in seen else None
            seen.add(journal)
            row = {"stage": stage["stage"], "part": part["part"], "endpoint": part["endpoint"], "mode": part["mode"],
                   "estimate": {key: part[key] for key in ("requests", "prompt_tokens", "completion_tokens", "usd")}}
            if part["mode"] == "batch":
                row["estimate"].update(requests=part["batch_requests"], usd=part["usd_batch"])
            if actual is not None:
                prices = part["prices_batch"] if part["mode"] == "batch" else part["prices_online"]
                usd = (actual["prompt_tokens"] * prices[0] + actual["completion_tokens"] * prices[1]) / 1e6
                online = (actual["prompt_tokens"] * part["prices_online"][0]
                          + actual["completion_tokens"] * part["prices_online"][1]) / 1e6
                row["actual"] = {**actual, "usd": round(usd, 6), "usd_online": round(online, 6)}
                spent += usd
                spent_online += online
            rows.append(row)
    return {"parts": rows, "usd": round(spent, 6), "usd_if_online": round(spent_online, 6),
            "estimated_usd": estimate["total"]["usd"], "prompt_tokens_counted_by": estimate["prompt_tokens_counted_by"]}


def cost_markdown(cost: dict | None) -> list[str]:
    """The report's section: the estimate against what the run spent, and what it would have cost online."""
    if not cost:
        return []
    lines = ["", "## Cost: estimate against actual", "",
             f"This run cost **{_usd(cost['usd'])} USD** at its endpoints' prices in their modes; the same tokens "
             f"online would have cost {_usd(cost['usd_if_online'])} USD. Estimated before the run: "
             f"{_usd(cost['estimated_usd'])} USD (`estimate.json`; prompt tokens counted by "
             f"{cost['prompt_tokens_counted_by']}).", "",
             "| stage | part | endpoint | mode | requests (est. / actual) | prompt tokens (est. / actual) "
             "| completion tokens (est. / actual) | USD (est. / actual) | USD online (actual) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in cost["parts"]:
        est, act = row["estimate"], row.get("actual")
        pair = (lambda key, fmt=lambda v: f"{v:,}": f"{fmt(est[key])} / {fmt(act[key]) if act else 'in the row above'}")
        lines.append(f"| {row['stage']} | {row['part']} | {row['endpoint']} | {row['mode']} | {pair('requests')} | "
                     f"{pair('prompt_tokens')} | {pair('completion_tokens')} | {pair('usd', _usd)} | "
                     f"{_usd(act['usd_online']) if act else ''} |")
    return lines
