"""Decontamination: is a training record a copy of an evaluation prompt?

Synthetic data can hold the evaluation prompts (a teacher saw them on the web; seed tasks can
overlap), and a student trained on them is then tested on what it learnt by heart. A record
is **contaminated** when its text (instruction, then input) matches an evaluation prompt's
text (instruction, then input) by either rule:

1. **Long n-gram overlap** (GPT-3's and Tulu 3's rule): the two share a run of ``ngram``
   (13) consecutive words after normalization. Words are maximal runs of Unicode letters
   and digits, case-folded, so case, punctuation and whitespace do not matter. A prompt of
   fewer than ``ngram`` words (but at least ``min_words``) matches when all its words appear
   in the record, consecutively: a whole short prompt copied, even behind a lead-in.
2. **ROUGE-L** above ``rouge_threshold`` (0.7): the exact ROUGE-L F of ``distill dedup``
   (``similarity.rouge``, rouge_score's tokens), for copies that were reworded a little.

Prompts shorter than ``min_words`` are only matched by ROUGE-L: a handful of common words
in a row ("write a poem about") is not evidence of a copy.

:class:`Decontaminator` indexes the prompts once (every n-gram of every prompt in a hash
table, the short prompts by their length; the prompts in the ROUGE-L index of the dedup);
checking a record costs one pass over its words plus one ROUGE-L query with prefix
filtering, so tens of thousands of records take seconds (bench/bench_decontaminate.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from similarity.rouge import RougeLDeduplicator

NGRAM = 13
MIN_WORDS = 6
ROUGE_THRESHOLD = 0.7
_WORD_RE = re.compile(r"[^\W_]+")


def normalized_words(text: str) -> list[str]:
    """The words of `text` after normalization: maximal runs of Unicode letters and digits,
    case-folded (punctuation, symbols, underscores and whitespace separate words)."""
    return _WORD_RE.findall(text.casefold())


def prompt_text(instruction: str, input: str = "") -> str:  # noqa: A002 - matches the record field
    """What is compared: the instruction, then the input on a line of its own when there is one."""
    input = (input or "").strip()
    return f"{instruction.strip()}\n{input}" if input else instruction.strip()


@dataclass(frozen=True)
class Contamination:
    """Which evaluation prompt a record matched, and how."""

    set: str
    prompt_id: str
    prompt: str  # the evaluation prompt's text (instruction, then input)
    method: str  # "ngram" (a shared run of words) or "rouge_l"
    shared_words: str | None = None  # with "ngram": the shared run, normalized
    rouge_l: float | None = None  # with "rouge_l": the ROUGE-L F (> the threshold)

    def to_json(self) -> dict:
        return {"matched_set": self.set, "matched_prompt_id": self.prompt_id, "matched_prompt": self.prompt,
                "match": self.method, **({"shared_words": self.shared_words} if self.shared_words else {}),
                **({"rouge_l": round(self.rouge_l, 4)} if self.rouge_l is not None else {})}


class Decontaminator:
    """Evaluation prompts indexed for checking records against them (module docstring).

    ``prompts``: dicts with ``id``, ``set``, ``instruction`` and optional ``input``.
    """

    def __init__(self, prompts: Iterable[dict], ngram: int = NGRAM, rouge_threshold: float = ROUGE_THRESHOLD,
                 min_words: int = MIN_WORDS):
        if ngram < 1 or min_words < 1:
            raise ValueError(f"ngram and min_words must be positive, got {ngram} and {min_words}")
        self.ngram, self.min_words = ngram, min_words
        self.prompts: list[dict] = []
        self._runs: dict[int, dict[tuple[str, ...], int]] = {}  # run length -> words -> prompt index
        self._first_words: set[str] = set()
        self._rouge = RougeLDeduplicator(rouge_threshold)
        self._by_text: dict[str, int] = {}
        for prompt in prompts:
            index = len(self.prompts)
            text = prompt_text(prompt["instruction"], prompt.get("input", ""))
            self.prompts.append({"id": str(prompt["id"]), "set": str(prompt["set"]), "text": text})
            words = normalized_words(text)
            if len(words) < min_words:
                pass
            elif len(words) < ngram:  # a short prompt: matched whole
                self._index_run(tuple(words), index)
            else:
                for start in range(len(words) - ngram + 1):
                    self._index_run(tuple(words[start:start + ngram]), index)
            if text not in self._by_text:
                self._by_text[text] = index
                self._rouge.add_seed(text)
        self._lengths = sorted(self._runs)

    def _index_run(self, run: tuple[str, ...], index: int) -> None:
        self._runs.setdefault(len(run), {}).setdefault(run, index)
        self._first_words.add(run[0])

    def __len__(self) -> int:
        return len(self.prompts)

    def check(self, instruction: str, input: str = "") -> Contamination | None:  # noqa: A002
        """The evaluation prompt a record (instruction, input) matches, or None when it is clean."""
        text = prompt_text(instruction, input)
        words = normalized_words(text)
        first_words, runs = self._first_words, self._runs
        for start, word in enumerate(words):
            if word not in first_words:
                continue
            for length in self._lengths:
                if start + length > len(words):
                    break
                index = runs[length].get(tuple(words[start:start + length]))
                if index is not None:
                    return self._match(index, "ngram", shared_words=" ".join(words[start:start + length]))
        decision = self._rouge.check(text)
        if not decision.kept:
            return self._match(self._by_text[decision.nearest], "rouge_l", rouge_l=decision.score)
        return None

    def _match(self, index: int, method: str, **details) -> Contamination:
        prompt = self.prompts[index]
        return Contamination(prompt["set"], prompt["id"], prompt["text"], method, **details)
