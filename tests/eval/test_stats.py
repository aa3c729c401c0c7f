"""Tests for eval.stats.win_rate_ci."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.stats import WinRate, win_rate_ci


def test_known_counts():
    outcomes = ["win"] * 6 + ["tie"] * 2 + ["loss"] * 2 + ["invalid"] * 3
    result = win_rate_ci(outcomes)
    assert (result.wins, result.ties, result.losses, result.invalid) == (6, 2, 2, 3)
    assert result.n == 10
    assert result.win_rate == pytest.approx((6 + 0.5 * 2) / 10)
    assert 0.0 <= result.ci_low <= result.win_rate <= result.ci_high <= 1.0
    assert result.ci_low < result.ci_high


def test_all_ties_is_one_half_with_degenerate_interval():
    result = win_rate_ci(["tie"] * 20)
    assert result.win_rate == 0.5
    assert result.ci_low == result.ci_high == 0.5


def test_all_wins_and_all_losses():
    assert win_rate_ci(["win"] * 5).win_rate == 1.0
    assert win_rate_ci(["loss"] * 5 + ["invalid"]).win_rate == 0.0


def test_invalid_outcomes_do_not_count():
    with_invalid = win_rate_ci(["win", "loss", "invalid", "invalid"])
    without = win_rate_ci(["win", "loss"])
    assert with_invalid.n == without.n == 2
    assert with_invalid.win_rate == without.win_rate == 0.5
    assert (with_invalid.ci_low, with_invalid.ci_high) == (without.ci_low, without.ci_high)


def test_no_valid_outcomes():
    for outcomes in ([], ["invalid"] * 4):
        result = win_rate_ci(outcomes)
        assert result.n == 0
        assert result.win_rate is None
        assert result.ci_low is None and result.ci_high is None
    assert win_rate_ci(["invalid"] * 4).invalid == 4


def test_deterministic_given_seed():
    outcomes = ["win"] * 30 + ["tie"] * 10 + ["loss"] * 25
    assert win_rate_ci(outcomes, seed=7) == win_rate_ci(outcomes, seed=7)
    other = win_rate_ci(outcomes, seed=8)
    assert other.win_rate == win_rate_ci(outcomes, seed=7).win_rate


def test_order_of_outcomes_does_not_matter():
    outcomes = ["win"] * 12 + ["tie"] * 3 + ["loss"] * 9
    assert win_rate_ci(outcomes) == win_rate_ci(list(reversed(outcomes)))


def test_interval_narrows_with_more_data_and_lower_level():
    small = win_rate_ci(["win", "loss"] * 10)
    large = win_rate_ci(["win", "loss"] * 1000)
    assert large.ci_high - large.ci_low < small.ci_high - small.ci_low
    narrow = win_rate_ci(["win", "loss"] * 10, level=0.5)
    assert narrow.ci_high - narrow.ci_low < small.ci_high - small.ci_low


def test_interval_is_close_to_normal_approximation():
    # 400 outcomes at p = 0.5: the standard error is 0.025, so about +-0.049.
    result = win_rate_ci(["win", "loss"] * 200, n_boot=4000)
    assert result.ci_low == pytest.approx(0.451, abs=0.015)
    assert result.ci_high == pytest.approx(0.549, abs=0.015)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_boot": 0}, {"level": 0.0}, {"level": 1.0}, {"level": 1.5}],
)
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        win_rate_ci(["win"], **kwargs)


def test_rejects_unknown_outcome():
    with pytest.raises(ValueError):
        win_rate_ci(["win", "draw"])


def test_returns_plain_floats():
    result = win_rate_ci(["win", "tie", "loss"])
    assert isinstance(result, WinRate)
    assert type(result.win_rate) is float
    assert type(result.ci_low) is float and type(result.ci_high) is float


@settings(max_examples=200, deadline=None)
@given(
    wins=st.integers(0, 60),
    ties=st.integers(0, 60),
    losses=st.integers(0, 60),
    seed=st.integers(0, 2**32 - 1),
)
def test_interval_contains_point_estimate(wins, ties, losses, seed):
    outcomes = ["win"] * wins + ["tie"] * ties + ["loss"] * losses
    result = win_rate_ci(outcomes, n_boot=500, seed=seed)
    if result.n == 0:
        assert result.win_rate is None
    else:
        assert 0.0 <= result.ci_low <= result.win_rate <= result.ci_high <= 1.0
