"""AlpaGasus as a filter step: the judge rates every pair 0-5 (`filters.rate`), the ratings go
to rated.jsonl shard by shard, and the pairs at or above the threshold (or the best K) are kept.

Memory stays flat: rating requests are built one shard at a time and each shard's ratings
are written out as they arrive; what is held for the whole run is one number per record
(its score) for ranking and the histogram. rated.jsonl is written to a temporary file and
renamed when complete.
"""

from __future__ import annotations

import itertools
import logging
import math
from array import array
from collections import Counter, deque
from typing import IO, TYPE_CHECKING, Iterable, Iterator

import prompts
from core.records import atomic_file, iter_jsonl, write_json
from filters.base import Reiterable, write_line

if TYPE_CHECKING:
    from filters.base import FilterContext, Records, Reject, SendShards
    from filters.config import FilterConfig

log = logging.getLogger(__name__)

# Fields the filter steps add to a record; stripped from the kept records.
RATING_FIELDS = ("score", "explanation", "rating_problem", "judge_reply", "ifd")
# Selections that rank by the judge's scores in a step of their own after the judge
# (filters.selection); the judge then keeps every scored record. Those not named here and not
# the judge's own (threshold, top_k) need no judge: it is not asked and not paid.
SCORES_FOR_A_LATER_STEP = ("complexity_quality",)
JUDGED_SELECTIONS = ("threshold", "top_k", *SCORES_FOR_A_LATER_STEP)
# The judge barely ranks the records when at least this share of the scored ones got one and the
# same score (with at least SPREAD_MIN_SCORED scored): top K then keeps a near-random subset.
SAME_SCORE_SHARE = 0.8
SPREAD_MIN_SCORED = 10


def score_spread(scores: Iterable[float]) -> dict | None:
    """How far the judge's scores rank the records: how many were scored, how many distinct
    scores it gave, its most common score with that score's count and share, and whether the
    ratings are informative (False when one score covers SAME_SCORE_SHARE or more of
    SPREAD_MIN_SCORED or more records). None when nothing was scored."""
    counts = Counter(score for score in scores if not math.isnan(score))
    scored = sum(counts.values())
    if not scored:
        return None
    score, most = max(counts.items(), key=lambda item: (item[1], -item[0]))
    share = most / scored
    return {"scored": scored, "distinct_scores": len(counts), "most_common_score": score,
            "most_common_count": most, "most_common_share": round(share, 4),
            "informative": not (scored >= SPREAD_MIN_SCORED and share >= SAME_SCORE_SHARE)}


