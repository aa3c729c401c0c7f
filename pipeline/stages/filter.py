"""The filter stage: generated.jsonl through every filter step the config enables
(`filters.registry.FILTERS`: decontamination against the evaluation prompts, near-duplicate
removal, IFD, the judge's rating and selection),
in order, into filtered.jsonl, with every drop and its reason in the rejections, and the kept
records exported for fine-tuning tools.

Memory stays flat: records are read from the files as they are needed, and the steps pass on
what they keep as re-readable streams; the dedup steps hold the records they compare.
rated.jsonl, filtered.jsonl, the rejections and the exports are each written to a temporary
file and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from core.errors import StageInputError
from pipeline.stage import StageContext, StageSummary

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FilterSummary(StageSummary):
    """Counts through the filter steps, the judge's score counts, and the files written."""

    input: int = 0
    after_dedup: int = 0
    ifd: dict | None = None
    rated: int = 0
    kept: int = 0
    selection: str | None = None
    threshold: float | None = None
    top_k: int | None = None
    dropped: dict = dataclasses.field(default_factory=dict)
    counts: dict = dataclasses.field(default_factory=dict)
    histogram: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    judge: str | None = None
    exports: dict = dataclasses.field(default_factory=dict)
    filters: list = dataclasses.field(default_factory=list)  # the steps applied, in order
    decontamination: dict | None = None  # sets checked against, drops per set (filters.decontaminate)
    selected: dict | None = None  # a budget selection step's numbers (longest_k, random_k, complexity_quality)
    score_spread: dict | None = None  # how far the judge's scores rank the records (filters.judge.score_spread)


def iter_generated(path: Path) -> Iterator[dict]:
    """The records of generated.jsonl one at a time, each checked (errors name file, line and field)."""
    from core.records import check_fields, iter_jsonl, read_records

    with path.open("rb") as handle:
        is_json_list = handle.read(4096).lstrip().startswith(b"[")
    if is_json_list:  # a JSON list cannot be read a line at a time
        yield from read_records(path, required=("instruction", "output"), optional=("input",))
        return
    for number, value in iter_jsonl(path):
        yield check_fields(path, str(number), value, ("instruction", "output"), ("input",))


def checked_generated(generated: Path):
    """generated.jsonl as re-readable records, every record checked before any work; and their count."""
    from filters.base import Reiterable

    if not generated.is_file():
        raise StageInputError(f"{generated}: file not found; run the generate stage first")
    count = sum(1 for _ in iter_generated(generated))
    if not count:
        raise StageInputError(f"{generated}: no records (the file is empty)")
    return Reiterable(lambda: iter_generated(generated)), count


def export_filtered(config: PipelineConfig, rundir) -> dict[str, str]:
    """Write the kept records (read from filtered.jsonl) in every format the config asks for;
    return format -> path."""
    from core.records import iter_jsonl
    from finetune.export import DEFAULT_FILENAMES, export_records

    written = {}
    for fmt in config.export.formats:
        target = rundir.root / "export" / DEFAULT_FILENAMES[fmt]
        target.parent.mkdir(parents=True, exist_ok=True)
        export_records((record for _, record in iter_jsonl(rundir.filtered)), fmt, target,
                       system_prompt=config.export.chat_system_prompt)
        written[fmt] = str(target)
    return written


def decontamination_prompts(config: PipelineConfig) -> dict[str, list[dict]]:
    """The evaluation prompts the records are checked against, by set: `filter.decontaminate.against`,
    by default every set of `evaluate.sets`; heldout is left out (it is drawn from the filtered
    records themselves, after this stage)."""
    from eval.contamination import prompts_by_set

    settings = config.filter.decontaminate
    return prompts_by_set(settings.against or config.evaluate.sets) if settings.enabled else {}


