"""Win rate of the student against the teacher, with a bootstrap interval. (The
length-controlled win rate, AlpacaEval 2's, is eval.length_control.)

Formula (the AlpacaEval / AlpaGasus convention, a tie counts half)::

    win_rate = (wins + 0.5 * ties) / (wins + ties + losses)

``"invalid"`` outcomes (a pair where a judge reply could not be read) are
counted and reported but left out of ``n`` and of the rate.

The interval is a percentile bootstrap: the ``n`` valid outcomes are resampled
with replacement ``n_boot`` times (drawn as one multinomial over the
win/tie/loss counts, which is the same distribution and cheap for any ``n``),
the rate is recomputed for each resample, and the ``(1 - level) / 2`` and
``(1 + level) / 2`` quantiles of those rates are the bounds.  The result is
deterministic for a given ``seed``.  With no valid outcome the rate and its
bounds are ``None`` rather than NaN.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

OUTCOMES = ("win", "tie", "loss", "invalid")


@dataclass(frozen=True)
class WinRate:
    """Win/tie/loss counts, the win rate and its bootstrap interval."""

    wins: int
    ties: int
    losses: int
    invalid: int
    win_rate: float | None  # None when n == 0
    ci_low: float | None
    ci_high: float | None
    n: int  # valid outcomes: wins + ties + losses


def win_rate_ci(
    outcomes: Sequence[str],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> WinRate:
    """Count the outcomes and return the win rate with a bootstrap interval.

    ``outcomes`` holds ``"win"``, ``"tie"``, ``"loss"`` or ``"invalid"`` (as
    returned by ``eval.verdict.combine_orders``); any other value raises
    ``ValueError``.  ``level`` is the interval's coverage, e.g. 0.95.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    counts = Counter(outcomes)
    unknown = set(counts) - set(OUTCOMES)
    if unknown:
        raise ValueError(f"unknown outcomes {sorted(map(repr, unknown))}; expected {OUTCOMES}")

    wins, ties, losses = counts["win"], counts["tie"], counts["loss"]
    n = wins + ties + losses
    if n == 0:
        return WinRate(wins, ties, losses, counts["invalid"], None, None, None, 0)

    rate = (wins + 0.5 * ties) / n

    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [wins / n, ties / n, losses / n], size=n_boot)
    boot_rates = (draws[:, 0] + 0.5 * draws[:, 1]) / n
    alpha = (1.0 - level) / 2.0
    ci_low, ci_high = np.quantile(boot_rates, [alpha, 1.0 - alpha])

    return WinRate(
        wins=wins,
        ties=ties,
        losses=losses,
        invalid=counts["invalid"],
        win_rate=rate,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        n=n,
    )
