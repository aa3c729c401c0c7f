"""A picture and examples of how the judge scored: for the filter stage's report.

Scores are grouped into half-point bins centred on 0, 0.5, 1, ..., 5 (11 bins): a score
goes to the nearest multiple of 0.5, halves rounding up (4.25 -> 4.5), so the usual
judge scores, whole or half points, each get their own bar. Scores outside 0-5 are put in
the end bins. A record or score without a number (None, NaN) counts as "unscored".

The chart is drawn with matplotlib's Agg canvas directly (no pyplot, so no global backend
or figure state) and written atomically: to a temporary file beside the target, then
renamed over it, so a reader never sees half a PNG.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Sequence

from core.records import atomic_file

__all__ = ["BIN_CENTERS", "UNSCORED", "score_bin", "score_bin_counts", "score_histogram_png", "per_score_examples", "ScoreExamples"]

BIN_CENTERS: tuple[float, ...] = tuple(i / 2 for i in range(11))
UNSCORED = "unscored"
_BIN_WIDTH = 0.5


def _as_score(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def score_bin(score: float | None) -> str:
    """The label of the bin a score falls in: "0", "0.5", ..., "5", or "unscored"."""
    value = _as_score(score)
    if value is None:
        return UNSCORED
    center = math.floor(value * 2 + 0.5) / 2
    return f"{min(5.0, max(0.0, center)):g}"


def score_bin_counts(scores: Sequence[float | None]) -> dict[str, int]:
    """How many scores fall in each bin, every bin listed in order, "unscored" last."""
    counts = {f"{center:g}": 0 for center in BIN_CENTERS}
    counts[UNSCORED] = 0
    for score in scores:
        counts[score_bin(score)] += 1
    return counts


def _draw(counts: dict[str, int], threshold: float | None, title: str):
    """The chart as a matplotlib Figure attached to an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()

    unscored_x = BIN_CENTERS[-1] + 1.0
    scored_counts = [counts[f"{center:g}"] for center in BIN_CENTERS]
    bars = axes.bar(BIN_CENTERS, scored_counts, width=_BIN_WIDTH * 0.9, color="tab:blue", label="scored")
    bars += axes.bar([unscored_x], [counts[UNSCORED]], width=_BIN_WIDTH * 0.9, color="tab:gray", label=UNSCORED)
    for bar in bars:
        height = bar.get_height()
        if height:
            axes.annotate(f"{int(height)}", (bar.get_x() + bar.get_width() / 2, height),
                          ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")

    if threshold is not None:
        # At the left edge of the threshold's bar: with a threshold on the 0.5 grid, the
        # bars right of the line are exactly the kept scores.
        line_x = min(5.0, max(0.0, threshold)) - _BIN_WIDTH / 2
        axes.axvline(line_x, color="tab:red", linestyle="--", linewidth=1.5, label=f"threshold {threshold:g}")

    axes.set_xticks([*BIN_CENTERS, unscored_x], [*(f"{center:g}" for center in BIN_CENTERS), UNSCORED])
    axes.set_xlim(-0.5, unscored_x + 0.5)
    axes.set_ylim(0, max(1, *counts.values()) * 1.12)
    axes.set_xlabel("judge score (half-point bins)")
    axes.set_ylabel("records")
    total = sum(counts.values())
    axes.set_title(f"{title} (n={total})")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure


def score_histogram_png(
    scores: Sequence[float | None],
    path: str | os.PathLike,
    threshold: float | None = None,
    title: str = "Judge scores",
) -> Path:
    """Write a bar chart of the scores per half-point bin, plus an "unscored" bar, as a PNG.

    ``threshold``, when given, is drawn as a dashed vertical line. The parent folder is
    created if needed; the file is replaced atomically. Returns the path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure = _draw(score_bin_counts(scores), threshold, title)

    with atomic_file(target, "wb") as stream:
        figure.savefig(stream, format="png")
    return target


def _content_digest(record: dict) -> str:
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ScoreExamples:
    """Collects :func:`per_score_examples` one record at a time, holding only the records
    chosen so far (at most ``per_bin`` per bin), so a stage can pick them while streaming."""

    def __init__(self, per_bin: int = 2):
        if per_bin < 0:
            raise ValueError(f"per_bin must be non-negative, got {per_bin}")
        self.per_bin = per_bin
        self._chosen: dict[str, list[tuple[str, int, dict]]] = {label: [] for label in score_bin_counts([])}
        self._seen: set[str] = set()

    def add(self, position: int, record: dict) -> None:
        """Consider the record at ``position`` (positions must increase)."""
        label = score_bin(record.get("score"))
        self._seen.add(label)
        chosen = self._chosen[label]
        entry = (_content_digest(record), position)
        if len(chosen) < self.per_bin or (chosen and entry < chosen[-1][:2]):
            bisect.insort(chosen, (*entry, record), key=lambda item: item[:2])
            del chosen[self.per_bin:]

    def examples(self) -> dict[str, list[dict]]:
        """Bin label -> the chosen records in input order (bins with no records left out)."""
        return {label: [record for _, _, record in sorted(chosen, key=lambda item: item[1])]
                for label, chosen in self._chosen.items() if label in self._seen}


def per_score_examples(rated: Sequence[dict], per_bin: int = 2) -> dict[str, list[dict]]:
    """Up to ``per_bin`` example records for every bin that has records.

    The bins are those of the chart (keys "0", "0.5", ..., "5", "unscored", in that order;
    empty bins are left out), read from each record's ``score``. Within a bin the examples
    are the records with the smallest SHA-256 digest of their content: a fixed pseudo-random
    pick that does not depend on the order of the input or on the process, and does not
    favour the first records of a run. Equal records are taken in input order. The examples
    are the input dicts themselves, listed in input order.
    """
    collected = ScoreExamples(per_bin)
    for position, record in enumerate(rated):
        collected.add(position, record)
    return collected.examples()
