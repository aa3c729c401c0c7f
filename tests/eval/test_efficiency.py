"""Cost arithmetic, latency figures and the Pareto front."""

import pytest

from eval.efficiency import api_cost_per_1k, latency_summary, local_cost_per_1k, pareto_front


def test_cost_per_1k_answers():
    # 2 s per answer on a 0.36 USD/h machine: 2,000 s for 1,000 answers = 0.2 USD.
    assert local_cost_per_1k(2.0, 0.36) == pytest.approx(0.2)
    # 500 prompt + 200 completion tokens at 1 / 4 USD per million: 0.0013 USD an answer.
    assert api_cost_per_1k(500, 200, 1.0, 4.0) == pytest.approx(1.3)
    assert local_cost_per_1k(3.0, 0.0) == 0.0


def test_pareto_front_keeps_only_undominated_points():
    points = {"teacher": (10.0, 0.5), "student": (1.0, 0.3), "base": (1.0, 0.1), "int4": (0.5, 0.3),
              "worse_and_dearer": (12.0, 0.2)}
    assert pareto_front(points) == ["int4", "teacher"]
    assert pareto_front({"a": (1.0, 0.5), "b": (1.0, 0.5)}) == ["a", "b"]  # ties dominate neither
    assert pareto_front({"only": (3.0, 0.1)}) == ["only"]


def test_latency_summary_with_first_token_times():
    summary = latency_summary([1.0, 2.0, 3.0, 10.0], [10, 20, 30, 40], [0.1, 0.2, None, 0.4])
    assert summary["p50_latency_s"] == 2.5 and summary["p95_latency_s"] == 10.0
    assert summary["tokens_per_s"] == pytest.approx(100 / 16, abs=0.01)
    assert summary["p50_ttft_s"] == 0.2 and summary["p95_ttft_s"] == 0.4
    assert latency_summary([], []) == {"answers": 0}
