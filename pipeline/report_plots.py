"""The report's plots, drawn with matplotlib and returned as PNG bytes (to embed in report.html)."""

from __future__ import annotations

import io

OUTCOME_COLOURS = {"wins": "#2e7d32", "ties": "#9e9e9e", "losses": "#c62828", "invalid": "#ffb300"}


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def outcomes_per_set_png(rows: list[dict]) -> bytes:
    """Stacked horizontal bars: wins / ties / losses / invalid of each model on each set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = []
    for row in rows:
        quality = row.get("quality") or {}
        for set_name, numbers in [("all", quality), *sorted((quality.get("per_set") or {}).items())]:
            if numbers:
                bars.append((f"{row['label']} / {set_name}", numbers))
    figure, axes = plt.subplots(figsize=(7, 0.45 * len(bars) + 1.2))
    for position, (_, numbers) in enumerate(bars):
        left = 0
        for key, colour in OUTCOME_COLOURS.items():
            value = numbers.get(key) or 0
            axes.barh(position, value, left=left, color=colour, label=key if position == 0 else None)
            left += value
    axes.set_yticks(range(len(bars)), [name for name, _ in bars])
    axes.invert_yaxis()
    axes.set_xlabel("prompts (each judged in both orders)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    axes.set_title("Against the teacher: win / tie / loss per set")
    return _png(figure)


def quality_cost_png(points: dict[str, tuple[float, float]], front: list[str], axis: str) -> bytes:
    """Win rate against cost, one point per model, the Pareto front drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, unit = (1.0, "cost per 1,000 answers (USD)") if axis == "cost_per_1k_answers_usd" else (1e-6, "peak memory (MB)")
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, (cost, quality) in points.items():
        on_front = label in front
        axes.scatter(cost * scale, quality, s=60, color="#1565c0" if on_front else "#90a4ae", zorder=3)
        axes.annotate(label, (cost * scale, quality), textcoords="offset points", xytext=(6, 4), fontsize="small")
    if len(front) > 1:
        axes.plot([points[label][0] * scale for label in front], [points[label][1] for label in front],
                  color="#1565c0", linestyle="--", label="Pareto front", zorder=2)
        axes.legend(loc="lower right", fontsize="small")
    axes.axhline(0.5, color="#bdbdbd", linewidth=0.8)
    axes.set_xlabel(unit)
    axes.set_ylabel("win rate against the teacher")
    axes.set_ylim(-0.05, 1.05)
    axes.set_title("Quality against cost (up and to the left is better)")
    return _png(figure)


def selection_compare_png(rows: list[dict], k: int | None = None) -> bytes:
    """Data selection strategies side by side: each one's student's win rate against the teacher
    (with its 95% interval) and, where measured, its fidelity to the teacher (NLL of the teacher's
    answers, lower is closer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["strategy"] for row in rows]
    nll = [(row.get("fidelity") or {}).get("teacher_answer_nll") for row in rows]
    panels = 2 if any(value is not None for value in nll) else 1
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 1, 0.5 * len(rows) + 1.6), squeeze=False)
    win = axes[0][0]
    for position, row in enumerate(rows):
        rate = row.get("win_rate")
        if rate is None:
            win.text(0.02, position, "not evaluated", va="center", fontsize="small", color="#757575")
            continue
        low, high = row.get("win_rate_ci95") or [rate, rate]
        win.barh(position, rate, color="#1565c0")
        win.errorbar(rate, position, xerr=[[rate - low], [high - rate]], fmt="none", ecolor="#263238", capsize=3)
    win.axvline(0.5, color="#bdbdbd", linewidth=0.8)
    win.set_xlim(0, 1)
    win.set_yticks(range(len(rows)), labels)
    win.invert_yaxis()
    win.set_xlabel("win rate against the teacher (95% CI)")
    if panels == 2:
        closeness = axes[0][1]
        for position, value in enumerate(nll):
            if value is None:
                closeness.text(0.02, position, "not measured", va="center", fontsize="small", color="#757575")
            else:
                closeness.barh(position, value, color="#2e7d32")
        closeness.set_yticks(range(len(rows)), labels)
        closeness.invert_yaxis()
        closeness.set_xlabel("NLL of the teacher's answers (lower: closer)")
    figure.suptitle("The same pool, selected by each strategy" + (f" (K = {k})" if k else ""))
    return _png(figure)
