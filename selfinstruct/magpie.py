"""Magpie (Xu et al., "Magpie: Alignment Data Synthesis from Scratch by Prompting Aligned LLMs
with Nothing", 2024) as a generation strategy: no seed tasks, no instructions to the teacher.

An aligned chat model has learned what follows its chat template's user-turn header: a user's
message. Given only that header (the "pre-query template") as a raw completion prompt, it
writes a plausible user query; sampled, every request gives another one. The query is then put
into the full template (pre-query template, query, end of the user turn and the assistant's
header) and the same model answers it. Here:

* The templates are built from the teacher's own chat template (the GGUF's
  ``tokenizer.chat_template`` for the embedded teacher, or a local model directory's
  ``tokenizer_config.json`` / ``chat_template.jinja``): it is rendered, as the teacher renders a
  conversation, for one user message holding a placeholder, and split at the placeholder. So
  the pre-query template holds whatever the template puts before the user's words; SmolLM2's
  (ChatML) adds its default system turn, and gives
  ``<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging
  Face<|im_end|>\\n<|im_start|>user\\n``. On the embedded SmolLM2-135M that system turn
  matters: with it the teacher writes user requests ("What is a fun fact about the Apollo 11
  moon landing?"); with the bare ``<|im_start|>user\\n`` it mostly continued code, stories or
  role-play prompts. BOS is left to the server (rendered as empty). Both templates can be
  given instead (`generate.magpie.pre_query_template` / `post_query_template`), which a remote
  teacher needs.
* Both requests go to the completions route as raw prompts (`ChatRequest.raw_prompt`), so the
  endpoint's `api` setting does not matter and the judge and the evaluation keep their chat
  route. Queries are sampled (`query_temperature`, `query_top_p`), answers greedy by default.
* A query is cut at the first special-token-like marker of the templates (``<|im_end|>``, ...)
  in case the server does not stop there, and stripped. The same filters as self-instruct
  follow: a query cut by the length limit or empty is dropped, Alpaca's heuristic filters
  (length, blocked words, "Write a program", leading punctuation or non-ASCII), and the greedy
  ROUGE-L near-duplicate filter against the queries kept so far (Magpie has no seeds to
  compare with). Only surviving queries are answered; an answer that is empty or cut by the
  length limit is dropped. Records have an empty input.
* Every query costs one request and every answer one more; `generate.max_requests` bounds both
  together: a shard of queries is sent only when its answers would still fit.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from backends.base import ChatRequest, RequestOutcome
from core.errors import ConfigError
from selfinstruct.alpaca_filters import heuristic_rejection
from similarity.rouge import RougeLDeduplicator

if TYPE_CHECKING:
    from backends.config import ModelEndpoint
    from selfinstruct.config import GenerateConfig, MagpieConfig
    from selfinstruct.strategy import GenerationJob, GenerationResult

log = logging.getLogger(__name__)

# A placeholder user message: private-use characters, which no chat template contains.
QUERY_PLACEHOLDER = "\ue000magpie-query\ue000"
# Special-token-like markers in a template: <|im_end|>, <|eot_id|>, </s>, [/INST], <end_of_turn> ...
_MARKER = re.compile(r"<\|[^|<>\s]+\|>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>")


def render_chat_template(chat_template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The template rendered as chat servers render it (Jinja2, sandboxed, trim_blocks and
    lstrip_blocks as Hugging Face and llama.cpp use), with BOS and EOS tokens left empty."""
    from jinja2 import TemplateError, ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols])
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                         bos_token="", eos_token="")


def query_templates(chat_template: str, source: str = "the chat template") -> tuple[str, str]:
    """(pre-query template, post-query template): what a conversation of one user message holds
    before the message, and after it up to where the assistant's answer starts."""
    from jinja2 import TemplateError

    try:
        rendered = render_chat_template(chat_template, [{"role": "user", "content": QUERY_PLACEHOLDER}])
    except TemplateError as exc:
        raise ConfigError(f"generate.strategy magpie: {source} does not render: {exc}") from None
    if rendered.count(QUERY_PLACEHOLDER) != 1:
        raise ConfigError(f"generate.strategy magpie: {source} does not show a user message exactly once")
    pre, post = rendered.split(QUERY_PLACEHOLDER)
    if not pre.strip() or not post.strip():
        raise ConfigError(f"generate.strategy magpie: {source} puts no markup around the user message")
    return pre, post


