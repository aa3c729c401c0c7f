"""Choosing which rated records to keep: by a score threshold, or the best K (a budget).

Both functions take rated records, i.e. dicts with a ``score`` key holding the judge's
0-5 rating, or None when the judge's reply had no readable score (the ``rated`` list of
``filters.rate.apply_ratings``). A record without a number for a score is never selected.

Both return ``(kept, dropped)``:

* ``kept``: the selected records themselves, in input order;
* ``dropped``: for every other record, a shallow copy of it with a ``reason`` string added
  (and the numbers behind that reason), in input order.

Reasons:

* ``"unscored"``, or ``"unscored:<problem>"`` when the record carries ``rating_problem``;
* ``"below_threshold"`` (with ``threshold``) from ``select_by_threshold``;
* ``"below_top_k"`` (with ``rank``, ``k`` and ``cutoff_score``, the lowest kept score)
  from ``select_top_k``.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

__all__ = ["TopKRanking", "record_score", "select_by_threshold", "select_top_k", "split_by_decision",
           "threshold_decision", "top_k_ranking"]


def record_score(record: dict) -> float | None:
    """The record's score as a float, or None when it has no usable number (None, NaN, ...)."""
    score = record.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        return None
    score = float(score)
    return None if math.isnan(score) else score


def _unscored(record: dict) -> dict:
    problem = record.get("rating_problem")
    return {**record, "reason": f"unscored:{problem}" if problem else "unscored"}


def threshold_decision(record: dict, threshold: float) -> dict | None:
    """None when ``threshold`` keeps the record, else its dropped copy with the reason."""
    score = record_score(record)
    if score is None:
        return _unscored(record)
    if score >= threshold:
        return None
    return {**record, "reason": "below_threshold", "threshold": threshold}


def select_by_threshold(rated: list[dict], threshold: float) -> tuple[list[dict], list[dict]]:
    """Keep the records scored at or above ``threshold`` (AlpaGasus keeps >= 4.5)."""
    return split_by_decision(rated, lambda _, record: threshold_decision(record, threshold))


@dataclass(frozen=True)
class TopKRanking:
    """Where each scored record ranks (1: best; 0: unscored), the budget ``k`` and the lowest
    kept score. Built from scores alone, so a stage can rank a corpus it does not hold."""

    ranks: array
    k: int
    cutoff_score: float | None
    reason: str = "below_top_k"  # the reason a scored record past the cut is dropped with

    def decision(self, position: int, record: dict) -> dict | None:
        """None when the record at ``position`` is among the best ``k``, else its dropped copy."""
        rank = self.ranks[position]
        if rank == 0:
            return _unscored(record)
        if rank <= self.k:
            return None
        return {**record, "reason": self.reason, "rank": rank, "k": self.k, "cutoff_score": self.cutoff_score}


def top_k_ranking(scores: Sequence[float | None], k: int, reason: str = "below_top_k") -> TopKRanking:
    """Rank scores highest first (equal scores in input order, so the earlier record wins a
    tie at the cut); None and NaN are unscored and never ranked. Any number ranks: a judge's
    score, a response's length (longest-K), a complexity x quality product; `reason` names
    the drop of a ranked record past the cut."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    values = [record_score({"score": score}) for score in scores]
    ranking = sorted((position for position, value in enumerate(values) if value is not None),
                     key=lambda position: -values[position])  # sorted() is stable: input order on ties
    ranks = array("q", bytes(8 * len(values)))
    for rank, position in enumerate(ranking, start=1):
        ranks[position] = rank
    # The lowest kept score; it matters only when some scored record is left out (k < len).
    cutoff_score = values[ranking[k - 1]] if 0 < k <= len(ranking) else None
    return TopKRanking(ranks, k, cutoff_score, reason)


def select_top_k(rated: list[dict], k: int) -> tuple[list[dict], list[dict]]:
    """Keep the ``k`` best-scored records (budget mode).

    Records are ranked by score, highest first; equal scores rank in input order, so the
    earlier record wins a tie at the cut. Fewer than ``k`` records are kept when fewer
    have a score. The kept records are returned in input order, not rank order.
    """
    return split_by_decision(rated, top_k_ranking([record.get("score") for record in rated], k).decision)


def split_by_decision(records: Iterable[dict], decide: Callable[[int, dict], dict | None]) -> tuple[list[dict], list[dict]]:
    """(kept, dropped) by ``decide(position, record)``: None keeps the record, a dict is its drop."""
    kept: list[dict] = []
    dropped: list[dict] = []
    for position, record in enumerate(records):
        drop = decide(position, record)
        if drop is None:
            kept.append(record)
        else:
            dropped.append(drop)
    return kept, dropped
