"""What each model costs to run: cost per 1,000 answers, and the Pareto front of quality against
cost. (Bytes, parameters, peak memory and latency figures are measured by core.measure.)"""

from __future__ import annotations

from core.measure import latency_summary, percentile  # noqa: F401 (the cost figures' home)


def api_cost_per_1k(mean_prompt_tokens: float, mean_completion_tokens: float,
                    price_input_per_mtok: float, price_output_per_mtok: float) -> float:
    """USD for 1,000 answers of an API model: the mean tokens per answer at the endpoint's prices."""
    return 1000 * (mean_prompt_tokens * price_input_per_mtok + mean_completion_tokens * price_output_per_mtok) / 1e6


def local_cost_per_1k(seconds_per_answer: float, hourly_usd: float) -> float:
    """USD for 1,000 answers of a local model: measured machine seconds per answer at an hourly price."""
    return 1000 * seconds_per_answer * hourly_usd / 3600


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Labels of the points no other point beats: `points` maps label to (cost, quality);
    lower cost and higher quality are better. Sorted by cost."""
    front = []
    for label, (cost, quality) in points.items():
        dominated = any(other_cost <= cost and other_quality >= quality
                        and (other_cost, other_quality) != (cost, quality)
                        for other, (other_cost, other_quality) in points.items() if other != label)
        if not dominated:
            front.append(label)
    return sorted(front, key=lambda label: points[label])
