"""Data selection at a fixed budget K beyond AlpaGasus: three filter steps, each chosen by
`filter.selection` with `filter.top_k` as K.

* ``longest_k`` — Long Is More (Zhao et al., ICML 2024): keep the K records with the longest
  responses. The paper ranks Alpaca-52k and Evol-Instruct-70k by response length and keeps
  the 1,000 longest, a baseline that beat AlpaGasus-1k. Length here is the output's
  whitespace-separated words (no tokenizer is needed, and for English text it ranks as a
  token count does); equal lengths rank in input order. No judge is asked.
* ``random_k`` — K records drawn uniformly at random, seeded (`filter.selection_seed`): the
  baseline every selection method has to beat. No judge is asked.
* ``complexity_quality`` — a DEITA-style score (Liu et al., "What Makes Good Data for
  Alignment?", ICLR 2024), see :class:`ComplexityQualityFilter`.

Each keeps the K best by its measure, in input order, and sends every other record to the
rejections with the numbers behind the cut (its measure, rank, K and the cutoff). Fewer than K
records in: all are kept.
"""

from __future__ import annotations

import bisect
import math
import random
from array import array
from typing import TYPE_CHECKING, Callable, Iterator

from filters.base import Reiterable, rejection
from filters.judge import RATING_FIELDS
from filters.select import TopKRanking, record_score, top_k_ranking

if TYPE_CHECKING:
    from filters.base import FilterContext, Records
    from filters.config import FilterConfig

# The complexity scale complexity_quality ranks a signal onto: DEITA's scorers give 1-6.
COMPLEXITY_LOW, COMPLEXITY_HIGH = 1.0, 6.0


def output_words(record: dict) -> int:
    """The response's length as longest-K measures it: whitespace-separated words of the output."""
    return len(str(record.get("output") or "").split())


def instruction_words(record: dict) -> int:
    """Words of the instruction and its input: the `words` complexity signal."""
    return len(f"{record.get('instruction') or ''} {record.get('input') or ''}".split())


def plain_record(record: dict) -> dict:
    """The record without the fields earlier filter steps added (judge score, IFD)."""
    return {key: value for key, value in record.items() if key not in RATING_FIELDS}


def percentile_scale(values: array, low: float = COMPLEXITY_LOW, high: float = COMPLEXITY_HIGH) -> array:
    """Each value's place among the others mapped onto [low, high] by its mid-rank (equal values
    share one place; the smallest maps to `low`, the largest to `high`); NaN stays NaN. One value
    alone maps to `high`."""
    finite = sorted(value for value in values if not math.isnan(value))
    scaled = array("d")
    if not finite:
        return array("d", values)
    span = len(finite) - 1
    for value in values:
        if math.isnan(value):
            scaled.append(math.nan)
            continue
        below = bisect.bisect_left(finite, value)
        equal = bisect.bisect_right(finite, value) - below
        place = (below + (equal - 1) / 2) / span if span else 1.0
        scaled.append(low + (high - low) * place)
    return scaled


def select_by_ranking(records: "Records", context: "FilterContext", ranking: TopKRanking,
                      numbers: Callable[[int], dict]) -> Reiterable:
    """Send every record `ranking` drops to the rejections (with `numbers(position)` beside its
    rank, K and cutoff) and pass on the ones it keeps, re-readable, in input order."""
    for position, record in enumerate(records):
        drop = ranking.decision(position, record)
        if drop is not None:
            details = {key: drop[key] for key in ("rank", "k", "cutoff_score") if key in drop}
            context.reject(rejection(plain_record(record), drop["reason"], **numbers(position), **details))

    def kept() -> Iterator[dict]:
        for position, record in enumerate(records):
            if ranking.decision(position, record) is None:
                yield record
    return Reiterable(kept)


def _summary(context: "FilterContext", **numbers) -> None:
    context.summary["selected"] = {"selection": context.settings.selection, "k": context.settings.top_k, **numbers}


