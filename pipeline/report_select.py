"""The report's section on `distill select-compare` (pipeline/select_compare.py): where its
comparison is kept in a run directory, and the table's cells and notes, for report.md and
report.html alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from core.rundir import RunDir

# Under the run directory: the comparison, its plot, and one run directory per strategy.
SELECT_DIR = "select"
COMPARE_FILE = "compare.json"
COMPARE_PLOT = "compare.png"


def load_select_compare(rundir: RunDir) -> dict | None:
    """The comparison `distill select-compare` wrote in the run directory, or None."""
    path = rundir.root / SELECT_DIR / COMPARE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


SELECT_COMPARE_COLUMNS = ("strategy", "kept", "judge tokens", "train loss", "win rate", "95% CI", "length-controlled",
                          "teacher-answer NLL", "answer similarity", "ROUGE-L")


def select_compare_cells(row: dict, fmt: Callable[[object], str]) -> list[str]:
    """One strategy's cells of the comparison table, each value as `fmt` writes it (fidelity:
    "not measured" when the evaluate summary holds none)."""
    ci = row.get("win_rate_ci95") or [None, None]
    fidelity = row.get("fidelity") or {}
    measured = [fmt(fidelity.get(key)) if fidelity else "not measured"
                for key in ("teacher_answer_nll", "answer_similarity", "answer_rouge_l")]
    return [fmt(row["strategy"]), fmt(row.get("kept")), fmt(row.get("judge_tokens")), fmt(row.get("train_loss")),
            fmt(row.get("win_rate")), f"{fmt(ci[0])} – {fmt(ci[1])}", fmt(row.get("lc_win_rate")), *measured]


def select_compare_notes(comparison: dict) -> list[str]:
    """What the comparison is, and how far its win rates and fidelity can be read, in sentences."""
    sets = ", ".join(Path(name).stem for name in comparison.get("eval_sets") or [])
    notes = [f"The same pool of {comparison['pool']} generated records selected by each strategy at K = "
             f"{comparison['k']}; a student trained on each with the same settings and evaluated on the same "
             f"prompts ({sets}; the held-out prompts were taken out of the pool before any selection)."]
    informative = comparison.get("judge_informative")
    if informative is False:
        notes.append("The judge is not informative in this run: the win rates are not meaningful; compare the "
                     "strategies by their fidelity to the teacher.")
    elif informative is None:
        notes.append("Win rates mean something only where the judge is informative; this run's evaluate "
                     "summaries carry no judge diagnostics to say so.")
    if not comparison.get("fidelity_measured"):
        notes.append("Fidelity to the teacher (NLL of the teacher's answers, answer similarity, ROUGE-L): not "
                     "measured, the evaluate summaries hold none.")
    notes += [f"{row['strategy']}: {row['error']}" for row in comparison["rows"] if row.get("error")]
    return notes
