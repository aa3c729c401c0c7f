"""The generate stage: self-instruct, Stanford Alpaca's procedure.

Each request shows a few seed tasks and asks the teacher for more; the reply is parsed,
Alpaca's heuristic filters drop unsuitable tasks, and a task whose instruction is a
ROUGE-L near-duplicate of a seed or of an earlier kept instruction is dropped. Requests are
sent in shards; everything is decided in request order, from the journal of replies, so a
resumed run keeps exactly what an uninterrupted one would.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from backends.base import ChatRequest, RequestOutcome
from selfinstruct.alpaca_filters import heuristic_rejection
from selfinstruct.config import GenerateConfig
from selfinstruct.parse import parse_alpaca_tasks, parse_generated_tasks, parse_json_tasks
from selfinstruct.prompt import (
    TASKS_SCHEMA,
    render_generation_prompt,
    render_generation_prompt_json,
    sample_examples,
)
from similarity.rouge import RougeLDeduplicator

if TYPE_CHECKING:
    from selfinstruct.strategy import GenerationJob, GenerationResult

log = logging.getLogger(__name__)

# Takes the shards to send (pulled lazily) and yields each one's outcomes in shard order.
SendShards = Callable[[Iterable[list[ChatRequest]]], Iterable[list[RequestOutcome]]]


class SelfInstructRun:
    """State of one generation run: what is kept, what was dropped and why, what to ask next."""

    def __init__(self, settings: GenerateConfig, seeds: list[dict], template: str, budget_exhausted=lambda: False,
                 domain_similarity: Callable[[str], float] | None = None, rejected=None):
        self.settings = settings
        self.seeds = seeds
        self.template = template
        self.budget_exhausted = budget_exhausted
        self.domain_similarity = domain_similarity
        self.dedup = RougeLDeduplicator(settings.rouge_threshold)
        for seed in seeds:
            self.dedup.add_seed(seed["instruction"])
        self.kept: list[dict] = []
        # Any list-like sink: a plain list, or a RejectionSpool that keeps them on disk.
        self.rejected = [] if rejected is None else rejected
        self.counts: Counter = Counter()
        self.next_request = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.stop_reason: str | None = None

    def request(self, index: int) -> ChatRequest:
        """Generation request number `index`: the same prompt on every rerun."""
        examples = sample_examples(self.seeds, self.settings.seeds_per_prompt, self.settings.seed, index)
        as_json = self.settings.reply_format == "json"
        render = render_generation_prompt_json if as_json else render_generation_prompt
        prompt = render(self.template, examples, self.settings.tasks_per_request, self.settings.domain)
        return ChatRequest(
            key=f"gen-{index:06d}",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=self.settings.max_tokens,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            seed=self.settings.seed * 1_000_003 + index,
            json_schema=TASKS_SCHEMA if as_json else None,
            meta={"request": index, "next_index": len(examples) + 1},
        )

    def _reason_to_stop(self, next_request: int) -> str | None:
        if len(self.kept) >= self.settings.target_records:
            return "target_reached"
        if next_request >= self.settings.max_requests:
            return "max_requests"
        if self.budget_exhausted():
            return "budget"
        return None

    @property
    def done(self) -> bool:
        """True once every request sent so far is absorbed and no more should be sent."""
        if self.stop_reason is None:
            self.stop_reason = self._reason_to_stop(self.next_request)
        return self.stop_reason is not None

    def planned_shards(self) -> Iterator[list[ChatRequest]]:
        """Shards to send while none of the limits is reached. A sender that keeps several shards
        in flight pulls ahead of `absorb`, so this checks without settling `stop_reason`."""
        while self._reason_to_stop(self.next_request) is None:
            yield self.next_shard()

    def next_shard(self) -> list[ChatRequest]:
        """The next shard of requests to send."""
        end = min(self.next_request + self.settings.requests_per_shard, self.settings.max_requests)
        shard = [self.request(i) for i in range(self.next_request, end)]
        self.next_request = end
        return shard

    def _reject(self, record_id: str, reason: str, **detail) -> None:
        self.counts[":".join(reason.split(":")[:2])] += 1
        self.rejected.append({"id": record_id, "stage": "generate", "reason": reason, **detail})

    def absorb(self, outcomes: list[RequestOutcome]) -> None:
        """Parse, filter and dedup a shard's replies, in request order."""
        for outcome in sorted(outcomes, key=lambda o: o.key):
            self.counts["requests"] += 1
            if not outcome.ok:
                self._reject(outcome.key, "request_failed", error=outcome.error)
                continue
            self.prompt_tokens += outcome.prompt_tokens
            self.completion_tokens += outcome.completion_tokens
            if self.settings.reply_format == "json":
                tasks, problems = parse_json_tasks(outcome.text, outcome.finish_reason)
            else:
                parse = parse_alpaca_tasks if self.settings.parse == "alpaca" else parse_generated_tasks
                tasks, problems = parse(outcome.text, outcome.meta["next_index"], outcome.finish_reason)
            for number, problem in enumerate(problems):
                self._reject(f"{outcome.key}-p{number:02d}", f"parse:{problem.reason}", text=problem.text[:2000])
            for number, task in enumerate(tasks):
                record_id = f"{outcome.key}-{number:02d}"
                self.counts["parsed"] += 1
                if len(self.kept) >= self.settings.target_records:
                    self.counts["beyond_target"] += 1
                    continue
                record = {"id": record_id, "instruction": task.instruction, "input": task.input, "output": task.output}
                reason = heuristic_rejection(task.instruction, task.output,
                                             empty_output=self.settings.parse != "alpaca")
                if reason:
                    self._reject(record_id, f"filter:{reason}", record=record)
                    continue
                if self.domain_similarity is not None:
                    similarity = self.domain_similarity(f"{task.instruction}\n{task.input}".strip())
                    if similarity < self.settings.domain_min_similarity:
                        self._reject(record_id, "off_domain", record=record, similarity=round(similarity, 4))
                        continue
                decision = self.dedup.add(task.instruction)
                if not decision.kept:
                    self._reject(
                        record_id, "near_duplicate", record=record,
                        nearest=decision.nearest, rouge_l=round(decision.score, 4),
                    )
                    continue
                self.kept.append(record)

    def summary(self) -> dict:
        """Counts at every step of the stage."""
        return {
            "strategy": "self_instruct",
            "requests": self.counts["requests"],
            "requests_failed": self.counts["request_failed"],
            "tasks_parsed": self.counts["parsed"],
            "dropped": {reason: n for reason, n in sorted(self.counts.items())
                        if reason not in ("requests", "parsed", "beyond_target")},
            "beyond_target": self.counts["beyond_target"],
            "domain": self.settings.domain,
            "kept": len(self.kept),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "stop_reason": self.stop_reason,
        }