def chunked(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last one shorter)."""
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


class RatingTally:
    """What the rating pass keeps for later: one score per rated record (NaN: unscored), the
    examples for the report, the rating counts and the tokens spent."""

    def __init__(self, examples_per_score: int):
        from filters.histogram import ScoreExamples

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


def rate_in_shards(settings: "FilterConfig", send_ratings: "SendShards", records: Iterable[dict],
                   rated_out: IO[str], reject: "Reject") -> RatingTally:
    """Rate the records shard by shard: each shard's requests are built when it is sent, and its
    ratings written to `rated_out` (failures to `reject`) as its outcomes arrive, in order."""
    from filters.rate import RATING_TEMPLATE, apply_ratings, rating_requests

    template = prompts.load_template(RATING_TEMPLATE)
    tally = RatingTally(settings.examples_per_score)
    records = iter(records)
    sent: deque[list[dict]] = deque()  # the records of each shard handed out and not yet answered

    def request_shards() -> Iterator[list]:
        for chunk in chunked(records, settings.requests_per_shard):
            sent.append(chunk)
            yield rating_requests(chunk, template, settings)

    def take(chunk: list[dict], outcomes: list) -> None:
        ratings = apply_ratings(chunk, outcomes)
        for entry in ratings["rated"]:
            tally.add_rated(entry, rated_out)
        for rejection in ratings["not_rated"]:
            reject(rejection)
        tally.counts.update(ratings["counts"])

    for outcomes in send_ratings(request_shards()):
        take(sent.popleft(), outcomes)
        for outcome in outcomes:
            if outcome.ok:
                tally.tokens["prompt_tokens"] += outcome.prompt_tokens
                tally.tokens["completion_tokens"] += outcome.completion_tokens
        log.info("filter: %d records rated", len(tally.scores))
    # The budget ran out: a shard handed out but not sent, and every record after it, stay unrated.
    for chunk in itertools.chain(sent, chunked(records, settings.requests_per_shard)):
        take(chunk, [])
    return tally


def selection_rejection(drop: dict) -> dict:
    """A rejections entry for a rated record that selection dropped."""
    return {"id": drop.get("id"), "stage": "filter", "reason": drop["reason"], "score": drop.get("score"),
            "judge_reply": drop.get("judge_reply"),
            "record": {k: v for k, v in drop.items() if k not in (*RATING_FIELDS, "reason")}}


def selection(settings: "FilterConfig", scores: array):
    """The keep-or-drop rule over rated records: `decide(position, record)` is None to keep, else
    the dropped copy with its reason (by the threshold, or by rank among the scores for top K)."""
    from filters.select import threshold_decision, top_k_ranking

    if settings.selection == "top_k":
        return top_k_ranking(scores, settings.top_k).decision
    if settings.selection in SCORES_FOR_A_LATER_STEP:  # every scored record goes on to that step
        return lambda _, record: threshold_decision(record, -math.inf)

    def decide(_: int, record: dict) -> dict | None:
        return threshold_decision(record, settings.threshold)
    return decide


def kept_rated(rated, decide) -> Iterator[dict]:
    """The rated records that `decide` keeps, read from rated.jsonl."""
    for position, (_, entry) in enumerate(iter_jsonl(rated)):
        if decide(position, entry) is None:
            yield entry


class JudgeFilter:
    """AlpaGasus: the judge (the teacher unless `judge:` names another model) rates each pair
    0-5 for accuracy and helpfulness; `selection: threshold` keeps pairs at or above
    `filter.threshold` (4.5), `selection: top_k` the best `top_k`; with `complexity_quality`
    every scored pair goes on to that step. A reply without a readable score is kept out and
    counted, never read as 0 or 5. Off when IFD replaces the judge, and for selections that
    need no score (longest_k, random_k)."""

    name = "judge"
    description = "an LLM judge rates each pair 0-5 (AlpaGasus); the best are kept by threshold or top K"
    removes_duplicates = False

    def enabled(self, settings: "FilterConfig") -> bool:
        if settings.selection not in JUDGED_SELECTIONS:  # longest_k, random_k: no judge is asked
            return False
        return not (settings.ifd.enabled and settings.ifd.mode == "instead_of_judge")

    def apply(self, records: "Records", context: "FilterContext") -> "Records":
        from filters.histogram import score_histogram_png

        settings = context.settings
        with atomic_file(context.rated_path) as rated_out:
            tally = rate_in_shards(settings, context.send_ratings, records, rated_out, context.reject)
        decide = selection(settings, tally.scores)
        for position, (_, entry) in enumerate(iter_jsonl(context.rated_path)):
            drop = decide(position, entry)
            if drop is not None:
                context.reject(selection_rejection(drop))
        histogram = context.out_dir / "score_histogram.png"
        score_histogram_png(tally.scores, histogram,
                            threshold=settings.threshold if settings.selection == "threshold" else None)
        write_json(context.out_dir / "score_examples.json", tally.examples.examples())
        spread = score_spread(tally.scores)
        if spread and not spread["informative"]:
            log.warning("filter: the judge gave %d of %d scored records the score %g: its ratings barely rank "
                        "them (a stronger judge, `judge:`, would)", spread["most_common_count"], spread["scored"],
                        spread["most_common_score"])
        context.summary.update(rated=tally.scored, score_spread=spread, selection=settings.selection,
                               counts=dict(sorted(tally.counts.items())), histogram=str(histogram),
                               judge=context.judge_identity() if context.judge_identity else None, **tally.tokens)
        return Reiterable(lambda: kept_rated(context.rated_path, decide))