def gguf_chat_template(path: Path) -> str | None:
    """The `tokenizer.chat_template` stored in a GGUF file, or None."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def directory_chat_template(folder: Path) -> str | None:
    """The chat template of a local Hugging Face model directory (chat_template.jinja, or the
    `chat_template` of tokenizer_config.json), or None."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def teacher_query_templates(settings: "MagpieConfig", teacher: "ModelEndpoint") -> tuple[str, str]:
    """The pre- and post-query templates: as given, else built from the teacher's chat template."""
    from backends.registry import model_file

    if settings.pre_query_template is not None:
        return settings.pre_query_template, settings.post_query_template
    gguf = model_file(teacher)
    if gguf is not None:
        template = gguf_chat_template(gguf)
        if template is None:
            raise ConfigError(f"generate.strategy magpie: {gguf} holds no tokenizer.chat_template; give "
                              "generate.magpie.pre_query_template and post_query_template")
        return query_templates(template, f"the chat template of {gguf.name}")
    folder = Path(teacher.model)
    template = directory_chat_template(folder) if folder.is_dir() else None
    if template is None:
        raise ConfigError("generate.strategy magpie: the teacher's chat template is not readable on this machine "
                          f"(teacher.model {teacher.model!r} is neither the embedded model nor a local model "
                          "directory with one); give generate.magpie.pre_query_template and post_query_template")
    return query_templates(template, f"the chat template of {folder}")


def template_markers(*templates: str) -> list[str]:
    """The special-token-like markers of the templates, longest first (where a query is cut)."""
    return sorted({marker for template in templates for marker in _MARKER.findall(template)}, key=len, reverse=True)


def clean_query(text: str, markers: list[str]) -> str:
    """The query the teacher wrote: cut at the first template marker, stripped."""
    cut = min((position for marker in markers if (position := text.find(marker)) >= 0), default=len(text))
    return text[:cut].strip()