def domain_similarity_scorer(domain: str, seed_instructions: list[str] = ()) -> Callable[[str], float]:
    """How close a text is to the domain: the highest cosine similarity (all-MiniLM-L6-v2) to
    the domain description or to any of the user's own seed instructions."""
    from similarity.embeddings import embed_texts

    anchors = embed_texts([domain, *seed_instructions])
    return lambda text: float((anchors @ embed_texts([text])[0]).max())


def run_self_instruct(run: SelfInstructRun, send_shards: SendShards, on_shard=None) -> SelfInstructRun:
    """Send shards until the target, the request limit or the budget is reached. Outcomes are
    absorbed in shard order, so the records kept do not depend on how many shards were in flight;
    shards sent ahead past the target stay in the journal unabsorbed, as if never sent."""
    replies = iter(send_shards(run.planned_shards()))
    try:
        # The request limit and the budget end the planned shards; only the target needs a
        # check here, since shards sent ahead may carry replies past it.
        for outcomes in replies:
            run.absorb(outcomes)
            if on_shard:
                on_shard(run)
            log.info("generate: %d/%d requests, %d/%d records kept, %d dropped", run.counts["requests"],
                     run.settings.max_requests, len(run.kept), run.settings.target_records, len(run.rejected))
            if len(run.kept) >= run.settings.target_records:
                break
    finally:
        close = getattr(replies, "close", None)
        if close:
            close()
    run.done  # settles stop_reason
    return run


class SelfInstructStrategy:
    """`generate.strategy: self_instruct`: Stanford Alpaca's procedure (this module)."""

    name = "self_instruct"
    description = "Alpaca's self-instruct: seed tasks in context, the teacher continues the numbered list"

    def preflight(self, settings: GenerateConfig, teacher) -> None:
        pass

    def run(self, job: "GenerationJob") -> "GenerationResult":
        from selfinstruct.prompt import load_template
        from selfinstruct.strategy import GenerationResult

        settings, seeds = job.settings, job.seeds
        domain = settings.domain
        run = SelfInstructRun(settings, seeds, load_template(settings.reply_format), job.budget_exhausted,
                              domain_similarity_scorer(domain, [s["instruction"] for s in seeds]) if domain else None,
                              rejected=job.rejected)
        run_self_instruct(run, job.send_shards)
        return GenerationResult(run.kept, run.summary())
