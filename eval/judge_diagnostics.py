"""How far a pairwise judge can be trusted, from its own verdicts: each pair (a contestant's
answer and the teacher's to one prompt) is judged twice, once in each order (eval.judge).

* ``position_flip_rate``: the share of pairs, among those with both verdicts readable, whose
  verdict changes with the order, seen from the contestant's side (A/A or B/B: the judge
  followed the position; tie in one order and a winner in the other counts too).
* ``first_position_win_rate``: among readable verdicts, the share won by the answer shown
  first (a tie counts half): 0.5 is no position bias, 1.0 always the first answer.
* ``length_win_correlation``: Pearson's r between each readable verdict, seen from the
  contestant's side (1 win, 0.5 tie, 0 loss), and the answers' length difference in
  characters (contestant minus teacher); None when either does not vary.
* ``invalid_rate``: the share of verdicts that could not be read (eval.verdict).
* with a second judge: Cohen's kappa between the two judges' combined outcomes (win / tie /
  loss) on the pairs both judged validly, and their raw agreement.

The judge is **not informative** when its verdict flips with the order on more than half of
the pairs, when more than half of its replies are unreadable, when it picks the same position
in at least 90% of its verdicts, when no pair has two readable verdicts, or when every pair
comes out a tie: a win rate of 0.5 from such a judge says nothing about the models. Weaker
signs (little agreement with a second judge, verdicts that follow length) are warnings.
"""

from __future__ import annotations

import math
from typing import Sequence

FLIP_RATE_LIMIT = 0.5
INVALID_RATE_LIMIT = 0.5
ONE_POSITION_SHARE = 0.9
SLIGHT_KAPPA = 0.2
STRONG_LENGTH_CORRELATION = 0.5
# A verdict ("A", "B", "tie") seen from the contestant's side, in each order.
CONTESTANT_SIDE = {"student_first": {"A": 1.0, "B": 0.0, "tie": 0.5},
                   "teacher_first": {"A": 0.0, "B": 1.0, "tie": 0.5}}