class LongestKFilter:
    """`selection: longest_k`: the K records with the longest outputs (Long Is More)."""

    name = "longest_k"
    description = "the K records with the longest responses (Long Is More, Zhao et al. 2024); no judge"
    removes_duplicates = False

    def enabled(self, settings: "FilterConfig") -> bool:
        return settings.selection == "longest_k"

    def apply(self, records: "Records", context: "FilterContext") -> "Records":
        lengths = array("d", (output_words(record) for record in records))
        ranking = top_k_ranking(lengths, context.settings.top_k, reason="below_longest_k")
        _summary(context, measure="output words", pool=len(lengths), cutoff=ranking.cutoff_score)
        return select_by_ranking(records, context, ranking, lambda position: {"output_words": int(lengths[position])})


class RandomKFilter:
    """`selection: random_k`: K records drawn uniformly at random with `filter.selection_seed`;
    the same seed and pool draw the same records."""

    name = "random_k"
    description = "K records drawn at random (seeded); no judge"
    removes_duplicates = False

    def enabled(self, settings: "FilterConfig") -> bool:
        return settings.selection == "random_k"

    def apply(self, records: "Records", context: "FilterContext") -> "Records":
        settings = context.settings
        pool = sum(1 for _ in records)
        drawn = set(random.Random(settings.selection_seed).sample(range(pool), min(settings.top_k, pool)))
        _summary(context, measure=f"random draw (seed {settings.selection_seed})", pool=pool)
        for position, record in enumerate(records):
            if position not in drawn:
                context.reject(rejection(plain_record(record), "not_drawn_random_k", k=settings.top_k,
                                         seed=settings.selection_seed))

        def kept() -> Iterator[dict]:
            for position, record in enumerate(records):
                if position in drawn:
                    yield record
        return Reiterable(kept)


class ComplexityQualityFilter:
    """`selection: complexity_quality`: the K records with the highest complexity x quality.

    DEITA scores each instruction's complexity with a trained scorer (a LLaMA model fine-tuned
    on ChatGPT's rankings of Evol-Instruct's successively evolved instructions, 1-6) and each
    response's quality with another (trained the same way on evolved responses), multiplies the
    two, and takes the best by that product while skipping records too close in embedding space
    to ones already taken (its "Repr Filter").

    This is an offline approximation with the parts this project has:

    * quality is the judge's 0-5 rating (`filters.rate`, AlpaGasus' prompt), not a trained
      quality scorer; records the judge could not score are dropped by the judge step;
    * complexity is a signal of the instruction that needs no trained scorer: with
      `filter.complexity: words` the words of the instruction and input (DEITA's own
      "instruction length" baseline: evolution makes instructions longer), with `ifd` the
      record's instruction-following difficulty from `filter.ifd` (a small model's
      PPL(answer | instruction) / PPL(answer), which DEITA also compares against). The signal
      is ranked within the pool and mapped onto DEITA's 1-6 scale (mid-ranks; the least complex
      record is 1, the most 6), so it weighs as much as the judge's score in the product;
    * there is no diversity step here; `filter.semantic_dedup` (embedding near-duplicates
      before rating) is the closest part, and runs before the judge when it is on.

    The product ranks highest first, equal products in input order.
    """

    name = "complexity_quality"
    description = "DEITA-style instruction complexity x judge quality, the best K kept"
    removes_duplicates = False

    def enabled(self, settings: "FilterConfig") -> bool:
        return settings.selection == "complexity_quality"

    def apply(self, records: "Records", context: "FilterContext") -> "Records":
        settings = context.settings
        signal = array("d", (self._signal(record, settings.complexity) for record in records))
        quality = array("d", (_number(record_score(record)) for record in records))
        complexity = percentile_scale(signal)
        product = array("d", (c * q for c, q in zip(complexity, quality)))
        ranking = top_k_ranking(product, settings.top_k, reason="below_complexity_quality_k")
        _summary(context, measure=f"complexity ({settings.complexity}, ranked onto 1-6) x judge score",
                 pool=len(product), cutoff=ranking.cutoff_score)

        def numbers(position: int) -> dict:
            return {"score": _plain_number(quality[position]), "complexity": _rounded(complexity[position]),
                    "complexity_signal": _rounded(signal[position]),
                    "complexity_quality": _rounded(product[position])}
        return select_by_ranking(records, context, ranking, numbers)

    @staticmethod
    def _signal(record: dict, complexity: str) -> float:
        if complexity == "ifd":
            return _number(record.get("ifd"))
        return float(instruction_words(record))


def _number(value) -> float:
    return math.nan if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)


def _plain_number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)
