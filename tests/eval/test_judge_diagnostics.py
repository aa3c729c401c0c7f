"""Judge diagnostics (eval.judge_diagnostics) on judgments whose behaviour is known: a judge that
always picks the first answer, a consistent one, one that likes length, one that says nothing
readable; Cohen's kappa against a hand count."""

import pytest

from eval.judge_diagnostics import cohen_kappa, judge_diagnostics
from eval.verdict import combine_orders


def record(item_id: str, first: str | None, second: str | None) -> dict:
    return {"id": item_id, "student_first": {"winner": first}, "teacher_first": {"winner": second},
            "outcome": combine_orders(first, second)}


def answers(n: int, student_longer_by: int = 0) -> tuple[dict, dict]:
    teacher = {f"p{i}": "t" * (100 + 10 * i) for i in range(n)}
    student = {key: "s" * (len(text) + student_longer_by * (1 if i % 2 else -1))
               for i, (key, text) in enumerate(teacher.items())}
    return student, teacher


def test_a_judge_that_always_picks_the_first_answer_is_not_informative():
    student, teacher = answers(6)
    verdicts = {"student": [record(key, "A", "A") for key in teacher]}
    result = judge_diagnostics(verdicts, {"student": student}, teacher)
    assert result["position_flip_rate"] == 1.0 and result["first_position_win_rate"] == 1.0
    assert result["invalid_rate"] == 0.0 and result["length_win_correlation"] is None  # equal lengths throughout
    assert result["informative"] is False
    assert "changed with the order of the answers on 100% of the pairs" in result["warnings"][0]
    assert any("shown first in 100%" in reason for reason in result["warnings"])
    assert result["cohen_kappa"] is None and result["second_judge"] is None


def test_a_consistent_judge_is_informative_and_agreement_is_measured():
    student, teacher = answers(8)
    keys = list(teacher)
    # Wins on the first five prompts, losses on the rest, in both orders.
    first = {"student": [record(k, "A", "B") if i < 5 else record(k, "B", "A") for i, k in enumerate(keys)]}
    # The second judge agrees except on two prompts.
    second = {"student": [record(k, "A", "B") if i < 4 or i == 7 else record(k, "B", "A") for i, k in enumerate(keys)]}
    result = judge_diagnostics(first, {"student": student}, teacher, second, "judge-2")
    assert result["position_flip_rate"] == 0.0 and result["first_position_win_rate"] == 0.5
    assert result["informative"] is True and result["second_judge"]["identity"] == "judge-2"
    assert result["second_judge"]["agreement"] == 6 / 8
    # by hand: observed 0.75; first judge 5 win / 3 loss, second 5 win / 3 loss: expected
    # (5/8)^2 + (3/8)^2 = 34/64; kappa = (0.75 - 34/64) / (1 - 34/64)
    assert result["cohen_kappa"] == pytest.approx((0.75 - 34 / 64) / (1 - 34 / 64))


def test_a_judge_that_likes_length_is_flagged():
    student, teacher = answers(10, student_longer_by=80)
    verdicts = {"student": [record(k, "A", "B") if len(student[k]) > len(teacher[k]) else record(k, "B", "A")
                            for k in teacher]}
    result = judge_diagnostics(verdicts, {"student": student}, teacher)
    assert result["length_win_correlation"] > 0.9 and result["informative"] is True
    assert any("follow the answers' length" in warning for warning in result["warnings"])


def test_unreadable_and_all_tie_judges():
    student, teacher = answers(4)
    unreadable = judge_diagnostics({"student": [record(k, None, None) for k in teacher]}, {"student": student}, teacher)
    assert unreadable["invalid_rate"] == 1.0 and unreadable["position_flip_rate"] is None
    assert unreadable["informative"] is False and "no pair got a readable verdict" in unreadable["warnings"][0]
    ties = judge_diagnostics({"student": [record(k, "tie", "tie") for k in teacher]}, {"student": student}, teacher)
    assert ties["position_flip_rate"] == 0.0 and ties["informative"] is False
    assert "every pair came out a tie" in ties["warnings"][0]


def test_per_contestant_numbers_and_kappa_edge_cases():
    student, teacher = answers(4)
    verdicts = {"student": [record(k, "A", "A") for k in teacher], "base_student": [record(k, "A", "B") for k in teacher]}
    result = judge_diagnostics(verdicts, {"student": student, "base_student": student}, teacher)
    assert result["per_contestant"]["student"]["position_flip_rate"] == 1.0
    assert result["per_contestant"]["base_student"]["position_flip_rate"] == 0.0
    assert result["position_flip_rate"] == 0.5 and result["pairs"] == 8
    assert cohen_kappa(["tie"] * 3, ["tie"] * 3) is None and cohen_kappa([], []) is None
    assert cohen_kappa(["win", "loss"], ["win", "loss"]) == 1.0
