"""Win rate of the student against the teacher, with a bootstrap interval.

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


def length_controlled_win_rate(outcomes: Sequence[str], length_differences: Sequence[float],
                               steps: int = 200) -> float | None:
    """The win rate with the effect of answer length regressed out, in the spirit of
    AlpacaEval's length-controlled win rate.

    A logistic model P(student preferred) = sigmoid(b0 + b1 * tanh(d / s)) is fitted to the
    valid outcomes (win = 1, tie = 0.5, loss = 0) by Newton's method, where d is the
    student's answer length minus the teacher's and s its standard deviation; the
    length-controlled rate is the model's prediction at d = 0, sigmoid(b0). None with no
    valid outcome.
    """
    target = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    pairs = [(target[o], float(d)) for o, d in zip(outcomes, length_differences) if o in target]
    if not pairs:
        return None
    y = np.array([p[0] for p in pairs])
    d = np.array([p[1] for p in pairs])
    scale = d.std() or 1.0
    x = np.column_stack([np.ones_like(d), np.tanh(d / scale)])
    beta = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        gradient = x.T @ (y - p)
        # A small ridge term keeps the fit finite when the outcomes are separable (all wins).
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + 1e-3 * np.eye(2)
        step = np.linalg.solve(hessian, gradient - 1e-3 * beta)
        beta += step
        if np.abs(step).max() < 1e-9:
            break
    return float(1.0 / (1.0 + np.exp(-beta[0])))
