"""The filter stage: near-duplicate drops, the IFD ranking, judge ratings, selection, exports.

Read top to bottom, `filter_stage` does:

1. dedup (optional): MinHash and embedding near-duplicates are dropped before anything is paid for;
2. IFD (optional, `filter.ifd`): a small model scores every record's instruction-following
   difficulty (Superfiltering); before the judge it keeps its share for rating, instead of
   the judge its selection is the output. Scores are journaled under work/ by record content;
3. rating (unless IFD replaces it): rating requests are built one shard at a time, and each
   shard's ratings go straight to rated.jsonl and its failures to the rejections;
4. selection: rated.jsonl is read back once and each record is kept or dropped by the
   threshold, or by its rank among the scores (top K).

Memory stays flat: records are read from the files as they are needed; what is held for
the whole run is one number per record (its score, its IFD) for ranking and the histogram.
rated.jsonl, filtered.jsonl, the rejections and the exports are each written to a temporary
file and renamed when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import time
from array import array
from collections import Counter, deque
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterable, Iterator

from backends.base import ChatBackend
from distill.config import IfdConfig, PipelineConfig
from distill.records import Journal, atomic_file, check_fields, iter_jsonl, read_records, write_json
from distill.rundir import RunDir
from distill.stages.session import (ReplayedSpend, RequestPath, SendShard, StageInputError, send_shard,
                                    send_shards, tokens_of)

if TYPE_CHECKING:
    from quality.ifd import IfdRanking

log = logging.getLogger(__name__)

# Fields the filter adds to a record; stripped from the kept records.
RATING_FIELDS = ("score", "explanation", "rating_problem", "judge_reply", "ifd")
IFD_DETAILS = ("ifd", "rank", "k", "cutoff_ifd", "max_ifd")
IFD_JOURNAL = "ifd_scores.jsonl"
# Records IFD-scored per call of quality.ifd.ifd_scores (sorted by length within it).
IFD_RECORDS_PER_CALL = 256

Reject = Callable[[dict], None]


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch CPU threads (0: torch's default), then restore the old number."""
    import torch

    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def iter_generated(path: Path) -> Iterator[dict]:
    """The records of generated.jsonl one at a time, each checked (errors name file, line and field)."""
    with path.open("rb") as handle:
        is_json_list = handle.read(4096).lstrip().startswith(b"[")
    if is_json_list:  # a JSON list cannot be read a line at a time
        yield from read_records(path, required=("instruction", "output"), optional=("input",))
        return
    for number, value in iter_jsonl(path):
        yield check_fields(path, str(number), value, ("instruction", "output"), ("input",))


