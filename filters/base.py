"""The one interface every record filter implements, and what a filter is given to run.

A filter takes the records that reached it and returns the ones it keeps; every record it
drops goes to `context.reject` as a rejection `{id, stage, reason, ...numbers, record}`.
The filter stage applies the registered filters (`filters.registry.FILTERS`) that the config
enables, in order, and writes what the last one keeps to filtered.jsonl; the report counts
every rejection by its reason. So a new filter is one module with a class like the ones
below and one line in the registry.

Records flow as `Records`: something that can be iterated more than once (a list, or a
`Reiterable` that reads a file again), so a filter that needs two passes (score everything,
then keep the best) does not have to hold the records in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Iterator, Protocol

if TYPE_CHECKING:
    from backends.base import ChatRequest, RequestOutcome
    from filters.config import FilterConfig

Records = Iterable[dict]
Reject = Callable[[dict], None]
# Sends shards of rating requests through the run's request path; yields each shard's
# outcomes in shard order and stops sending once the budget is spent.
SendShards = Callable[[Iterable[list["ChatRequest"]]], Iterator[list["RequestOutcome"]]]


class Reiterable:
    """Records read afresh on each iteration (`source()` returns a new iterator each time)."""

    def __init__(self, source: Callable[[], Iterator[dict]]):
        self._source = source

    def __iter__(self) -> Iterator[dict]:
        return self._source()


@dataclasses.dataclass
class FilterContext:
    """What filters run with: the settings, where to keep scratch files and journals, the
    rejection sink, and (for a filter that asks the judge) the judge's request path."""

    settings: "FilterConfig"
    work_dir: Path
    out_dir: Path  # the run directory: where report files (histograms, examples) go
    rated_path: Path  # rated.jsonl: every scored record, with its score
    cache_dir: Path | None
    reject: Reject
    send_ratings: SendShards | None = None
    judge_identity: Callable[[], str] | None = None
    # The evaluation prompts the records are checked against (filters.decontaminate), by set
    # name: the pipeline loads them (the sets live in eval, above the filters).
    eval_prompts: dict[str, list[dict]] | None = None
    # What each filter reports for the stage summary (its counts, tokens, files), by key.
    summary: dict = dataclasses.field(default_factory=dict)


class RecordFilter(Protocol):
    """One filtering step of the filter stage."""

    name: ClassVar[str]
    description: ClassVar[str]
    removes_duplicates: ClassVar[bool]  # a near-duplicate filter (the report's "after dedup" count)

    def enabled(self, settings: "FilterConfig") -> bool:
        """Whether the config turns this filter on."""
        ...

    def apply(self, records: Records, context: FilterContext) -> Records:
        """The records kept, in input order; each dropped record goes to `context.reject`."""
        ...


def record_key(record: dict) -> str:
    """A stable key for a record's content (instruction, input, output)."""
    content = json.dumps([record["instruction"], record.get("input", ""), record.get("output", "")])
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:20]


def rejection(record: dict, reason: str, **numbers) -> dict:
    """A rejections entry: the record's id, the stage, the reason and the numbers behind it, the record."""
    return {"id": record.get("id"), "stage": "filter", "reason": reason, **numbers, "record": record}


def keep_or_reject(records: list[dict], decisions, context: FilterContext, reason: str, numbers) -> list[dict]:
    """The records whose decision is `kept`; each other one goes to `context.reject` with `reason`
    and `numbers(decision)` (the figures behind the drop). For dedup steps, whose decisions name
    the nearest earlier record by its index."""
    kept = []
    for record, decision in zip(records, decisions):
        if decision.kept:
            kept.append(record)
        else:
            context.reject(rejection(record, reason, **numbers(decision)))
    return kept


def write_line(handle, value: dict) -> None:
    """Append one JSONL line (the format of core.records.write_jsonl)."""
    handle.write(json.dumps(value, ensure_ascii=False) + "\n")
