"""The decontamination step: records that copy an evaluation prompt are dropped before any
other step (similarity.decontaminate has the rule: a shared run of 13 words after
normalization, a whole short prompt in a row, or ROUGE-L above a threshold).

The evaluation prompts come in `FilterContext.eval_prompts`, by set: the pipeline loads the
sets named in `filter.decontaminate.against` (by default every set of `evaluate.sets`), since
the sets live in eval, above the filters. Every drop goes to the rejections with reason
`contaminated` and the evaluation prompt it matched (set, id, text, and how); the stage
summary counts the drops per set.

The step streams: it checks each record once, remembers the positions it dropped, and hands
on a re-readable view of the records that skips them, so the records are never all held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from filters.base import Reiterable, rejection

if TYPE_CHECKING:
    from filters.base import FilterContext, Records
    from filters.config import FilterConfig

REASON = "contaminated"


class KeptRecords(Reiterable):
    """The records a step kept: its input read again, the dropped positions skipped; the count is known."""

    def __init__(self, records: "Records", dropped: set[int], kept: int):
        self._records, self._dropped, self._kept = records, dropped, kept
        super().__init__(self._iterate)

    def _iterate(self) -> Iterator[dict]:
        for position, record in enumerate(self._records):
            if position not in self._dropped:
                yield record

    def __len__(self) -> int:
        return self._kept


class DecontaminateFilter:
    name = "decontaminate"
    description = "records that copy an evaluation prompt dropped (13-word overlap or ROUGE-L)"
    removes_duplicates = True  # it removes copies (of evaluation prompts): counted before rating

    def enabled(self, settings: "FilterConfig") -> bool:
        return settings.decontaminate.enabled

    def apply(self, records: "Records", context: "FilterContext") -> "Records":
        from similarity.decontaminate import Decontaminator

        settings = context.settings.decontaminate
        by_set = context.eval_prompts or {}
        checker = Decontaminator([prompt for prompts in by_set.values() for prompt in prompts], ngram=settings.ngram,
                                 rouge_threshold=settings.rouge_threshold, min_words=settings.min_words)
        dropped: set[int] = set()
        per_set = {name: 0 for name in by_set}
        checked = 0
        for position, record in enumerate(records):
            checked += 1
            if not len(checker):
                continue
            match = checker.check(record["instruction"], record.get("input", "") or "")
            if match is not None:
                dropped.add(position)
                per_set[match.set] = per_set.get(match.set, 0) + 1
                context.reject(rejection(record, REASON, **match.to_json()))
        context.summary["decontamination"] = {
            "against": list(by_set), "prompts": len(checker), "checked": checked, "dropped": len(dropped),
            "dropped_per_set": per_set,
            "rule": f"a shared run of {settings.ngram} normalized words (a whole prompt of {settings.min_words} to "
                    f"{settings.ngram - 1} words), or ROUGE-L F above {settings.rouge_threshold}",
        }
        return KeptRecords(records, dropped, checked - len(dropped))