OUTCOMES = ("win", "tie", "loss")


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's correlation; None with fewer than 3 points or when either side is constant."""
    n = len(xs)
    if n < 3:
        return None
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    syy = sum((y - mean_y) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when chance agreement is
    certain (both gave one and the same label throughout) or there are no items."""
    n = len(first)
    if not n or n != len(second):
        return None
    observed = sum(a == b for a, b in zip(first, second)) / n
    labels = set(first) | set(second)
    expected = sum((first.count(label) / n) * (second.count(label) / n) for label in labels)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def verdict_numbers(verdicts: Sequence[dict], length_gap: dict[str, float]) -> dict:
    """The diagnostics of one set of pairwise judgments (eval.judge.judgments records);
    `length_gap` maps item id to contestant minus teacher answer length in characters."""
    total = 2 * len(verdicts)
    readable, first_wins, ties, pairs, flips = 0, 0.0, 0, 0, 0
    xs, ys = [], []
    for record in verdicts:
        sides = []
        for order in ("student_first", "teacher_first"):
            winner = (record.get(order) or {}).get("winner")
            if winner is None:
                continue
            readable += 1
            first_wins += 1.0 if winner == "A" else 0.5 if winner == "tie" else 0.0
            ties += winner == "tie"
            side = CONTESTANT_SIDE[order][winner]
            sides.append(side)
            if record["id"] in length_gap:
                xs.append(float(length_gap[record["id"]]))
                ys.append(side)
        if len(sides) == 2:
            pairs += 1
            flips += sides[0] != sides[1]
    outcomes = [record.get("outcome") for record in verdicts]
    return {
        "pairs": len(verdicts), "verdicts": total, "readable_verdicts": readable, "pairs_both_readable": pairs,
        "position_flip_rate": flips / pairs if pairs else None,
        "first_position_win_rate": first_wins / readable if readable else None,
        "length_win_correlation": pearson(xs, ys),
        "invalid_rate": (total - readable) / total if total else None,
        "tie_verdicts": ties, "all_pairs_tied": bool(outcomes) and all(o == "tie" for o in outcomes),
    }


def agreement(first: dict[str, list[dict]], second: dict[str, list[dict]]) -> dict:
    """Cohen's kappa and raw agreement of two judges' combined outcomes, over the pairs (per
    contestant and prompt) that both judged validly."""
    ours, theirs = [], []
    for label, records in first.items():
        other = {record["id"]: record["outcome"] for record in second.get(label, [])}
        for record in records:
            if record["outcome"] in OUTCOMES and other.get(record["id"]) in OUTCOMES:
                ours.append(record["outcome"])
                theirs.append(other[record["id"]])
    kappa = cohen_kappa(ours, theirs)
    return {"pairs": len(ours), "agreement": sum(a == b for a, b in zip(ours, theirs)) / len(ours) if ours else None,
            "cohen_kappa": kappa,
            "note": None if kappa is not None or not ours else "undefined: both judges gave one and the same outcome"}


def assess(numbers: dict, second: dict | None) -> tuple[bool, list[str]]:
    """Whether the judge is informative, and the reasons in words (the first reasons are why not)."""
    reasons, warnings = [], []
    flip, invalid, first = (numbers.get(key) for key in ("position_flip_rate", "invalid_rate",
                                                         "first_position_win_rate"))
    if not numbers.get("pairs_both_readable"):
        reasons.append("no pair got a readable verdict in both orders")
    if flip is not None and flip > FLIP_RATE_LIMIT:
        reasons.append(f"its verdict changed with the order of the answers on {flip:.0%} of the pairs: it follows "
                       "the position, not the answers")
    if invalid is not None and invalid > INVALID_RATE_LIMIT:
        reasons.append(f"{invalid:.0%} of its replies held no readable verdict")
    if first is not None and numbers["readable_verdicts"] >= 4 and not 1 - ONE_POSITION_SHARE < first < ONE_POSITION_SHARE:
        side = "first" if first >= ONE_POSITION_SHARE else "second"
        share = first if side == "first" else 1 - first
        reasons.append(f"it chose the answer shown {side} in {share:.0%} of its verdicts")
    if numbers.get("all_pairs_tied") and not reasons:
        reasons.append("every pair came out a tie, so its win rate of 0.5 carries no preference")
    kappa = (second or {}).get("cohen_kappa")
    if kappa is not None and kappa < SLIGHT_KAPPA:
        warnings.append(f"it agrees with the second judge only slightly (Cohen's kappa {kappa:.2f})")
    correlation = numbers.get("length_win_correlation")
    if correlation is not None and abs(correlation) >= STRONG_LENGTH_CORRELATION:
        warnings.append(f"its verdicts follow the answers' length (r = {correlation:.2f}); the length-controlled "
                        "win rate is the fairer figure")
    return not reasons, reasons + warnings


def judge_diagnostics(verdicts: dict[str, list[dict]], answers: dict[str, dict[str, str]], teacher: dict[str, str],
                      second_verdicts: dict[str, list[dict]] | None = None, second_identity: str | None = None) -> dict:
    """The diagnostics over every contestant's judgments (and per contestant), the agreement
    with a second judge when there is one, and whether the judge is informative, in words."""
    def gaps(label: str) -> dict[str, float]:
        return {key: len(answers[label][key]) - len(teacher[key]) for key in answers[label] if key in teacher}

    per_contestant = {label: verdict_numbers(records, gaps(label)) for label, records in verdicts.items()}
    all_gaps, pooled = {}, []
    for label, records in verdicts.items():  # one id may be judged for several contestants
        label_gaps = gaps(label)
        for record in records:
            key = f"{label}/{record['id']}"
            all_gaps[key] = label_gaps.get(record["id"], 0.0)
            pooled.append({**record, "id": key})
    overall = verdict_numbers(pooled, all_gaps)
    second = None
    if second_verdicts is not None:
        second = {"identity": second_identity, **agreement(verdicts, second_verdicts)}
    informative, reasons = assess(overall, second)
    return {**{key: overall[key] for key in ("position_flip_rate", "first_position_win_rate", "length_win_correlation",
                                             "invalid_rate")},
            "cohen_kappa": (second or {}).get("cohen_kappa"), "second_judge": second,
            "informative": informative, "warnings": reasons,
            "pairs": overall["pairs"], "verdicts": overall["verdicts"], "per_contestant": per_contestant}
