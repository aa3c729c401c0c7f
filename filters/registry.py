"""The filter steps of the filter stage, in the order they run. The stage applies every step
the config enables (`enabled(settings)`) to what the step before it kept; adding a filter is
one module with a `filters.base.RecordFilter` and one line here."""

from __future__ import annotations

from filters.base import RecordFilter
from filters.decontaminate import DecontaminateFilter
from filters.ifd import IfdFilter
from filters.judge import JudgeFilter
from filters.minhash_dedup import MinHashDedupFilter
from filters.selection import ComplexityQualityFilter, LongestKFilter, RandomKFilter
from filters.semantic_dedup import SemanticDedupFilter

FILTERS: tuple[RecordFilter, ...] = (
    DecontaminateFilter(),
    MinHashDedupFilter(),
    SemanticDedupFilter(),
    IfdFilter(),
    JudgeFilter(),
    # Budget selections after the judge (each on only for its filter.selection).
    LongestKFilter(),
    RandomKFilter(),
    ComplexityQualityFilter(),
)


def enabled_filters(settings) -> list[RecordFilter]:
    """The registered filters the settings turn on, in order."""
    return [step for step in FILTERS if step.enabled(settings)]