def near_duplicate_drops(config: PipelineConfig, records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Optional MinHash and embedding near-duplicate removal before rating (no judge calls spent on them)."""
    settings = config.filter
    rejected: list[dict] = []
    if settings.minhash_dedup:
        from quality.minhash_dedup import minhash_dedup

        texts = [f"{r['instruction']}\n{r.get('input', '')}" for r in records]
        results = minhash_dedup(texts, settings.minhash_threshold, settings.minhash_num_perm,
                                settings.minhash_shingle_size)
        rejected += [{"id": r.get("id"), "stage": "filter", "reason": "minhash_duplicate",
                      "nearest": records[d.nearest_index].get("id"), "jaccard": d.jaccard, "record": r}
                     for r, d in zip(records, results) if not d.kept]
        records = [r for r, d in zip(records, results) if d.kept]
    if settings.semantic_dedup:
        from quality.semantic_dedup import record_text, semantic_dedup

        with torch_threads(settings.embedding_threads):
            results = semantic_dedup([record_text(r) for r in records], settings.semantic_threshold)
        rejected += [{"id": r.get("id"), "stage": "filter", "reason": "semantic_duplicate",
                      "nearest": records[d.nearest_index].get("id"), "similarity": d.similarity, "record": r}
                     for r, d in zip(records, results) if not d.kept]
        records = [r for r, d in zip(records, results) if d.kept]
    return records, rejected


class Candidates:
    """The records left after near-duplicate removal, readable as often as needed: straight
    from generated.jsonl when no dedup is on (nothing held), else from the deduplicated list
    (dedup compares records with each other, so it holds them)."""

    def __init__(self, config: PipelineConfig, generated: Path):
        if not generated.is_file():
            raise StageInputError(f"{generated}: file not found; run the generate stage first")
        self.generated = generated
        self.input_count = sum(1 for _ in iter_generated(generated))  # checks every record before work starts
        if not self.input_count:
            raise StageInputError(f"{generated}: no records (the file is empty)")
        self.duplicates: list[dict] = []
        self._deduplicated: list[dict] | None = None
        if config.filter.minhash_dedup or config.filter.semantic_dedup:
            self._deduplicated, self.duplicates = near_duplicate_drops(config, list(iter_generated(generated)))

    def __len__(self) -> int:
        return self.input_count - len(self.duplicates)

    def __iter__(self) -> Iterator[dict]:
        return iter(self._deduplicated) if self._deduplicated is not None else iter_generated(self.generated)


def chunked(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last one shorter)."""
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def write_line(handle: IO[str], value: dict) -> None:
    """Append one JSONL line (the format of distill.records.write_jsonl)."""
    handle.write(json.dumps(value, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- IFD
def ifd_cache_key(settings: IfdConfig, record: dict) -> str:
    """The journal key of a record's IFD: its content and every setting that changes the score."""
    from quality.rate import record_key

    scorer = json.dumps([settings.model, settings.prompt_format, settings.max_length])
    return f"ifd-{hashlib.sha256(scorer.encode('utf-8')).hexdigest()[:12]}-{record_key(record)}"


def load_ifd_scorer(settings: IfdConfig, cache_dir: Path | None):
    """(model, tokenizer) for IFD; a model directory that does not exist is a clear error."""
    from quality.ifd import load_ifd_model

    if settings.model != "embedded" and not Path(settings.model).is_dir():
        raise StageInputError(f"filter.ifd.model: {settings.model} is not a model directory "
                              "(use 'embedded' or a local Hugging Face causal-LM directory)")
    return load_ifd_model(settings.model, cache_dir)


def score_ifd(settings: IfdConfig, candidates: Iterable[dict], journal: Journal,
              cache_dir: Path | None) -> tuple[array, Counter]:
    """The IFD of every candidate (NaN where none can be computed), in order, and how many were
    computed and reused. A score already in the journal is reused; the model is loaded only
    when some record has none."""
    from quality.ifd import ifd_scores

    values, tally = array("d"), Counter()
    scorer = None
    for chunk in chunked(enumerate(candidates), IFD_RECORDS_PER_CALL):
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


def ifd_survivors(candidates: Iterable[dict], ranking: IfdRanking, reject: Reject) -> Iterator[dict]:
    """The records the IFD ranking keeps, each carrying its `ifd`; the others go to `reject`."""
    for position, record in enumerate(candidates):
        drop = ranking.decision(position, record)
        if drop is None:
            yield {**record, "ifd": ranking.value(position)}
        else:
            reject(ifd_rejection(drop))


# ----------------------------------------------------------------------------- rating
class RatingTally:
    """What the rating pass keeps for later: one score per rated record (NaN: unscored), the
    examples for the report, the rating counts and the tokens spent."""

    def __init__(self, examples_per_score: int):
        from quality.histogram import ScoreExamples

        self.scores = array("d")
        self.examples = ScoreExamples(examples_per_score)
        self.counts: Counter = Counter()
        self.tokens = {"prompt_tokens": 0, "completion_tokens": 0}

    def add_rated(self, entry: dict, rated_out: IO[str]) -> None:
        self.examples.add(len(self.scores), entry)
        self.scores.append(math.nan if entry["score"] is None else entry["score"])
        write_line(rated_out, entry)

    @property
    def scored(self) -> int:
        return sum(1 for score in self.scores if not math.isnan(score))


def rate_in_shards(config: PipelineConfig, judge: ChatBackend, path: RequestPath, send: SendShard,
                   records: Iterable[dict], rated_out: IO[str], reject: Reject) -> RatingTally:
    """Rate the records shard by shard: each shard's requests are built when it is sent, and its
    ratings written to `rated_out` (failures to `reject`) as its outcomes arrive, in order."""
    from quality.rate import RATING_TEMPLATE, apply_ratings, rating_requests

    settings = config.filter
    template = RATING_TEMPLATE.read_text(encoding="utf-8")
    tally = RatingTally(settings.examples_per_score)
    records = iter(records)
    sent: deque[list[dict]] = deque()  # the records of each shard handed out and not yet answered

    def request_shards() -> Iterator[list]:
        for chunk in chunked(records, settings.requests_per_shard):
            sent.append(chunk)
            yield rating_requests(chunk, template, settings)

    def take(chunk: list[dict], outcomes: list[dict]) -> None:
        ratings = apply_ratings(chunk, outcomes)
        for entry in ratings["rated"]:
            tally.add_rated(entry, rated_out)
        for rejection in ratings["not_rated"]:
            reject(rejection)
        tally.counts.update(ratings["counts"])

    # On a rerun the budget meets the journaled ratings' spend again as they are reused, so a
    # run stopped by its budget resumes to the same place instead of stopping before its first shard.
    spend = ReplayedSpend(path, config.judge_endpoint, "rate")
    try:
        for outcomes in send_shards(spend.charging(send), path, judge, config.judge_endpoint, "rate",
                                    request_shards()):
            take(sent.popleft(), outcomes)
            for name, count in tokens_of(outcomes).items():
                tally.tokens[name] += count
            log.info("filter: %d records rated", len(tally.scores))
    finally:
        spend.settle()
    # The budget ran out: a shard handed out but not sent, and every record after it, stay unrated.
    for chunk in itertools.chain(sent, chunked(records, settings.requests_per_shard)):
        take(chunk, [])
    return tally


# ----------------------------------------------------------------------------- selection
def selection_rejection(drop: dict) -> dict:
    """A rejections entry for a rated record that selection dropped."""
    return {"id": drop.get("id"), "stage": "filter", "reason": drop["reason"], "score": drop.get("score"),
            "judge_reply": drop.get("judge_reply"),
            "record": {k: v for k, v in drop.items() if k not in (*RATING_FIELDS, "reason")}}


def select_rated(config: PipelineConfig, rated: Path, scores: array, filtered_out: IO[str], reject: Reject) -> int:
    """Keep or drop every record of rated.jsonl by the threshold or its top-K rank; return the kept count."""
    from quality.select import threshold_decision, top_k_ranking

    settings = config.filter
    if settings.selection == "top_k":
        decide = top_k_ranking(scores, settings.top_k).decision
    else:
        def decide(_: int, record: dict) -> dict | None:
            return threshold_decision(record, settings.threshold)
    kept = 0
    for position, (_, entry) in enumerate(iter_jsonl(rated)):
        drop = decide(position, entry)
        if drop is None:
            write_line(filtered_out, {k: v for k, v in entry.items() if k not in RATING_FIELDS})
            kept += 1
        else:
            reject(selection_rejection(drop))
    return kept


def select_by_ifd_only(candidates: Iterable[dict], ranking: IfdRanking, rated_out: IO[str], filtered_out: IO[str],
                       reject: Reject) -> int:
    """IFD instead of the judge: every candidate goes to rated.jsonl with its IFD, the ones the
    ranking keeps to filtered.jsonl; return the kept count."""
    kept = 0
    for position, record in enumerate(candidates):
        write_line(rated_out, {**record, "ifd": ranking.value(position)})
        drop = ranking.decision(position, record)
        if drop is None:
            write_line(filtered_out, record)
            kept += 1
        else:
            reject(ifd_rejection(drop))
    return kept


# ----------------------------------------------------------------------------- the stage
def filter_stage(config: PipelineConfig, rundir: RunDir, judge: ChatBackend, path: RequestPath,
                 send: SendShard = send_shard, cache_dir: Path | None = None) -> dict:
    """Drop near-duplicates (optional), rank by IFD (optional), rate pairs 0-5 with the judge
    (unless IFD replaces it) and keep the best by threshold or top K. `cache_dir` holds the
    embedded IFD model (default ~/.cache/distill)."""
    from quality.histogram import score_histogram_png
    from quality.ifd import ifd_ranking

    started = time.perf_counter()
    settings = config.filter
    candidates = Candidates(config, rundir.generated)
    drop_counts: Counter = Counter()
    ranking, ifd_tally = None, Counter()
    tally = RatingTally(settings.examples_per_score)

    with atomic_file(rundir.stage_rejections("filter")) as rejected_out:
        def reject(rejection: dict) -> None:
            drop_counts[rejection["reason"]] += 1
            write_line(rejected_out, rejection)

        for duplicate in candidates.duplicates:
            reject(duplicate)
        if settings.ifd.enabled:
            with Journal(rundir.work / IFD_JOURNAL) as journal:
                values, ifd_tally = score_ifd(settings.ifd, candidates, journal, cache_dir)
            ranking = ifd_ranking(values, settings.ifd.keep_fraction, settings.ifd.top_k,
                                  settings.ifd.drop_at_or_above)
        if ranking is not None and settings.ifd.mode == "instead_of_judge":
            with atomic_file(rundir.rated) as rated_out, atomic_file(rundir.filtered) as filtered_out:
                kept = select_by_ifd_only(candidates, ranking, rated_out, filtered_out, reject)
        else:
            to_rate = candidates if ranking is None else ifd_survivors(candidates, ranking, reject)
            with atomic_file(rundir.rated) as rated_out:
                tally = rate_in_shards(config, judge, path, send, to_rate, rated_out, reject)
            with atomic_file(rundir.filtered) as filtered_out:
                kept = select_rated(config, rundir.rated, tally.scores, filtered_out, reject)
    rundir.merge_rejections()

    judged = ranking is None or settings.ifd.mode == "before_judge"
    histogram = rundir.root / "score_histogram.png"
    if judged:
        score_histogram_png(tally.scores, histogram,
                            threshold=settings.threshold if settings.selection == "threshold" else None)
        write_json(rundir.root / "score_examples.json", tally.examples.examples())
    exports = export_filtered(config, rundir)
    summary = {
        "input": candidates.input_count, "after_dedup": len(candidates),
        "ifd": ifd_summary(settings.ifd, ranking, ifd_tally) if ranking is not None else None,
        "rated": tally.scored, "kept": kept,
        "selection": settings.selection if judged else "ifd", "threshold": settings.threshold,
        "top_k": settings.top_k, "dropped": dict(sorted(drop_counts.items())),
        "counts": dict(sorted(tally.counts.items())), "histogram": str(histogram) if judged else None,
        **tally.tokens, "seconds": round(time.perf_counter() - started, 2),
        "judge": judge.identity if judged else None, "exports": exports,
    }
    rundir.mark_done("filter", summary)
    return summary


def ifd_summary(settings: IfdConfig, ranking: IfdRanking, tally: Counter) -> dict:
    """The IFD step's settings and counts for the stage summary."""
    unscored = sum(1 for value in ranking.values if math.isnan(value))
    return {"mode": settings.mode, "model": settings.model, "keep_fraction": settings.keep_fraction,
            "top_k": settings.top_k, "drop_at_or_above": settings.drop_at_or_above,
            "scored": len(ranking.values) - unscored, "unscored": unscored,
            "computed": tally["computed"], "reused": tally["reused"],
            "kept": sum(1 for rank in ranking.ranks if 0 < rank <= ranking.limit),
            "cutoff_ifd": ranking.cutoff_ifd}


def export_filtered(config: PipelineConfig, rundir: RunDir) -> dict[str, str]:
    """Write the kept records (read from filtered.jsonl) in every format the config asks for;
    return format -> path."""
    from selfinstruct.export import DEFAULT_FILENAMES, export_records

    written = {}
    for fmt in config.export.formats:
        target = rundir.root / "export" / DEFAULT_FILENAMES[fmt]
        target.parent.mkdir(parents=True, exist_ok=True)
        export_records((record for _, record in iter_jsonl(rundir.filtered)), fmt, target,
                       system_prompt=config.export.chat_system_prompt)
        written[fmt] = str(target)
    return written
