"""How far the filter judge's scores rank the records (filters.judge.score_spread)."""

import math

from filters.judge import score_spread


def test_one_score_for_nearly_every_record_is_not_informative():
    spread = score_spread([0.5] * 40 + [1.0] * 5 + [math.nan] * 3 + [4.0] * 3)
    assert spread == {"scored": 48, "distinct_scores": 3, "most_common_score": 0.5,
                      "most_common_count": 40, "most_common_share": 0.8333,
                      "informative": False}


def test_spread_scores_and_small_counts_are_informative():
    assert score_spread([5, 4.5, 4, 3, 4.5, 2, 5, 4.5, 1, 4])["informative"] is True
    assert score_spread([4.5] * 9)["informative"] is True  # too few scored to tell
    assert score_spread([4.5] * 10)["informative"] is False
    # A tie for the most common score names the lower one, whatever the order.
    assert score_spread([5, 1, 5, 1])["most_common_score"] == 1
    assert score_spread([math.nan, math.nan]) is None and score_spread([]) is None
