"""Tests for filters.select."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters.select import record_score, select_by_threshold, select_top_k


def rated(*scores) -> list[dict]:
    return [{"id": f"r{i}", "instruction": f"task {i}", "score": score} for i, score in enumerate(scores)]


def ids(records: list[dict]) -> list[str]:
    return [record["id"] for record in records]


def test_record_score():
    assert record_score({"score": 4}) == 4.0
    assert record_score({"score": 4.5}) == 4.5
    for missing in ({}, {"score": None}, {"score": math.nan}, {"score": "5"}, {"score": True}):
        assert record_score(missing) is None


def test_threshold_keeps_scores_at_or_above_it_in_input_order():
    records = rated(5, 4.5, None, 3, 4.49, 4.5)
    records[2]["rating_problem"] = "no_score"
    before = copy.deepcopy(records)
    kept, dropped = select_by_threshold(records, 4.5)

    assert ids(kept) == ["r0", "r1", "r5"]
    assert kept[0] is records[0]
    assert [(d["id"], d["reason"]) for d in dropped] == [
        ("r2", "unscored:no_score"), ("r3", "below_threshold"), ("r4", "below_threshold"),
    ]
    assert dropped[1]["threshold"] == 4.5 and dropped[1]["score"] == 3
    assert records == before  # the input records are not modified


def test_threshold_zero_keeps_every_scored_record():
    kept, dropped = select_by_threshold(rated(0, None, 2.5, math.nan), 0)
    assert ids(kept) == ["r0", "r2"]
    assert [d["reason"] for d in dropped] == ["unscored", "unscored"]


def test_top_k_keeps_the_best_with_ties_broken_by_input_order():
    records = rated(3, 5, 4, None, 5, 4, 4, 2)
    kept, dropped = select_top_k(records, 4)
    # Ranking: r1 (5), r4 (5), r2 (4), r5 (4), r6 (4), r0 (3), r7 (2); r3 is unscored.
    assert ids(kept) == ["r1", "r2", "r4", "r5"]  # input order
    reasons = {d["id"]: d for d in dropped}
    assert reasons["r3"]["reason"] == "unscored"
    assert reasons["r6"]["reason"] == "below_top_k"
    assert (reasons["r6"]["rank"], reasons["r6"]["k"], reasons["r6"]["cutoff_score"]) == (5, 4, 4)
    assert reasons["r0"]["rank"] == 6 and reasons["r7"]["rank"] == 7
    assert ids(dropped) == ["r0", "r3", "r6", "r7"]


def test_top_k_bounds():
    records = rated(1, None, 2)
    kept, dropped = select_top_k(records, 10)
    assert ids(kept) == ["r0", "r2"]  # an unscored record is never selected, even with room
    assert [d["reason"] for d in dropped] == ["unscored"]

    kept, dropped = select_top_k(records, 0)
    assert kept == []
    assert [d["reason"] for d in dropped] == ["below_top_k", "unscored", "below_top_k"]
    assert dropped[0]["cutoff_score"] is None

    assert select_top_k([], 3) == ([], [])
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError):
            select_top_k(records, bad)


scores = st.lists(
    st.one_of(st.none(), st.sampled_from([0, 1, 2, 2.5, 3, 3.5, 4, 4.5, 5]), st.floats(0, 5)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(scores, st.integers(0, 50))
def test_top_k_properties(values, k):
    records = rated(*values)
    kept, dropped = select_top_k(records, k)
    scored = [r for r in records if r["score"] is not None]

    assert len(kept) == min(k, len(scored))
    assert sorted(ids(kept) + ids(dropped), key=lambda i: int(i[1:])) == ids(records)
    assert ids(kept) == [r["id"] for r in records if r in kept]  # input order
    lowest_kept = min((r["score"] for r in kept), default=math.inf)
    for d in dropped:
        if d["reason"] == "below_top_k":
            # Nothing dropped outscores anything kept; on a tie the kept one came first.
            assert d["score"] <= lowest_kept
            if d["score"] == lowest_kept:
                last_tied_kept = max(int(r["id"][1:]) for r in kept if r["score"] == lowest_kept)
                assert int(d["id"][1:]) > last_tied_kept


@settings(max_examples=200, deadline=None)
@given(scores, st.sampled_from([0, 2.5, 4, 4.5, 5]))
def test_threshold_and_top_k_agree(values, threshold):
    """Keeping the top K, with K the number at or above the threshold, keeps the same records."""
    records = rated(*values)
    kept, _ = select_by_threshold(records, threshold)
    assert ids(select_top_k(records, len(kept))[0]) == ids(kept)