class MagpieRun:
    """State of one Magpie generation: the queries asked so far, what is kept and what dropped."""

    def __init__(self, settings: "GenerateConfig", pre_query: str, post_query: str, rejected: list):
        self.settings = settings
        self.magpie = settings.magpie
        self.pre_query, self.post_query = pre_query, post_query
        self.markers = template_markers(pre_query, post_query)
        self.dedup = RougeLDeduplicator(settings.rouge_threshold)
        self.kept: list[dict] = []
        self.rejected = rejected
        self.counts: Counter = Counter()
        self.next_query = 0
        self.requests = 0
        self.tokens = {"prompt_tokens": 0, "completion_tokens": 0}
        self.stop_reason: str | None = None

    def query_request(self, index: int) -> ChatRequest:
        return ChatRequest(key=f"magpie-q-{index:06d}", messages=[], raw_prompt=self.pre_query,
                           max_tokens=self.magpie.query_max_tokens, temperature=self.magpie.query_temperature,
                           top_p=self.magpie.query_top_p, seed=self.settings.seed * 1_000_003 + index,
                           meta={"query": index})

    def answer_request(self, index: int, query: str) -> ChatRequest:
        return ChatRequest(key=f"magpie-a-{index:06d}", messages=[{"role": "user", "content": query}],
                           raw_prompt=self.pre_query + query + self.post_query,
                           max_tokens=self.magpie.answer_max_tokens, temperature=self.magpie.answer_temperature,
                           seed=self.settings.seed * 1_000_003 + index, meta={"query": index, "instruction": query})

    def _reject(self, record_id: str, reason: str, **detail) -> None:
        self.counts[reason] += 1
        self.rejected.append({"id": record_id, "stage": "generate", "reason": reason, **detail})

    def _spent(self, outcome: RequestOutcome) -> bool:
        """Count a reply's tokens; False (and a drop) for a failed request."""
        if not outcome.ok:
            self._reject(outcome.key, "request_failed", error=outcome.error)
            return False
        self.tokens["prompt_tokens"] += outcome.prompt_tokens
        self.tokens["completion_tokens"] += outcome.completion_tokens
        return True

    def next_shard(self) -> list[ChatRequest]:
        """The next shard of query requests: as many as still fit with one answer each."""
        room = (self.settings.max_requests - self.requests) // 2
        count = min(self.settings.requests_per_shard, room)
        shard = [self.query_request(index) for index in range(self.next_query, self.next_query + count)]
        self.next_query += count
        return shard

    def take_queries(self, outcomes: list[RequestOutcome]) -> list[tuple[int, str]]:
        """The queries that pass the filters and the near-duplicate check, to be answered."""
        survivors = []
        for outcome in sorted(outcomes, key=lambda o: o.key):
            self.requests += 1
            if not self._spent(outcome):
                continue
            index = outcome.meta["query"]
            record_id = f"magpie-{index:06d}"
            query = clean_query(outcome.text or "", self.markers)
            if outcome.finish_reason == "length":
                self._reject(record_id, "parse:truncated_query", text=(outcome.text or "")[:2000])
                continue
            if not query:
                self._reject(record_id, "parse:empty_query", text=(outcome.text or "")[:2000])
                continue
            self.counts["parsed"] += 1
            record = {"id": record_id, "instruction": query, "input": "", "output": ""}
            reason = heuristic_rejection(query, "", empty_output=False)
            if reason:
                self._reject(record_id, f"filter:{reason}", record=record)
                continue
            decision = self.dedup.add(query)
            if not decision.kept:
                self._reject(record_id, "near_duplicate", record=record, nearest=decision.nearest,
                             rouge_l=round(decision.score, 4))
                continue
            survivors.append((index, query))
        return survivors

    def reject_unanswered(self, index: int, query: str) -> None:
        self._reject(f"magpie-{index:06d}", "not_answered:budget",
                     record={"id": f"magpie-{index:06d}", "instruction": query, "input": "", "output": ""})

    def take_answers(self, outcomes: list[RequestOutcome]) -> None:
        """Keep each answered query as a record, in query order, up to the target."""
        for outcome in sorted(outcomes, key=lambda o: o.key):
            self.requests += 1
            index, query = outcome.meta["query"], outcome.meta["instruction"]
            record = {"id": f"magpie-{index:06d}", "instruction": query, "input": "", "output": ""}
            if not outcome.ok:
                self._reject(record["id"], "answer_request_failed", error=outcome.error, record=record)
                continue
            self._spent(outcome)
            answer = (outcome.text or "").strip()
            if outcome.finish_reason == "length":
                self._reject(record["id"], "answer_truncated", record={**record, "output": answer})
            elif not answer:
                self._reject(record["id"], "empty_answer", record=record)
            elif len(self.kept) >= self.settings.target_records:
                self.counts["beyond_target"] += 1
            else:
                self.kept.append({**record, "output": answer})

    def summary(self, stop_reason: str) -> dict:
        failed = self.counts["request_failed"] + self.counts["answer_request_failed"]
        return {"strategy": "magpie", "requests": self.requests, "requests_failed": failed,
                "tasks_parsed": self.counts["parsed"],
                "dropped": {reason: n for reason, n in sorted(self.counts.items())
                            if reason not in ("parsed", "beyond_target")},
                "beyond_target": self.counts["beyond_target"], "domain": None, "kept": len(self.kept),
                **self.tokens, "stop_reason": stop_reason}


def run_magpie(settings: "GenerateConfig", pre_query: str, post_query: str, job: "GenerationJob") -> MagpieRun:
    """Ask for queries a shard at a time and answer the survivors, until the target, the request
    limit or the budget is reached."""
    run = MagpieRun(settings, pre_query, post_query, job.rejected)
    stop_reason = "target_reached"
    while len(run.kept) < settings.target_records:
        if job.budget_exhausted():
            stop_reason = "budget"
            break
        shard = run.next_shard()
        if not shard:
            stop_reason = "max_requests"
            break
        survivors = run.take_queries(job.send_shard(shard))
        if survivors and job.budget_exhausted():
            for index, query in survivors:  # read and kept, but the budget leaves nothing to answer them
                run.reject_unanswered(index, query)
        elif survivors:
            run.take_answers(job.send_shard([run.answer_request(index, query) for index, query in survivors]))
        log.info("generate (magpie): %d queries asked, %d requests, %d/%d records kept", run.next_query,
                 run.requests, len(run.kept), settings.target_records)
    run.stop_reason = stop_reason
    return run


class MagpieStrategy:
    """`generate.strategy: magpie` (this module)."""

    name = "magpie"
    description = "Magpie: no seeds; the teacher completes its own chat template's user turn, then answers"

    def preflight(self, settings: "GenerateConfig", teacher: "ModelEndpoint") -> None:
        teacher_query_templates(settings.magpie, teacher)

    def run(self, job: "GenerationJob") -> "GenerationResult":
        from selfinstruct.strategy import GenerationResult

        pre_query, post_query = teacher_query_templates(job.settings.magpie, job.teacher)
        run = run_magpie(job.settings, pre_query, post_query, job)
        return GenerationResult(run.kept, run.summary(run.stop_reason))