class RatingSender:
    """Sends the judge's rating shards through the run's request path. Opened on first use, so a
    run whose filters never ask the judge opens no judge and no rating journal; on a rerun the
    budget meets the journaled ratings' spend again as they are reused, so a run stopped by its
    budget resumes to the same place instead of stopping before its first shard."""

    def __init__(self, context: StageContext):
        self.context = context
        self.spend = None

    def __call__(self, shards):
        from pipeline.requests import ReplayedSpend, send_shards

        context = self.context
        endpoint = context.config.judge_endpoint
        if self.spend is None:
            self.spend = ReplayedSpend(context.path, endpoint, "rate")
        return send_shards(self.spend.charging(context.send), context.path, context.models.judge(), endpoint, "rate",
                           shards)

    def settle(self) -> None:
        if self.spend is not None:
            self.spend.settle()


class FilterStage:
    """Drop near-duplicates (optional), rank by IFD (optional), rate pairs 0-5 with the judge
    (unless IFD replaces it) and keep the best by threshold or top K."""

    name = "filter"
    description = "rate and keep the best pairs"
    reads = ("generated.jsonl",)
    writes = ("rated.jsonl", "filtered.jsonl", "rejected.jsonl", "score_histogram.png", "score_examples.json",
              "export/", "work/rate_requests.jsonl", "work/ifd_scores.jsonl")
    sends_requests = True
    scales_out = True
    summary_type = FilterSummary

    def enabled(self, config: PipelineConfig) -> bool:
        return True

    def preflight(self, config: PipelineConfig) -> None:
        pass

    def endpoints(self, config: PipelineConfig) -> dict:
        """The judge, when its filter step is on (not with IFD instead of the judge)."""
        from filters.judge import JudgeFilter

        asks_judge = JudgeFilter().enabled(config.filter)
        return {"judge" if config.judge else "teacher": config.judge_endpoint} if asks_judge else {}

    def run(self, context: StageContext) -> FilterSummary:
        from core.records import atomic_file
        from filters.base import FilterContext, write_line
        from filters.judge import RATING_FIELDS
        from filters.registry import enabled_filters

        started = time.perf_counter()
        config, rundir = context.config, context.rundir
        settings = config.filter
        records, input_count = checked_generated(rundir.generated)
        after_dedup = input_count
        drop_counts: Counter = Counter()
        steps = enabled_filters(settings)
        sender = RatingSender(context)
        with atomic_file(rundir.stage_rejections("filter")) as rejected_out:
            def reject(rejection: dict) -> None:
                drop_counts[rejection["reason"]] += 1
                write_line(rejected_out, rejection)

            filter_context = FilterContext(
                settings=settings, work_dir=rundir.work, out_dir=rundir.root, rated_path=rundir.rated,
                cache_dir=context.cache_dir, reject=reject, send_ratings=sender,
                judge_identity=lambda: context.models.judge().identity,
                eval_prompts=decontamination_prompts(config))
            try:
                for step in steps:
                    log.info("filter: %s", step.name)
                    records = step.apply(records, filter_context)
                    if step.removes_duplicates:
                        after_dedup = len(records)
            finally:
                sender.settle()
            kept = 0
            with atomic_file(rundir.filtered) as filtered_out:
                for record in records:
                    write_line(filtered_out, {k: v for k, v in record.items() if k not in RATING_FIELDS})
                    kept += 1
        reported = filter_context.summary
        counts = reported.get("counts") or {}
        failed = counts.get("request_failed", 0)
        answered = sum(n for reason, n in counts.items() if reason.startswith(("score:", "unscored:")))
        if failed and not answered:  # no rating request was answered at all
            from pipeline.requests import stop_if_nothing_answered

            stop_if_nothing_answered(self.name, config.judge_endpoint, rundir.journal("rate"), failed)
        return FilterSummary(
            input=input_count, after_dedup=after_dedup, ifd=reported.get("ifd"), rated=reported.get("rated", 0),
            kept=kept, selection=reported.get("selection", settings.selection), threshold=settings.threshold,
            top_k=settings.top_k, dropped=dict(sorted(drop_counts.items())), counts=reported.get("counts", {}),
            histogram=reported.get("histogram"), prompt_tokens=reported.get("prompt_tokens", 0),
            completion_tokens=reported.get("completion_tokens", 0), judge=reported.get("judge"),
            exports=export_filtered(config, rundir), filters=[step.name for step in steps],
            decontamination=reported.get("decontamination"),
            selected=reported.get("selected"), score_spread=reported.get("score_spread"),
            seconds=round(time.perf_counter() - started, 2))
