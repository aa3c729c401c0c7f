"""Choosing which rated records to keep: by a score threshold, or the best K (a budget).

Both functions take rated records, i.e. dicts with a ``score`` key holding the judge's
0-5 rating, or None when the judge's reply had no readable score (the ``rated`` list of
``quality.rate.apply_ratings``). A record without a number for a score is never selected.

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

__all__ = ["record_score", "select_by_threshold", "select_top_k"]


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


def select_by_threshold(rated: list[dict], threshold: float) -> tuple[list[dict], list[dict]]:
    """Keep the records scored at or above ``threshold`` (AlpaGasus keeps >= 4.5)."""
    kept: list[dict] = []
    dropped: list[dict] = []
    for record in rated:
        score = record_score(record)
        if score is None:
            dropped.append(_unscored(record))
        elif score >= threshold:
            kept.append(record)
        else:
            dropped.append({**record, "reason": "below_threshold", "threshold": threshold})
    return kept, dropped


def select_top_k(rated: list[dict], k: int) -> tuple[list[dict], list[dict]]:
    """Keep the ``k`` best-scored records (budget mode).

    Records are ranked by score, highest first; equal scores rank in input order, so the
    earlier record wins a tie at the cut. Fewer than ``k`` records are kept when fewer
    have a score. The kept records are returned in input order, not rank order.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")

    scored = [(position, score) for position, record in enumerate(rated)
              if (score := record_score(record)) is not None]
    ranking = sorted(scored, key=lambda item: -item[1])  # sorted() is stable: input order on ties
    rank_of = {position: rank for rank, (position, _) in enumerate(ranking, start=1)}
    # The lowest kept score; it matters only when some scored record is left out (k < len).
    cutoff_score = ranking[k - 1][1] if 0 < k <= len(ranking) else None

    kept: list[dict] = []
    dropped: list[dict] = []
    for position, record in enumerate(rated):
        rank = rank_of.get(position)
        if rank is None:
            dropped.append(_unscored(record))
        elif rank <= k:
            kept.append(record)
        else:
            dropped.append({**record, "reason": "below_top_k", "rank": rank, "k": k,
                            "cutoff_score": cutoff_score})
    return kept, dropped
