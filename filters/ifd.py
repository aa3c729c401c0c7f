"""Instruction-following difficulty (IFD), the score behind Superfiltering.

Cherry LLM (Li et al., "From Quantity to Quality", NAACL 2024) defined, and Superfiltering
(Li et al., "Superfiltering: Weak-to-Strong Data Filtering for Fast Instruction-Tuning",
ACL 2024) showed that a small model such as GPT-2 suffices to compute, the IFD of an
instruction-tuning pair (Q, A):

    IFD(Q, A) = PPL(A | Q) / PPL(A)

    PPL(A | Q) = exp(-1/N * sum_i log P(a_i | Q, a_1 .. a_{i-1}))     (answer after the prompt)
    PPL(A)     = exp(-1/N * sum_i log P(a_i | a_1 .. a_{i-1}))        (answer on its own)

over the same N answer tokens a_1 .. a_N. A low IFD means the instruction makes the answer
much easier to predict; IFD near 1 means the instruction barely helps; IFD >= 1 means the
answer is no more likely after the instruction than without it (the pair is likely
misaligned), so Superfiltering drops those and keeps the highest IFD among the rest: the
pairs whose answers are hardest to produce but still follow from their instructions.

How it is computed here
-----------------------
* The prompt (Q) is the instruction and input in Superfiltering's ``none`` layout,
  ``"{instruction}\\n{input}\\n"`` (``"{instruction}\\n"`` without input), or the project's
  student prompt (``prompt_format="alpaca"`` / ``"chat"``, see ``student.prompt_format``).
  Instruction, input and answer are stripped of surrounding whitespace.
* Prompt and answer are tokenized separately (no special tokens) and concatenated, so the
  two passes score exactly the same answer token ids:

      conditioned:  [start] + prompt + answer     loss on the answer tokens
      answer alone: [start] + answer              loss on the answer tokens

  ``[start]`` is ``<|endoftext|>`` where the vocabulary has it (the document separator of
  GPT-2, SmolLM2, Qwen ...), else the tokenizer's BOS token, else its EOS token; so the first
  answer token is scored in both passes, as in the paper's formula. The choice matters for
  SmolLM2-Instruct, whose BOS is ``<|im_start|>``: after it the model expects a chat role,
  which inflates PPL(A) (an answer unrelated to its instruction scored IFD 0.28 with it,
  0.90 with ``<|endoftext|>``). Superfiltering's script encodes the answer with no start
  token, which leaves its first token out of PPL(A) only; ``start_token_id=-1`` does that.
  A prompt that already starts with the start token gets no second one.
* ``max_length`` bounds the conditioned sequence: the answer is cut to what fits after the
  prompt, and the answer-alone pass scores the same cut answer. A record whose prompt leaves
  no room for an answer token, or whose answer is empty, gets NaN scores (never selected).
* Batches are right-padded (padding never changes the real tokens' outputs under a causal
  mask) and formed from sequences of similar length (sorted within windows of
  ``sort_window`` records, then restored to input order), so little compute goes to padding
  and memory does not grow with the number of records. Logits are computed only at the answer positions, a
  chunk of positions at a time, from the decoder's last hidden states and the LM head: the
  full ``batch x length x vocabulary`` logits tensor is never built.

Everything runs under ``torch.inference_mode()`` on the model's device and dtype; the caller
chooses threads (``torch.set_num_threads``) and the model. ``load_ifd_model`` loads one,
by default the embedded SmolLM2-135M-Instruct plain directory (``ensure_plain_student``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, Sequence

from filters.base import Reiterable, record_key, write_line
from student.scoring import batch_nll as _batch_nll
from student.scoring import uses_plain_head as _uses_plain_head

if TYPE_CHECKING:
    from core.records import Journal
    from filters.base import FilterContext, Records
    from filters.config import FilterConfig, IfdConfig

log = logging.getLogger(__name__)

__all__ = [
    "DOCUMENT_SEPARATOR",
    "IfdRanking",
    "IfdScore",
    "ifd_ranking",
    "PROMPT_FORMATS",
    "ifd_prompt",
    "ifd_scores",
    "load_ifd_model",
    "select_by_ifd",
]

IfdPromptFormat = Literal["plain", "alpaca", "chat"]
PROMPT_FORMATS: tuple[str, ...] = ("plain", "alpaca", "chat")
# GPT-2's (and SmolLM2's, Qwen's, ...) end-of-document token: what a pretrained model has
# seen before the first token of a document, hence the context for "the answer alone".
DOCUMENT_SEPARATOR = "<|endoftext|>"

@dataclass(frozen=True)
class IfdScore:
    """The IFD of one record, with the two perplexities it is the ratio of.

    All three are NaN when the record could not be scored (empty answer, or no room for an
    answer token within ``max_length``). ``answer_tokens`` is how many answer tokens were
    scored (fewer than the answer has when it was cut to fit ``max_length``).
    """

    ifd: float
    ppl_conditioned: float
    ppl_answer: float
    answer_tokens: int = 0

    @property
    def valid(self) -> bool:
        return not math.isnan(self.ifd)


_NAN_SCORE = IfdScore(math.nan, math.nan, math.nan, 0)


def ifd_prompt(record: dict, prompt_format: IfdPromptFormat = "plain", tokenizer: Any = None) -> str:
    """The text the answer is conditioned on (Q), ending where the answer starts."""
    instruction = str(record.get("instruction", "")).strip()
    input_text = str(record.get("input", "") or "").strip()
    if prompt_format == "plain":
        return f"{instruction}\n{input_text}\n" if input_text else f"{instruction}\n"
    if prompt_format in ("alpaca", "chat"):
        from student.prompt_format import render_student_prompt

        return render_student_prompt(instruction, input_text, prompt_format, tokenizer)
    raise ValueError(f"unknown IFD prompt format {prompt_format!r}; expected one of {', '.join(PROMPT_FORMATS)}")


def _start_token(tokenizer: Any, start_token_id: int | None) -> int | None:
    """The token both passes start with: the given one (negative: none), else the
    pretraining document separator ``<|endoftext|>`` where the vocabulary has it, else
    BOS, else EOS."""
    if start_token_id is not None:
        return None if start_token_id < 0 else int(start_token_id)
    separator = tokenizer.get_vocab().get(DOCUMENT_SEPARATOR) if hasattr(tokenizer, "get_vocab") else None
    for candidate in (separator, getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token; pass start_token_id (-1 for none)")


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _sequences(records: Sequence[dict], tokenizer: Any, max_length: int, prompt_format: IfdPromptFormat,
               start: int | None) -> tuple[list[tuple[int, list[int], int] | None], list[int]]:
    """Per record: (sequence ids, context length) for both passes, or None if unscorable.

    Returns a flat list (two entries per record: conditioned, then answer alone) and the
    number of answer tokens scored per record.
    """
    head = [start] if start is not None else []
    flat: list[tuple[int, list[int], int] | None] = []
    answer_counts: list[int] = []
    for record in records:
        answer = str(record.get("output", "") or "").strip()
        prompt_ids = _encode(tokenizer, ifd_prompt(record, prompt_format, tokenizer))
        prefix = prompt_ids if head and prompt_ids[:1] == head else head + prompt_ids
        answer_ids = _encode(tokenizer, answer)[: max(0, max_length - len(prefix))] if answer else []
        # The answer-alone pass needs a token before the first scored one: the start token,
        # or with none the first answer token itself (as in Superfiltering's script).
        if len(answer_ids) < (1 if head else 2) or not prefix:
            flat += [None, None]
            answer_counts.append(0)
            continue
        flat.append((len(flat), prefix + answer_ids, len(prefix)))
        flat.append((len(flat), head + answer_ids, 1))
        answer_counts.append(len(answer_ids))
    return flat, answer_counts


def ifd_scores(
    records: Sequence[dict],
    model: Any,
    tokenizer: Any,
    max_length: int = 512,
    batch_size: int = 8,
    prompt_format: IfdPromptFormat = "plain",
    start_token_id: int | None = None,
    chunk_positions: int = 2048,
    sort_window: int = 1024,
) -> list[IfdScore]:
    """The IFD of every record (dicts with ``instruction``, optional ``input``, ``output``), in order.

    ``model`` is a causal LM (``AutoModelForCausalLM``), ``tokenizer`` its tokenizer.
    ``max_length`` bounds the conditioned sequence in tokens; ``batch_size`` is the number of
    sequences per forward pass (each record needs two); ``chunk_positions`` bounds the
    answer positions whose logits exist at once; records are tokenized and their sequences
    sorted by length ``sort_window`` records at a time, so memory does not grow with the
    number of records (only the returned scores do). ``start_token_id``: see the module
    docstring (None: ``<|endoftext|>``, else BOS, else EOS; negative: no start token).
    """
    import torch

    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if batch_size < 1 or chunk_positions < 1 or sort_window < 1:
        raise ValueError("batch_size, chunk_positions and sort_window must be positive")
    start = _start_token(tokenizer, start_token_id)
    plain_head = _uses_plain_head(model)
    scores: list[IfdScore] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for window_start in range(0, len(records), sort_window):
                window = records[window_start:window_start + sort_window]
                flat, answer_counts = _sequences(window, tokenizer, max_length, prompt_format, start)
                todo = sorted((item for item in flat if item is not None), key=lambda item: -len(item[1]))
                mean_nll: dict[int, float] = {}
                for begin in range(0, len(todo), batch_size):
                    batch = todo[begin:begin + batch_size]
                    sums, counts = _batch_nll(model, batch, chunk_positions, plain_head)
                    for (slot, _, _), total, count in zip(batch, sums, counts):
                        mean_nll[slot] = total / count
                for index, count in enumerate(answer_counts):
                    if count == 0:
                        scores.append(_NAN_SCORE)
                        continue
                    conditioned, alone = mean_nll[2 * index], mean_nll[2 * index + 1]
                    scores.append(IfdScore(ifd=math.exp(conditioned - alone), ppl_conditioned=math.exp(conditioned),
                                           ppl_answer=math.exp(alone), answer_tokens=count))
    finally:
        model.train(was_training)
    return scores


@dataclass(frozen=True)
class IfdRanking:
    """Superfiltering's decision for every record, from IFD values alone (NaN: unscored), so
    a stage can select from a corpus it does not hold: ``ranks`` (1: highest IFD below
    ``max_ifd``; 0: not ranked), how many are kept (``limit``) and the lowest kept IFD."""

    values: array
    ranks: array
    limit: int
    cutoff_ifd: float | None
    max_ifd: float

    def value(self, position: int) -> float | None:
        """The IFD of the record at ``position``, or None when it was not scored."""
        value = self.values[position]
        return None if math.isnan(value) else value

    def decision(self, position: int, record: dict) -> dict | None:
        """None when the record at ``position`` is kept, else a copy with the reason and its IFD."""
        value, rank = self.value(position), self.ranks[position]
        if value is None:
            return {**record, "reason": "ifd_unscored", "ifd": None}
        if rank == 0:
            return {**record, "reason": "ifd_not_below_max", "ifd": value, "max_ifd": self.max_ifd}
        if rank <= self.limit:
            return None
        return {**record, "reason": "ifd_below_cut", "ifd": value, "rank": rank, "k": self.limit,
                "cutoff_ifd": self.cutoff_ifd}


def ifd_value(score: IfdScore | float | None) -> float:
    """A score as a plain IFD number, NaN when it is missing or not a number."""
    value = score.ifd if isinstance(score, IfdScore) else score
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def ifd_ranking(
    scores: Sequence[IfdScore | float | None],
    keep_fraction: float | None = None,
    top_k: int | None = None,
    max_ifd: float = 1.0,
) -> IfdRanking:
    """Rank the scores as :func:`select_by_ifd` does (highest IFD below ``max_ifd`` first,
    equal IFDs in input order) and fix how many are kept."""
    if keep_fraction is not None and top_k is not None:
        raise ValueError("give keep_fraction or top_k, not both")
    if keep_fraction is not None:
        if isinstance(keep_fraction, bool) or not 0 <= keep_fraction <= 1:
            raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction!r}")
        k: int | None = math.floor(keep_fraction * len(scores) + 1e-9)
    elif top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
        k = top_k
    else:
        k = None

    values = array("d", (ifd_value(score) for score in scores))
    eligible = [position for position, value in enumerate(values) if value < max_ifd]  # NaN < x is False
    eligible.sort(key=lambda position: -values[position])  # stable: input order on ties
    ranks = array("q", bytes(8 * len(values)))
    for rank, position in enumerate(eligible, start=1):
        ranks[position] = rank
    limit = len(eligible) if k is None else k
    cutoff = values[eligible[limit - 1]] if 0 < limit <= len(eligible) else None
    return IfdRanking(values, ranks, limit, cutoff, max_ifd)


def select_by_ifd(
    records: Sequence[dict],
    scores: Sequence[IfdScore | float | None],
    keep_fraction: float | None = None,
    top_k: int | None = None,
    max_ifd: float = 1.0,
) -> tuple[list[dict], list[dict]]:
    """Superfiltering's selection: drop IFD >= ``max_ifd`` (and unscored), keep the highest IFD.

    ``scores`` holds one :class:`IfdScore` (or plain IFD number, or None) per record. Give at
    most one of ``keep_fraction`` (keep ``floor(keep_fraction * len(records))`` records: a
    fraction of *all* records, as Superfiltering's 5% / 10% of Alpaca) and ``top_k``; with
    neither, every record below ``max_ifd`` is kept. Ranking is by IFD, highest first; equal
    IFDs rank in input order.

    Returns ``(kept, dropped)`` like ``filters.select``: the kept records themselves, in input
    order, and for every other record a shallow copy with ``reason`` (``"ifd_unscored"``,
    ``"ifd_not_below_max"`` with ``max_ifd``, or ``"ifd_below_cut"`` with ``rank``, ``k`` and
    ``cutoff_ifd``) and its ``ifd``, in input order.
    """
    from filters.select import split_by_decision

    if len(scores) != len(records):
        raise ValueError(f"{len(records)} records but {len(scores)} scores")
    return split_by_decision(records, ifd_ranking(scores, keep_fraction, top_k, max_ifd).decision)


def load_ifd_model(model_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                   dtype: str = "float32", device: str = "cpu"):
    """``(model, tokenizer)`` for IFD scoring, in eval mode.

    ``model_dir`` None or ``"embedded"``: the embedded SmolLM2-135M-Instruct, as a plain
    directory built once under ``cache_dir`` (default ``~/.cache/distill``); otherwise a
    local Hugging Face causal-LM directory (GPT-2 reproduces the paper's setting).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_dir is None or str(model_dir) == "embedded":
        from student.embedded import ensure_plain_student

        model_dir = ensure_plain_student(Path(cache_dir) if cache_dir else Path.home() / ".cache" / "distill")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                 use_safetensors=True).to(device)
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- the filter step
IFD_DETAILS = ("ifd", "rank", "k", "cutoff_ifd", "max_ifd")
IFD_JOURNAL = "ifd_scores.jsonl"
# Records IFD-scored per call of ifd_scores (sorted by length within it).
IFD_RECORDS_PER_CALL = 256


def ifd_cache_key(settings: "IfdConfig", record: dict) -> str:
    """The journal key of a record's IFD: its content and every setting that changes the score."""
    scorer = json.dumps([settings.model, settings.prompt_format, settings.max_length])
    return f"ifd-{hashlib.sha256(scorer.encode('utf-8')).hexdigest()[:12]}-{record_key(record)}"


def load_ifd_scorer(settings: "IfdConfig", cache_dir: Path | None):
    """(model, tokenizer) for IFD; a model directory that does not exist is a clear error."""
    from core.errors import StageInputError

    if settings.model != "embedded" and not Path(settings.model).is_dir():
        raise StageInputError(f"filter.ifd.model: {settings.model} is not a model directory "
                              "(use 'embedded' or a local Hugging Face causal-LM directory)")
    return load_ifd_model(settings.model, cache_dir)


def _chunked(items: Iterable, size: int) -> Iterator[list]:
    import itertools

    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def score_ifd(settings: "IfdConfig", candidates: Iterable[dict], journal: "Journal",
              cache_dir: Path | None) -> tuple[array, Counter]:
    """The IFD of every candidate (NaN where none can be computed), in order, and how many were
    computed and reused. A score already in the journal is reused; the model is loaded only
    when some record has none."""
    from core.threads import torch_threads

    values, tally = array("d"), Counter()
    scorer = None
    for chunk in _chunked(enumerate(candidates), IFD_RECORDS_PER_CALL):
        missing = []
        for position, record in chunk:
            key = ifd_cache_key(settings, record)
            if key in journal:
                stored = journal.get(key)["ifd"]
                values.append(math.nan if stored is None else stored)
                tally["reused"] += 1
            else:
                values.append(math.nan)
                missing.append((position, key, record))
        if missing:
            with torch_threads(settings.threads):
                scorer = scorer or load_ifd_scorer(settings, cache_dir)
                scores = ifd_scores([record for _, _, record in missing], *scorer,
                                    max_length=settings.max_length, batch_size=settings.batch_size,
                                    prompt_format=settings.prompt_format)
            for (position, key, _), score in zip(missing, scores):
                values[position] = score.ifd
                journal.append({"key": key, "ifd": score.ifd if score.valid else None,
                                "ppl_conditioned": score.ppl_conditioned if score.valid else None,
                                "ppl_answer": score.ppl_answer if score.valid else None,
                                "answer_tokens": score.answer_tokens})
            tally["computed"] += len(missing)
        log.info("filter: IFD of %d records (%d computed, %d reused)", len(values), tally["computed"], tally["reused"])
    return values, tally


def ifd_rejection(drop: dict) -> dict:
    """A rejections entry for a record IFD dropped: the reason, its IFD and the numbers behind it."""
    details = {key: drop[key] for key in IFD_DETAILS if key in drop}
    record = {key: value for key, value in drop.items() if key not in details and key != "reason"}
    return {"id": record.get("id"), "stage": "filter", "reason": drop["reason"], **details, "record": record}


def ifd_survivors(candidates: Iterable[dict], ranking: IfdRanking) -> Iterator[dict]:
    """The records the IFD ranking keeps, each carrying its `ifd`."""
    for position, record in enumerate(candidates):
        if ranking.decision(position, record) is None:
            yield {**record, "ifd": ranking.value(position)}


def ifd_summary(settings: "IfdConfig", ranking: IfdRanking, tally: Counter) -> dict:
    """The IFD step's settings and counts for the stage summary."""
    unscored = sum(1 for value in ranking.values if math.isnan(value))
    return {"mode": settings.mode, "model": settings.model, "keep_fraction": settings.keep_fraction,
            "top_k": settings.top_k, "drop_at_or_above": settings.drop_at_or_above,
            "scored": len(ranking.values) - unscored, "unscored": unscored,
            "computed": tally["computed"], "reused": tally["reused"],
            "kept": sum(1 for rank in ranking.ranks if 0 < rank <= ranking.limit),
            "cutoff_ifd": ranking.cutoff_ifd}


class IfdFilter:
    """`filter.ifd`: Superfiltering. A small model scores every record's IFD (journaled by
    content under work/, so a rerun computes none again); records at or above
    `drop_at_or_above` are dropped and the highest IFD kept. Before the judge, it keeps its
    share for rating; instead of the judge, its selection is the output and rated.jsonl holds
    every record with its IFD."""

    name = "ifd"
    description = "Superfiltering's instruction-following difficulty, by a small local model"
    removes_duplicates = False

    def enabled(self, settings: "FilterConfig") -> bool:
        return settings.ifd.enabled

    def apply(self, records: "Records", context: "FilterContext") -> "Records":
        from core.records import Journal, atomic_file

        settings = context.settings.ifd
        with Journal(context.work_dir / IFD_JOURNAL) as journal:
            values, tally = score_ifd(settings, records, journal, context.cache_dir)
        ranking = ifd_ranking(values, settings.keep_fraction, settings.top_k, settings.drop_at_or_above)
        context.summary["ifd"] = ifd_summary(settings, ranking, tally)
        instead_of_judge = settings.mode == "instead_of_judge"
        with atomic_file(context.rated_path) if instead_of_judge else _no_file() as rated_out:
            for position, record in enumerate(records):
                if rated_out is not None:  # IFD is the selection: every record goes to rated.jsonl with its IFD
                    write_line(rated_out, {**record, "ifd": ranking.value(position)})
                drop = ranking.decision(position, record)
                if drop is not None:
                    context.reject(ifd_rejection(drop))
        if instead_of_judge:
            context.summary["selection"] = "ifd"
        return Reiterable(lambda: ifd_survivors(records, ranking))


class _no_file:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None
